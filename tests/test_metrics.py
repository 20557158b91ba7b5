"""Tests for prefkit.eval.metrics: hand-worked values (working in each docstring),
scipy as the reference for the rank correlations, and edge cases."""

import json
import math
import re
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest
from scipy import stats

from prefkit.eval import metrics as m

# --------------------------------------------------------------------- outcomes


def test_outcome_strings_and_ints_give_the_same_codes():
    assert m.encode_outcomes(["a", "b", "tie"]).tolist() == [0, 1, 2]
    assert m.encode_outcomes([0, 1, 2]).tolist() == [0, 1, 2]
    assert m.encode_outcomes(np.array(["b", 0, "tie"], dtype=object)).tolist() == [1, 0, 2]
    assert (m.A_PREFERRED, m.B_PREFERRED, m.TIE) == (0, 1, 2)


@pytest.mark.parametrize(
    "bad, position",
    [
        (["a", "A"], "outcome[1]"),
        ([0, 3], "outcome[1]"),
        ([-1, 0], "outcome[0]"),
        (["a", "draw"], "outcome[1]"),
    ],
)
def test_outcome_errors_name_position_and_value(bad, position):
    with pytest.raises(ValueError, match=re.escape(position)):
        m.encode_outcomes(bad)


def test_outcome_refuses_floats_and_booleans():
    with pytest.raises(ValueError, match="probabilities"):
        m.encode_outcomes([0.0, 1.0])
    with pytest.raises(ValueError):
        m.encode_outcomes([True, False])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="outcome has 2 entries but reward_a has 3"):
        m.pairwise_accuracy([1, 2, 3], [0, 0, 0], ["a", "b"])
    with pytest.raises(ValueError, match=r"reward_b\[1\] is nan"):
        m.pairwise_accuracy([1, 2], [0, np.nan], ["a", "b"])


# --------------------------------------------------------------- 2-way accuracy

REWARD_A = [2.0, 1.0, 0.5, 3.0, 1.0, 0.0, 4.0]
REWARD_B = [1.0, 2.0, 0.5, 0.0, 1.0, 5.0, 1.0]
OUTCOME = ["a", "a", "a", "b", "tie", "b", "a"]


def test_pairwise_accuracy_hand_worked():
    """Pair by pair (preferred reward vs the other one):

    0: a, 2 > 1 right (1)      1: a, 1 < 2 wrong (0)     2: a, 0.5 = 0.5 tied score
    3: b, 0 < 3 wrong (0)      4: human tie, excluded     5: b, 5 > 0 right (1)
    6: a, 4 > 1 right (1)
    n = 6, n_human_ties = 1, n_tied_scores = 1.
    strict: (1 + 0 + 0 + 0 + 1 + 1) / 6 = 0.5; half credit: 3.5 / 6.
    """
    result = m.pairwise_accuracy(REWARD_A, REWARD_B, OUTCOME, n_resamples=0)
    assert result["n"] == 6
    assert result["n_human_ties"] == 1
    assert result["n_tied_scores"] == 1
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["accuracy_half_credit"] == pytest.approx(3.5 / 6)
    assert result["accuracy_ci95"] is None

    credit = m.pairwise_credit(REWARD_A, REWARD_B, OUTCOME)
    np.testing.assert_array_equal(credit, [1, 0, 0, 0, np.nan, 1, 1])
    half = m.pairwise_credit(REWARD_A, REWARD_B, OUTCOME, tied_score_credit=0.5)
    np.testing.assert_array_equal(half, [1, 0, 0.5, 0, np.nan, 1, 1])


def test_pairwise_accuracy_swapped_winner_and_int_coding():
    """Flipping every a/b label turns credits 1,0,0,0,-,1,1 into 0,1,0,1,-,0,0: 2/6.
    The tied-score pair (2) stays wrong either way. Int coding 0/1/2 matches strings."""
    flipped = {"a": "b", "b": "a", "tie": "tie"}
    swapped = m.pairwise_accuracy(REWARD_A, REWARD_B, [flipped[o] for o in OUTCOME], n_resamples=0)
    assert swapped["accuracy"] == pytest.approx(2 / 6)
    as_ints = m.pairwise_accuracy(REWARD_A, REWARD_B, [0, 0, 0, 1, 2, 1, 0], n_resamples=0)
    assert as_ints["accuracy"] == pytest.approx(0.5)


def test_all_tied_scores_strict_zero_half_credit_half():
    """Equal rewards everywhere: strict credit 0 for each of the 3 decided pairs, half
    credit 0.5 each; the human tie is still excluded."""
    result = m.pairwise_accuracy([1.0] * 4, [1.0] * 4, ["a", "b", "a", "tie"], n_resamples=0)
    assert result["n"] == 3
    assert result["n_tied_scores"] == 3
    assert result["accuracy"] == 0.0
    assert result["accuracy_half_credit"] == 0.5


def test_only_human_ties_gives_nan_accuracy():
    result = m.pairwise_accuracy([1.0, 2.0], [0.0, 0.0], ["tie", "tie"])
    assert result["n"] == 0 and result["n_human_ties"] == 2
    assert math.isnan(result["accuracy"]) and result["accuracy_ci95"] is None


def test_matches_rewardbench_strict_rule_on_chosen_rejected():
    rng = np.random.default_rng(1)
    chosen = rng.integers(0, 4, 200).astype(float)  # integers: many equal scores
    rejected = rng.integers(0, 4, 200).astype(float)
    result = m.pairwise_accuracy(chosen, rejected, ["a"] * 200, n_resamples=0)
    assert result["accuracy"] == pytest.approx(np.mean(chosen > rejected))


# ---------------------------------------------------------------- 3-way accuracy


def test_three_way_hand_worked():
    """Margins 1, -0.25, 0, -2, 0.5 with band 0.5 predict a, tie, tie, b, tie
    (|0.5| <= 0.5 is a tie). Human a, tie, b, b, a: right, right, wrong, right, wrong: 3/5."""
    margins = [1.0, -0.25, 0.0, -2.0, 0.5]
    zeros = [0.0] * 5
    predicted = m.predict_outcomes(margins, zeros, tie_band=0.5)
    assert predicted.tolist() == [m.A_PREFERRED, m.TIE, m.TIE, m.B_PREFERRED, m.TIE]
    result = m.three_way_accuracy(
        margins, zeros, ["a", "tie", "b", "b", "a"], tie_band=0.5, n_resamples=0
    )
    assert result["n"] == 5
    assert result["accuracy"] == pytest.approx(0.6)
    # Band 0: only the exact zero margin is a tie; pairs 0, 3 right, 1 (b vs tie) wrong.
    band_zero = m.three_way_accuracy(
        margins, zeros, ["a", "tie", "b", "b", "a"], tie_band=0.0, n_resamples=0
    )
    assert band_zero["accuracy"] == pytest.approx(3 / 5)  # 0 a=a, 1 b!=tie, 2 tie!=b, 3 b=b, 4 a=a


def test_fit_tie_band_hand_worked():
    """|margin| 3, 2, 0.5, 0.25, 1, 0.75 with outcomes a, b, tie, tie, tie, a (signs of
    pairs 0, 1, 5 are right). Correct pairs per candidate band:
      0: 0 ties + 3 signs = 3     0.25: 1 + 3 = 4     0.5: 2 + 3 = 5
      0.75: 2 + 2 = 4 (pair 5 turns into a predicted tie)     1: 3 + 2 = 5
      2: 3 + 1 = 4     3: 3 + 0 = 3
    Best is 5/6, first reached at 0.5 (the smallest band wins)."""
    margins = [3.0, -2.0, 0.5, -0.25, 1.0, 0.75]
    outcome = ["a", "b", "tie", "tie", "tie", "a"]
    fit = m.fit_tie_band(margins, [0.0] * 6, outcome)
    assert fit == {"tie_band": 0.5, "three_way_accuracy": pytest.approx(5 / 6)}


def test_fit_tie_band_matches_brute_force():
    rng = np.random.default_rng(2)
    reward_a = np.round(rng.normal(size=300), 1)
    reward_b = np.round(rng.normal(size=300), 1)
    outcome = rng.choice(["a", "b", "tie"], size=300, p=[0.4, 0.3, 0.3])
    fit = m.fit_tie_band(reward_a, reward_b, outcome)
    grid = np.unique(np.concatenate([[0.0], np.abs(reward_a - reward_b)]))
    brute = [
        m.three_way_accuracy(reward_a, reward_b, outcome, tie_band=band, n_resamples=0)["accuracy"]
        for band in grid
    ]
    assert fit["three_way_accuracy"] == pytest.approx(max(brute))
    assert fit["tie_band"] == grid[int(np.argmax(brute))]


# ------------------------------------------------------------------- annotators

ANN_REWARD_A = [1.0, 0.0, 2.0, 0.0, 5.0]
ANN_REWARD_B = [0.0, 1.0, 2.0, 3.0, 0.0]
VOTES = [  # 0 = a, 1 = b, 2 = tie, -1 = no vote
    [0, 0, 1],
    [1, 0, -1],
    [2, 2, 0],
    [-1, -1, -1],
    [0, 2, -1],
]


def test_majority_vote_tie_policy():
    """Row 0: a a b -> a. Row 1: b a -> 1 vs 1 -> tie. Row 2: tie tie a -> tie.
    Row 3: no votes -> NO_VOTE. Row 4: a tie -> 1 vs 1 -> tie. Extra: a a tie -> a."""
    assert m.majority_vote(VOTES).tolist() == [0, 2, 2, m.NO_VOTE, 2]
    assert m.majority_vote([[0, 0, 2]]).tolist() == [0]
    as_strings = [["a", "a", "b"], ["b", "a", None]]
    assert m.majority_vote(as_strings, missing=None).tolist() == [0, 2]


def test_annotator_agreement_hand_worked():
    """Model (band 0) predicts a, b, tie, b, a.
    Annotator 0 votes rows 0 a, 1 b, 2 tie, 4 a: a/b votes all right -> 3/3;
      3-way a=a, b=b, tie=tie, a=a -> 4/4.
    Annotator 1 votes a, a, tie, tie: a/b rows 0 right, 1 wrong -> 1/2;
      3-way right, wrong, right, wrong -> 2/4.
    Annotator 2 votes rows 0 b, 2 a: row 0 wrong; row 2 has equal rewards -> wrong: 0/2;
      3-way b!=a, a!=tie -> 0/2.
    Majority a, tie, tie, -, tie: a/b only row 0 -> 1/1; 3-way a=a, tie!=b, tie=tie,
      tie!=a -> 2/4; 3 tie votes, 1 row without votes."""
    result = m.annotator_agreement(ANN_REWARD_A, ANN_REWARD_B, VOTES, n_resamples=0)
    keys = ("n_votes", "n_tie_votes", "accuracy", "three_way_accuracy")
    per_annotator = [tuple(entry[key] for key in keys) for entry in result["per_annotator"]]
    assert per_annotator == [(4, 1, 1.0, 1.0), (4, 2, 0.5, 0.5), (2, 0, 0.0, 0.0)]
    majority = result["majority"]
    assert majority["n_votes"] == 4 and majority["n_tie_votes"] == 3 and majority["n_no_votes"] == 1
    assert majority["accuracy"] == 1.0
    assert majority["three_way_accuracy"] == 0.5
    assert result["n_annotators"] == 3


def test_votes_with_unknown_value_are_refused():
    with pytest.raises(ValueError, match="missing code"):
        m.annotator_agreement([1.0], [0.0], [[0, 7]])


# ------------------------------------------------------------------- best of N


def test_best_of_n_hand_worked():
    """Prompt 0: 3 is the sole top and correct -> 1.
    Prompt 1: top 2 shared by candidates 0, 1, 3; correct 0 among them -> 1/3.
    Prompt 2: correct 0 scores 1 < 5 -> 0.
    Prompt 3: one candidate -> 1.
    Prompt 4: top 2 shared by 0, 1, 2; correct 0 and 1 -> 2/3.
    Prompt 5: 7 = 7, correct is index 1 -> 1/2.
    Mean (1 + 1/3 + 0 + 1 + 2/3 + 1/2) / 6 = 3.5 / 6."""
    scores = [[3, 1, 2], [2, 2, 1, 2], [1, 5], [4], [2, 2, 2, 0], [7, 7]]
    correct = [0, 0, 0, 0, [0, 1], 1]
    credit = m.best_of_n_credit(scores, correct)
    np.testing.assert_allclose(credit, [1, 1 / 3, 0, 1, 2 / 3, 1 / 2])
    assert m.best_of_n_accuracy(scores, correct) == pytest.approx(3.5 / 6)


def test_best_of_n_correct_index_is_not_assumed_first():
    """Same scores, correct moved from 0 to 2: prompt [3, 1, 2] now scores 0."""
    assert m.best_of_n_credit([[3, 1, 2]], [2]).tolist() == [0.0]
    assert m.best_of_n_credit([[1, 2, 3]], [2]).tolist() == [1.0]


def test_best_of_n_errors():
    with pytest.raises(ValueError, match="out of range"):
        m.best_of_n_credit([[1, 2]], [2])
    with pytest.raises(ValueError, match="empty"):
        m.best_of_n_credit([[1, 2], []], [0, 0])


# --------------------------------------------------------------------- rankings


def test_average_ranks_hand_worked():
    """Sorted 5 (rank 1), 10 (2), 20, 20 (ranks 3 and 4 -> 3.5 each)."""
    assert m.average_ranks([10, 20, 20, 5]).tolist() == [2, 3.5, 3.5, 1]


def test_kendall_tau_b_hand_worked():
    """x 1,2,3 vs y 1,3,2: pairs (0,1) and (0,2) concordant, (1,2) discordant: (2-1)/3.
    x 1,1,2 vs y 1,2,3: (0,1) tied in x; (0,2), (1,2) concordant; untied in x 2, in y 3:
    2 / sqrt(2 * 3)."""
    assert m.kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert m.kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(m.kendall_tau_b([1, 1, 1], [1, 2, 3]))


def test_spearman_hand_worked():
    """Ranks differ by 0, 1, -1, 0: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8."""
    assert m.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(m.spearman([2, 2], [1, 2]))


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_rank_correlations_match_scipy_on_random_data_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(200):
        size = int(rng.integers(2, 40))
        x = rng.integers(0, 5, size).astype(float)
        y = rng.integers(0, 5, size).astype(float)
        expected_tau = stats.kendalltau(x, y).statistic  # tau-b by default
        expected_rho = stats.spearmanr(x, y).statistic
        for ours, theirs in (
            (m.kendall_tau_b(x, y), expected_tau),
            (m.spearman(x, y), expected_rho),
        ):
            if math.isnan(theirs):
                assert math.isnan(ours)
            else:
                assert ours == pytest.approx(theirs, abs=1e-12)


def test_kendall_tau_b_blocked_path_matches_scipy(monkeypatch):
    """Force many small blocks so the block loop itself is exercised."""
    monkeypatch.setattr(m, "_MAX_BLOCK_ELEMENTS", 50)
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 7, 60).astype(float), rng.integers(0, 7, 60).astype(float)
    assert m.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_ranking_correlation_skips_and_counts():
    """p0 perfect (1, 1); p1 reversed (-1, -1); p2 drops its NaN item, leaving
    1,2 vs 5,7 (1, 1); p3 one item -> too few; p4 gold 3,3 constant -> skipped;
    p5 predicted constant -> 0, 0; p6 drops a NaN gold, one item left -> too few.
    Means over p0, p1, p2, p5: (1 - 1 + 1 + 0) / 4 = 0.25."""
    predicted = [[1, 2, 3], [3, 2, 1], [1, np.nan, 2], [1], [1, 2], [0, 0, 0], [1, 2]]
    gold = [[1, 2, 3], [1, 2, 3], [5, 6, 7], [2], [3, 3], [1, 2, 3], [np.nan, 1]]
    result = m.ranking_correlation(predicted, gold)
    assert result == {
        "kendall_tau_b": pytest.approx(0.25),
        "spearman": pytest.approx(0.25),
        "n_prompts": 4,
        "n_skipped_too_few": 2,
        "n_skipped_constant_gold": 1,
        "n_constant_predicted": 1,
        "n_missing_items": 2,
    }


def test_ranking_correlation_averages_scipy_per_prompt():
    rng = np.random.default_rng(5)
    predicted = [rng.integers(0, 4, 8).astype(float) for _ in range(30)]
    gold = [rng.integers(0, 4, 8).astype(float) for _ in range(30)]
    kept = [(p, g) for p, g in zip(predicted, gold) if len(set(g)) > 1 and len(set(p)) > 1]
    result = m.ranking_correlation(predicted, gold)
    assert result["kendall_tau_b"] * result["n_prompts"] == pytest.approx(
        sum(stats.kendalltau(p, g).statistic for p, g in kept)
    )
    assert result["spearman"] * result["n_prompts"] == pytest.approx(
        sum(stats.spearmanr(p, g).statistic for p, g in kept)
    )


def test_ndcg_hand_worked():
    """Scores 0.9, 0.8, 0.1 rank the items with relevance 0, 2, 1 in that order.
    Gains 2^rel - 1 = 0, 3, 1; discounts 1/log2(2), 1/log2(3), 1/log2(4).
    DCG = 0 + 3/log2(3) + 1/2; ideal order 2, 1, 0: IDCG = 3 + 1/log2(3) + 0.
    @1: 0 / 3 = 0. @2: (3/log2(3)) / (3 + 1/log2(3))."""
    scores, relevance = [0.9, 0.8, 0.1], [0, 2, 1]
    ideal = 3 + 1 / math.log2(3)
    assert m.ndcg(scores, relevance) == pytest.approx((3 / math.log2(3) + 0.5) / ideal)
    assert m.ndcg(scores, relevance, k=1) == 0.0
    assert m.ndcg(scores, relevance, k=2) == pytest.approx((3 / math.log2(3)) / ideal)
    assert m.ndcg(scores, relevance, k=10) == m.ndcg(scores, relevance)


def test_ndcg_ties_are_broken_pessimistically_whatever_the_input_order():
    """All scores equal: tied items go in increasing relevance, 0, 1, 2:
    DCG = 0 + 1/log2(3) + 3/2, IDCG = 3 + 1/log2(3). Reversing the input gives the same."""
    expected = (1 / math.log2(3) + 1.5) / (3 + 1 / math.log2(3))
    assert m.ndcg([1, 1, 1], [2, 1, 0]) == pytest.approx(expected)
    assert m.ndcg([1, 1, 1], [0, 1, 2]) == pytest.approx(expected)


def test_ndcg_all_zero_relevance_is_skipped():
    assert math.isnan(m.ndcg([1, 2, 3], [0, 0, 0]))
    result = m.mean_ndcg(
        [[1, 2, 3], [3, 2, 1], [1, 2]], [[0, 0, 0], [2, 1, 0], [np.nan, np.nan]], k=3
    )
    assert result == {"ndcg": 1.0, "k": 3, "n_prompts": 1, "n_skipped": 2}


# ------------------------------------------------------------------ calibration


def test_calibration_four_examples_hand_worked():
    """Margins ln 3, ln 3, -ln 3, ln 19 give P(a) = 0.75, 0.75, 0.25, 0.95;
    outcomes a, b, b, a (y = 1, 0, 0, 1). A fifth pair is a human tie: excluded.
    Confidence c = max(p, 1 - p) = 0.75, 0.75, 0.75, 0.95; the model's choice won in
    pairs 1, 3, 4 (correct = 1, 0, 1, 1). Bins floor((2c - 1) * 10): bin 5 holds the
    three 0.75 (share won 2/3, gap |2/3 - 0.75| = 1/12, weight 3/4); bin 9 holds 0.95
    (share 1, gap 0.05, weight 1/4). ECE = 1/16 + 0.0125 = 0.075.
    Brier = (0.0625 + 0.5625 + 0.0625 + 0.0025) / 4 = 0.1725.
    (Binning P(a) instead gave ECE 0.2, a number that changed with the orientation.)"""
    margins = [math.log(3), math.log(3), -math.log(3), math.log(19), 0.0]
    outcome = ["a", "b", "b", "a", "tie"]
    result = m.calibration(margins, [0.0] * 5, outcome)
    assert result["n"] == 4
    assert result["ece"] == pytest.approx(0.075)
    assert result["brier"] == pytest.approx(0.1725)
    by_bin = {i: b for i, b in enumerate(result["bins"]) if b["n"]}
    assert sorted(by_bin) == [5, 9]
    assert by_bin[5]["n"] == 3
    assert by_bin[5]["mean_predicted"] == pytest.approx(0.75)
    assert by_bin[5]["observed_frequency"] == pytest.approx(2 / 3)
    assert by_bin[9]["lower"] == pytest.approx(0.95) and by_bin[9]["upper"] == pytest.approx(1.0)
    assert math.isnan(result["bins"][0]["mean_predicted"])
    # Calling the other response a keeps the bins and both scores.
    swapped = m.calibration([0.0] * 5, margins, ["b", "a", "a", "b", "tie"])
    assert swapped["ece"] == pytest.approx(0.075) and swapped["brier"] == pytest.approx(0.1725)
    assert [b["n"] for b in swapped["bins"]] == [b["n"] for b in result["bins"]]


def test_calibration_does_not_depend_on_which_response_is_stored_first():
    """The same pairs with the chosen response always first and in a random orientation give
    the same ECE, Brier and bins (binning P(a) gave every bin an observed frequency of 1.0 on
    chosen-first data)."""
    rng = np.random.default_rng(0)
    chosen = rng.normal(0.5, 1.0, 500)
    rejected = rng.normal(0.0, 1.0, 500)
    chosen_first = m.calibration(chosen, rejected, ["a"] * 500)
    flip = rng.random(500) < 0.5
    random_order = m.calibration(
        np.where(flip, rejected, chosen),
        np.where(flip, chosen, rejected),
        np.where(flip, "b", "a").tolist(),
    )
    assert random_order["ece"] == pytest.approx(chosen_first["ece"], abs=1e-12)
    assert random_order["brier"] == pytest.approx(chosen_first["brier"], abs=1e-12)
    assert [b["n"] for b in random_order["bins"]] == [b["n"] for b in chosen_first["bins"]]
    observed = [b["observed_frequency"] for b in chosen_first["bins"] if b["n"]]
    assert min(observed) < 1.0  # not the degenerate all-ones of P(a) bins


def test_calibration_extreme_margins_do_not_overflow():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        probability = m.preference_probability([1000.0, -1000.0, 0.0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(probability, [1.0, 0.0, 0.5])
    result = m.calibration([1000.0, -1000.0], [0.0, 0.0], ["a", "b"])
    assert result["bins"][9]["n"] == 2  # confidence 1 lands in the last bin
    assert result["ece"] == 0.0 and result["brier"] == 0.0


# ------------------------------------------------------------------ length bias


def test_length_bias_hand_worked():
    """0: a preferred, length 10 > 5 -> chosen longer; 2 > 1 right.
    1: a preferred, 5 < 9 -> chosen shorter; 1 < 2 wrong.
    2: b preferred, 7 = 7 -> equal length, in neither split.
    3: b preferred, 8 > 3 -> chosen longer; b's 1 > a's 0 right.
    4: human tie -> excluded from the splits (but in the correlation).
    Longer: 2/2; shorter: 0/1."""
    reward_a, reward_b = [2, 1, 3, 0, 1], [1, 2, 1, 1, 0]
    lengths_a, lengths_b = [10, 5, 7, 3, 1], [5, 9, 7, 8, 2]
    result = m.length_bias(
        reward_a, reward_b, ["a", "a", "b", "b", "tie"], lengths_a, lengths_b, n_resamples=0
    )
    assert result["n_chosen_longer"] == 2 and result["accuracy_when_chosen_longer"] == 1.0
    assert result["n_chosen_shorter"] == 1 and result["accuracy_when_chosen_shorter"] == 0.0
    assert result["n_equal_length"] == 1
    expected = stats.spearmanr(reward_a + reward_b, lengths_a + lengths_b).statistic
    assert result["spearman"] == pytest.approx(expected)


def test_length_bias_positive_for_a_length_loving_model():
    lengths = np.arange(1, 21, dtype=float)
    result = m.length_bias(
        lengths[:10], lengths[10:], ["a"] * 10, lengths[:10], lengths[10:], n_resamples=0
    )
    assert result["spearman"] == pytest.approx(1.0)
    assert result["accuracy_when_chosen_shorter"] == 0.0 and result["n_chosen_shorter"] == 10


# -------------------------------------------------------------------- bootstrap


def test_bootstrap_constant_data_is_a_point():
    assert m.bootstrap_ci(np.ones(50)) == (1.0, 1.0)
    assert m.bootstrap_ci(np.zeros(50), clusters=np.arange(50) // 5) == (0.0, 0.0)
    assert m.bootstrap_ci([1.0, np.nan, 1.0]) == (1.0, 1.0)  # NaN items are never counted


def test_bootstrap_two_values_hand_worked():
    """Values 0, 1: a resample's mean is 0, 0.5 or 1 with chance 1/4, 1/2, 1/4, so with
    1000 draws the 2.5% quantile is 0 and the 97.5% quantile is 1."""
    assert m.bootstrap_ci([0.0, 1.0], n_resamples=1000, seed=0) == (0.0, 1.0)


def test_bootstrap_is_seeded():
    values = np.random.default_rng(6).random(500)
    assert m.bootstrap_ci(values, seed=7) == m.bootstrap_ci(values, seed=7)
    assert m.bootstrap_ci(values, seed=7) != m.bootstrap_ci(values, seed=8)
    low, high = m.bootstrap_ci(values)
    assert low < values.mean() < high


def test_bootstrap_singleton_clusters_equal_pair_resampling():
    values = np.random.default_rng(8).random(300)
    pair = m.bootstrap_ci(values, seed=3)
    clustered = m.bootstrap_ci(values, clusters=np.arange(300), seed=3)
    assert clustered == pytest.approx(pair, abs=1e-12)


def test_clustered_bootstrap_is_wider_when_prompts_repeat():
    """50 prompts with 4 pairs each, all pairs of a prompt right or all wrong: the
    effective sample is 50 prompts, not 200 pairs, so the interval is about twice as wide."""
    rng = np.random.default_rng(9)
    per_prompt = (rng.random(50) < 0.6).astype(float)
    values = np.repeat(per_prompt, 4)
    prompts = np.repeat(np.arange(50), 4)
    pair_low, pair_high = m.bootstrap_ci(values, seed=0)
    prompt_low, prompt_high = m.bootstrap_ci(values, clusters=prompts, seed=0)
    assert (prompt_high - prompt_low) > 1.5 * (pair_high - pair_low)


def test_bootstrap_is_fast_on_10000_pairs():
    values = (np.random.default_rng(10).random(10_000) < 0.7).astype(float)
    m.bootstrap_ci(values[:100])  # warm up
    start = time.perf_counter()
    m.bootstrap_ci(values, n_resamples=1000)
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------- categories


def test_per_category_hand_worked_with_an_all_tie_category():
    """x: pairs 0 (right) and 2 (wrong) -> 1/2. y: pair 1 (right) -> 1/1.
    z: pair 3 is a human tie -> n = 0, accuracy NaN."""
    reward_a, reward_b = [2.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]
    outcome = ["a", "b", "a", "tie"]
    result = m.per_category(
        ["x", "y", "x", "z"],
        partial(m.pairwise_accuracy, n_resamples=0),
        reward_a=reward_a,
        reward_b=reward_b,
        outcome=outcome,
    )
    assert list(result) == ["x", "y", "z"]
    assert (result["x"]["n"], result["x"]["accuracy"]) == (2, 0.5)
    assert (result["y"]["n"], result["y"]["accuracy"]) == (1, 1.0)
    assert result["z"]["n"] == 0 and result["z"]["n_human_ties"] == 1
    assert math.isnan(result["z"]["accuracy"])


def test_per_category_rejects_misaligned_arrays():
    with pytest.raises(ValueError, match="reward_a has 2 rows but category has 3"):
        m.per_category(
            ["x", "y", "x"],
            m.pairwise_accuracy,
            reward_a=[1, 2],
            reward_b=[1, 2, 3],
            outcome=["a"] * 3,
        )


# ------------------------------------------------------------- RewardBench v1


def test_rewardbench_reasoning_weights_math_as_much_as_all_code():
    """math-prm 0.5, every code subset 1.0. RewardBench weights math-prm as 984 = 6 * 164:
    Reasoning = (984 * 0.5 + 6 * 164 * 1.0) / 1968 = 0.75. (Weighting by its 447 real
    examples would give (447 * 0.5 + 984) / 1431 = 0.8438.)"""
    accuracies = {
        "math-prm": 0.5,
        **{f"hep-{lang}": 1.0 for lang in ("cpp", "go", "java", "js", "python", "rust")},
    }
    assert m.rewardbench_v1_sections(accuracies)["Reasoning"] == pytest.approx(0.75)


def test_rewardbench_sections_hand_worked():
    """Chat: (100 * 1 + 95 * 0 + 95 * 1 + 28 * 0.5 + 40 * 0.25) / 358 = 219 / 358.
    Chat Hard with only mt-bench-hard (37, 0.0) and llmbar-natural (100, 0.8) present:
    80 / 137. Safety absent -> NaN, so score (mean of sections) is NaN."""
    accuracies = {
        "alpacaeval-easy": 1.0,
        "alpacaeval-length": 0.0,
        "alpacaeval-hard": 1.0,
        "mt-bench-easy": 0.5,
        "mt-bench-med": 0.25,
        "mt-bench-hard": 0.0,
        "llmbar-natural": 0.8,
    }
    result = m.rewardbench_v1_sections(accuracies)
    assert result["Chat"] == pytest.approx(219 / 358)
    assert result["Chat Hard"] == pytest.approx(80 / 137)
    assert math.isnan(result["Safety"]) and math.isnan(result["score"])
    assert math.isnan(result["prior_sets"])


def test_rewardbench_score_and_prior_sets():
    """All Chat subsets 0.9, Chat Hard 0.6, Safety 0.8, Reasoning 0.7: score = 3.0 / 4.
    Prior sets helpful 0.6, hhh 0.8, shp 0.5, summarize 0.7 -> 0.65 (anthropic_harmless
    is not part of it). With prior sets: (2 * 3.0 + 0.65) / 9."""
    section_values = {"Chat": 0.9, "Chat Hard": 0.6, "Safety": 0.8, "Reasoning": 0.7}
    accuracies = {
        subset: section_values[section]
        for section, subsets in m.REWARDBENCH_V1_SECTIONS.items()
        for subset in subsets
    }
    accuracies.update(
        {
            "anthropic_helpful": 0.6,
            "anthropic_hhh": 0.8,
            "shp": 0.5,
            "summarize": 0.7,
            "anthropic_harmless": 0.0,
        }
    )
    result = m.rewardbench_v1_sections(accuracies)
    for section, value in section_values.items():
        assert result[section] == pytest.approx(value)
    assert result["score"] == pytest.approx(0.75)
    assert result["prior_sets"] == pytest.approx(0.65)
    assert result["score_with_prior_sets"] == pytest.approx((6.0 + 0.65) / 9)


def test_rewardbench_unknown_subset_is_refused():
    with pytest.raises(ValueError, match="alpaca-easy"):
        m.rewardbench_v1_sections({"alpaca-easy": 1.0})


def test_rewardbench_scores_from_examples():
    """math-prm: 2 > 1 right, 1 = 1 wrong (ties count wrong) -> 0.5.
    hep-python: 3 > 0 right -> 1.0. Reasoning = (984 * 0.5 + 164 * 1) / 1148."""
    result = m.rewardbench_v1_scores(
        [2.0, 1.0, 3.0], [1.0, 1.0, 0.0], ["math-prm", "math-prm", "hep-python"]
    )
    assert result["subsets"] == {
        "hep-python": {"n": 1, "accuracy": 1.0},
        "math-prm": {"n": 2, "accuracy": 0.5},
    }
    assert result["Reasoning"] == pytest.approx((984 * 0.5 + 164) / 1148)


# ----------------------------------------------------------------------- report


def _report_inputs():
    rng = np.random.default_rng(11)
    n = 400
    reward_a = np.round(rng.normal(size=n), 2)
    reward_b = np.round(rng.normal(size=n), 2)
    outcome = np.where(reward_a + rng.normal(scale=0.8, size=n) > reward_b, "a", "b").astype(object)
    outcome[rng.random(n) < 0.1] = "tie"
    return {
        "reward_a": reward_a,
        "reward_b": reward_b,
        "outcome": outcome,
        "lengths_a": rng.integers(10, 500, n),
        "lengths_b": rng.integers(10, 500, n),
        "category": rng.choice(["chat", "code", "math"], n),
        "prompt_ids": rng.integers(0, 120, n),
        "votes": rng.integers(-1, 3, (n, 3)),
    }


def test_report_is_json_ready_and_consistent_with_the_parts():
    inputs = _report_inputs()
    report = m.pairwise_report(**inputs, n_resamples=200)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    for key in (
        "n",
        "accuracy",
        "accuracy_ci95",
        "accuracy_half_credit",
        "by_category",
        "calibration",
        "length_bias",
        "n_human_ties",
        "three_way_accuracy",
        "annotator_agreement",
    ):
        assert key in report
    direct = m.pairwise_accuracy(
        inputs["reward_a"],
        inputs["reward_b"],
        inputs["outcome"],
        prompt_ids=inputs["prompt_ids"],
        n_resamples=200,
    )
    assert report["n"] == direct["n"] and report["n_human_ties"] == direct["n_human_ties"] > 0
    assert report["accuracy"] == direct["accuracy"]
    assert report["accuracy_ci95"] == direct["accuracy_ci95"]
    assert report["n_total"] == report["n"] + report["n_human_ties"]
    assert sum(entry["n"] for entry in report["by_category"].values()) == report["n"]
    assert set(report["by_category"]) == {"chat", "code", "math"}
    assert report["tie_band"] == 0.0 and any("tie_band is 0" in note for note in report["notes"])
    assert report["bootstrap"]["unit"] == "prompt"
    assert report["calibration"]["ece"] == pytest.approx(
        m.calibration(inputs["reward_a"], inputs["reward_b"], inputs["outcome"])["ece"]
    )
    assert len(report["annotator_agreement"]["per_annotator"]) == 3
    low, high = report["accuracy_ci95"]
    assert low <= report["accuracy"] <= high


def test_report_same_seed_same_report():
    inputs = _report_inputs()
    assert m.pairwise_report(**inputs, n_resamples=100, seed=4) == m.pairwise_report(
        **inputs, n_resamples=100, seed=4
    )


def test_report_minimal_inputs_and_nulls_with_notes():
    """Two decided pairs and one tie, category 'empty' holding only the tie."""
    report = m.pairwise_report(
        [2.0, 0.0, 1.0],
        [1.0, 1.0, 1.0],
        ["a", "a", "tie"],
        category=["full", "full", "empty"],
        n_resamples=50,
    )
    json.dumps(report, allow_nan=False)
    assert report["length_bias"] is None and report["annotator_agreement"] is None
    assert report["accuracy"] == 0.5
    assert report["by_category"]["empty"]["accuracy"] is None
    assert report["by_category"]["empty"]["n"] == 0
    assert any("by_category['empty']" in note for note in report["notes"])
    assert report["bootstrap"]["unit"] == "pair"


def test_report_without_ties_or_band_has_no_three_way():
    report = m.pairwise_report([1.0, 2.0], [0.0, 3.0], ["a", "b"], n_resamples=10)
    assert report["three_way_accuracy"] is None and report["tie_band"] is None
    with_band = m.pairwise_report([1.0, 2.0], [0.0, 3.0], ["a", "b"], n_resamples=10, tie_band=5.0)
    assert with_band["three_way_accuracy"] == 0.0  # band 5 predicts a tie for both


def test_report_needs_both_lengths():
    with pytest.raises(ValueError, match="both lengths_a and lengths_b"):
        m.pairwise_report([1.0], [0.0], ["a"], lengths_a=[3])


def test_metrics_module_imports_without_scipy_or_torch():
    code = (
        "import sys, prefkit.eval.metrics; "
        "bad = {'scipy', 'torch', 'pandas'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
