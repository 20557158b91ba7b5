"""The evaluation engine on hand-made records with fake scorers: every number worked out by hand."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from prefkit.data import PairwiseRecord, RankingRecord, RatingRecord
from prefkit.data.records import Text, text_key
from prefkit.eval.evaluate import MISSING_CATEGORY, evaluate
from prefkit.eval.scorers import JudgeVerdict, LengthScorer, ScorerError


class TableScorer:
    """Reward looked up by response text; counts the items it was asked to score."""

    def __init__(self, rewards: dict[str, float], name: str = "table"):
        self.rewards = rewards
        self.name = name
        self.items_scored: list[tuple[str, str]] = []

    def score(self, prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
        self.items_scored.extend((text_key(p), text_key(r)) for p, r in zip(prompts, responses))
        return np.array([self.rewards[response] for response in responses])


class FixedJudge:
    """A pairwise judge whose verdicts are given in advance, keyed by (a, b)."""

    def __init__(self, outcomes: dict[tuple[str, str], str]):
        self.outcomes = outcomes
        self.name = "judge"
        self.calls = 0

    def compare_pairs(self, prompts, responses_a, responses_b):
        self.calls += len(prompts)
        return [
            JudgeVerdict(self.outcomes[(a, b)], None, None)
            for a, b in zip(responses_a, responses_b)
        ]


REWARDS = {
    "good": 3.0,
    "bad": 1.0,
    "okay": 2.0,
    "x": 5.0,
    "y": 5.0,
    "long answer": 0.0,
    "z": 4.0,
    "m": 1.0,
    "n": 1.0,
}


def hand_pairs() -> list[PairwiseRecord]:
    """Five pairs; with REWARDS:

    r1 good 3 > bad 1, human a    -> right
    r2 bad 1 < okay 2, human b    -> right (shares the item (p1, bad) with r1)
    r3 x 5 = y 5, human a         -> tied score: 0 strict, 0.5 half credit
    r4 long answer 0 < z 4, human a -> wrong
    r5 m 1 = n 1, human tie       -> out of 2-way accuracy; a predicted tie (band 0)
    """
    return [
        PairwiseRecord("r1", "p1", "good", "bad", "a", votes=("a", "a", "b"), category="chat"),
        PairwiseRecord("r2", "p1", "bad", "okay", "b", votes=("b", "b", None), category="chat"),
        PairwiseRecord("r3", "p2", "x", "y", "a", votes=("a", "tie", "a"), category="code"),
        PairwiseRecord("r4", "p3", "long answer", "z", "a", votes=("a", "a", "a"), category="code"),
        PairwiseRecord("r5", "p4", "m", "n", "tie", votes=("tie", "tie", "a"), category="chat"),
    ]


def test_pairwise_metrics_worked_by_hand() -> None:
    """Strict accuracy (1 + 1 + 0 + 0) / 4 = 0.5; half credit (1 + 1 + 0.5 + 0) / 4 = 0.625.
    Three-way with band 0 over all five: r1 a ok, r2 b ok, r3 tie vs a no, r4 b vs a no,
    r5 tie ok -> 3 / 5."""
    run = evaluate(TableScorer(REWARDS), hand_pairs(), n_resamples=0)
    metrics = run.models[0].metrics
    assert (
        metrics["n_total"],
        metrics["n"],
        metrics["n_human_ties"],
        metrics["n_tied_scores"],
    ) == (5, 4, 1, 1)
    assert metrics["accuracy"] == 0.5
    assert metrics["accuracy_half_credit"] == 0.625
    assert metrics["tie_band"] == 0.0 and metrics["three_way_accuracy"] == pytest.approx(0.6)
    assert metrics["accuracy_ci95"] is None  # no resampling asked for
    # Categories: chat holds r1, r2 (both right) and the tie r5; code holds r3 (0.5 half) and r4.
    assert (
        metrics["by_category"]["chat"]["n"] == 2
        and metrics["by_category"]["chat"]["accuracy"] == 1.0
    )
    assert metrics["by_category"]["code"]["accuracy"] == 0.0
    assert metrics["by_category"]["code"]["accuracy_half_credit"] == 0.25
    assert metrics["rewardbench_v1"] is None  # 'chat' and 'code' are not RewardBench subsets
    # Length bias: the preferred response is longer in r1 (4 > 3), r2 (4 > 3) and r4 (11 > 1);
    # r3 has equal lengths; in no pair is the preferred response the shorter one.
    bias = metrics["length_bias"]
    assert (bias["n_chosen_longer"], bias["n_chosen_shorter"], bias["n_equal_length"]) == (3, 0, 1)
    assert bias["accuracy_when_chosen_longer"] == pytest.approx(2 / 3)  # r1, r2 right, r4 wrong
    assert bias["accuracy_when_chosen_shorter"] is None
    assert metrics["n_pairwise_records"] == 5 and metrics["n_ranking_records"] == 0


def test_tie_band_changes_three_way_accuracy() -> None:
    """Band 1.5: r1 |2| > 1.5 -> a ok; r2 |1| -> tie vs b no; r3 tie vs a no; r4 |4| -> b vs a no;
    r5 tie ok -> 2 / 5."""
    metrics = (
        evaluate(TableScorer(REWARDS), hand_pairs(), tie_band=1.5, n_resamples=0).models[0].metrics
    )
    assert metrics["three_way_accuracy"] == pytest.approx(0.4)
    assert metrics["tie_band"] == 1.5


def test_annotator_agreement_worked_by_hand() -> None:
    """Annotator 0 votes a, b, a, a, tie: on its a/b votes (r1..r4) credit 1, 1, 0, 0 -> 0.5.
    Annotator 2 votes b, -, a, a, a: model says a on r1 (no), ties r3 (no), b on r4 (no),
    ties r5 (no) -> 0.0 on 4 votes. Majority: a, b, a, a, tie -> like the outcomes."""
    agreement = (
        evaluate(TableScorer(REWARDS), hand_pairs(), n_resamples=0)
        .models[0]
        .metrics["annotator_agreement"]
    )
    assert agreement["n_annotators"] == 3
    first, _, third = agreement["per_annotator"]
    assert (first["n_votes"], first["n_tie_votes"], first["accuracy"]) == (5, 1, 0.5)
    assert (third["n_votes"], third["accuracy"], third["three_way_accuracy"]) == (4, 0.0, 0.0)
    assert agreement["majority"]["accuracy"] == 0.5
    assert agreement["majority"]["three_way_accuracy"] == pytest.approx(0.6)


def test_each_distinct_item_is_scored_once() -> None:
    scorer = TableScorer(REWARDS)
    records = hand_pairs() + [PairwiseRecord("r1-again", "p1", "good", "bad", "a")]
    evaluate(scorer, records, n_resamples=0)
    # 12 response slots, 9 distinct (prompt, response) items: (p1, bad) and (p1, good) repeat.
    assert len(scorer.items_scored) == 9 == len(set(scorer.items_scored))


def test_same_response_under_different_prompts_is_scored_separately() -> None:
    scorer = TableScorer({"yes": 1.0, "no": 0.0})
    records = [
        PairwiseRecord("1", "q1", "yes", "no", "a"),
        PairwiseRecord("2", "q2", "yes", "no", "a"),
    ]
    evaluate(scorer, records, n_resamples=0)
    assert len(scorer.items_scored) == 4


def test_several_scorers_side_by_side() -> None:
    """The second scorer negates the first: r1, r2 become wrong, r4 right, r3 stays tied
    -> strict 1 / 4."""
    inverted = TableScorer({text: -value for text, value in REWARDS.items()}, name="inverted")
    run = evaluate([TableScorer(REWARDS), inverted, LengthScorer()], hand_pairs(), n_resamples=0)
    assert [model.name for model in run.models] == ["table", "inverted", "length"]
    assert run.models[0].metrics["accuracy"] == 0.5
    assert run.models[1].metrics["accuracy"] == 0.25  # r4 right; r1, r2 wrong; r3 tied
    # Length: r1 good(4) > bad(3) right; r2 bad(3) < okay(4) right; r3 x = y tied; r4 right.
    assert run.models[2].metrics["accuracy"] == 0.75
    document = run.to_json()
    assert [block["name"] for block in document["models"]] == ["table", "inverted", "length"]
    assert "accuracy" not in document  # several models: no single top-level block
    json.dumps(document, allow_nan=False)
    pair = run.models[1].pairs[0]
    assert (pair.id, pair.reward_a, pair.reward_b, pair.category, pair.length_a) == (
        "r1",
        -3.0,
        -1.0,
        "chat",
        4,
    )


def test_scorer_names_must_differ() -> None:
    with pytest.raises(ValueError, match="distinct"):
        evaluate([LengthScorer(), LengthScorer()], hand_pairs())


def test_by_metadata_field_and_missing_values() -> None:
    records = [
        PairwiseRecord("1", "p", "aa", "b", "a", metadata={"source": "web"}),
        PairwiseRecord("2", "p", "c", "dd", "a", metadata={"source": "books"}),
        PairwiseRecord("3", "q", "ee", "f", "a"),
    ]
    by_source = (
        evaluate(LengthScorer(), records, by="source", n_resamples=0)
        .models[0]
        .metrics["by_category"]
    )
    assert {name: entry["accuracy"] for name, entry in by_source.items()} == {
        "books": 0.0,
        "web": 1.0,
        MISSING_CATEGORY: 1.0,
    }
    with pytest.raises(ValueError, match="no record has this field.*source"):
        evaluate(LengthScorer(), records, by="topic")


def test_rewardbench_sections_when_categories_are_subsets() -> None:
    """alpacaeval-easy holds r1, r2 (both right) -> Chat 1.0; hep-cpp holds r3 (tied score:
    wrong, as RewardBench counts it) and r4 (wrong) -> Reasoning 0.0 (only code present);
    Chat Hard and Safety have no subset -> null, so the overall score is null."""
    records = [
        PairwiseRecord(r.id, r.prompt, r.response_a, r.response_b, r.outcome, category=subset)
        for r, subset in zip(
            hand_pairs()[:4], ["alpacaeval-easy", "alpacaeval-easy", "hep-cpp", "hep-cpp"]
        )
    ]
    sections = (
        evaluate(TableScorer(REWARDS), records, n_resamples=0).models[0].metrics["rewardbench_v1"]
    )
    assert sections["Chat"] == 1.0 and sections["Reasoning"] == 0.0
    assert (
        sections["Chat Hard"] is None and sections["Safety"] is None and sections["score"] is None
    )
    assert sections["subsets"]["hep-cpp"] == {"n": 2, "accuracy": 0.0}


RANK_REWARDS = {
    "r1": 2.0,
    "r2": 3.0,
    "r3": 1.0,
    "s1": 0.0,
    "s2": 0.0,
    "t1": 1.0,
    "t2": 2.0,
    "t3": 9.0,
}


def hand_rankings() -> list[RankingRecord]:
    return [
        RankingRecord("R1", "q1", ("r1", "r2", "r3"), scores=(3.0, 1.0, 0.0)),
        RankingRecord("R2", "q2", ("s1", "s2"), scores=(2.0, 2.0)),
        RankingRecord("R3", "q3", ("t1", "t2", "t3"), scores=(0.0, 4.0, None)),
    ]


def test_ranking_metrics_worked_by_hand() -> None:
    """R1: gold 3, 1, 0; predicted 2, 3, 1. Pairs (1,2) discordant, (1,3), (2,3) concordant
    -> tau-b = (2 - 1) / 3 = 1/3. Ranks gold 3, 2, 1 and predicted 2, 3, 1: d = 1, -1, 0 ->
    rho = 1 - 6 * 2 / (3 * 8) = 0.5. NDCG: predicted order r2 (rel 1), r1 (3), r3 (0):
    DCG = 1 / log2 2 + 7 / log2 3; ideal = 7 / log2 2 + 1 / log2 3. Top item r1 is not
    predicted top -> best-of-N credit 0.
    R2: constant gold -> no correlation, tied top -> no best-of-N; NDCG 1 (all equally relevant).
    R3: t3 unrated (dropped, 1 missing item); rated gold 0, 4 vs predicted 1, 2 -> tau = rho = 1,
    NDCG 1, best-of-N credit 1.
    Means: tau (1/3 + 1) / 2, rho (0.5 + 1) / 2, NDCG over 3 lists, best-of-N (0 + 1) / 2."""
    run = evaluate(TableScorer(RANK_REWARDS), hand_rankings(), n_resamples=0)
    metrics = run.models[0].metrics
    ranking, best = metrics["ranking"], metrics["best_of_n"]
    assert ranking["kendall_tau_b"] == pytest.approx(2 / 3)
    assert ranking["spearman"] == pytest.approx(0.75)
    assert (
        ranking["n_prompts"],
        ranking["n_skipped_constant_gold"],
        ranking["n_missing_items"],
    ) == (2, 1, 1)
    r1_ndcg = (1 + 7 / math.log2(3)) / (7 + 1 / math.log2(3))
    assert ranking["ndcg"]["ndcg"] == pytest.approx((r1_ndcg + 1 + 1) / 3)
    assert ranking["ndcg"]["k"] == 10
    assert (best["n_prompts"], best["n_skipped_tied_top"], best["accuracy"]) == (2, 1, 0.5)
    assert run.models[0].pairs == []
    assert "accuracy" not in metrics  # no pairwise records


def test_ranks_give_correlations_but_no_ndcg() -> None:
    records = [RankingRecord("R", "q", ("r1", "r2", "r3"), ranks=(1, 2, 3))]
    ranking = (
        evaluate(TableScorer(RANK_REWARDS), records, n_resamples=0).models[0].metrics["ranking"]
    )
    # Gold scores -1, -2, -3 vs predicted 2, 3, 1: tau = (1 - 2) / 3... pairs (1,2) disc, (1,3) conc, (2,3) conc.
    assert ranking["kendall_tau_b"] == pytest.approx(1 / 3)
    assert ranking["ndcg"] is None and "graded relevance" in ranking["ndcg_note"]


def test_mixed_pairwise_and_ranking_records() -> None:
    scorer = TableScorer({**REWARDS, **RANK_REWARDS})
    metrics = evaluate(scorer, hand_pairs() + hand_rankings(), n_resamples=0).models[0].metrics
    assert metrics["accuracy"] == 0.5 and metrics["ranking"]["kendall_tau_b"] == pytest.approx(
        2 / 3
    )


def test_bootstrap_is_seeded_and_resamples_prompts_when_they_repeat() -> None:
    first = evaluate(TableScorer(REWARDS), hand_pairs(), n_resamples=200, seed=3).models[0].metrics
    again = evaluate(TableScorer(REWARDS), hand_pairs(), n_resamples=200, seed=3).models[0].metrics
    assert first["accuracy_ci95"] == again["accuracy_ci95"]
    assert first["bootstrap"]["unit"] == "prompt" and first["bootstrap"]["n_prompts"] == 4
    low, high = first["accuracy_ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    unique_prompts = [
        PairwiseRecord("1", "a", "xx", "y", "a"),
        PairwiseRecord("2", "b", "xx", "y", "a"),
    ]
    assert (
        evaluate(LengthScorer(), unique_prompts, n_resamples=10)
        .models[0]
        .metrics["bootstrap"]["unit"]
        == "pair"
    )


def test_pairwise_judge_verdicts_become_rewards() -> None:
    """Verdicts a, b, tie, b, tie -> rewards (1, 0), (0, 1), (0.5, 0.5), (0, 1), (0.5, 0.5):
    strict (1 + 1 + 0 + 0) / 4 = 0.5, half credit (1 + 1 + 0.5 + 0) / 4 = 0.625,
    three-way r1 ok, r2 ok, r3 no, r4 no, r5 ok = 0.6."""
    judge = FixedJudge(
        {
            ("good", "bad"): "a",
            ("bad", "okay"): "b",
            ("x", "y"): "tie",
            ("long answer", "z"): "b",
            ("m", "n"): "tie",
        }
    )
    records = hand_pairs() + [PairwiseRecord("r1-again", "p1", "good", "bad", "a")]
    run = evaluate([judge, TableScorer(REWARDS)], records, n_resamples=0)
    metrics = run.models[0].metrics
    assert judge.calls == 5  # the repeated pair is judged once
    assert metrics["n"] == 5 and metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["accuracy_half_credit"] == pytest.approx(3.5 / 5)
    assert metrics["three_way_accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ScorerError, match="pairwise records only"):
        evaluate(judge, hand_rankings())


def test_other_record_kinds_and_bad_rewards_are_refused() -> None:
    rating = RatingRecord("x", "p", "r", {"overall": 3.0})
    with pytest.raises(ValueError, match="rating record.*convert"):
        evaluate(LengthScorer(), [rating])
    with pytest.raises(ValueError, match="no records"):
        evaluate(LengthScorer(), [])

    class NanScorer:
        name = "nan"

        def score(self, prompts, responses):
            return np.full(len(responses), np.nan)

    with pytest.raises(ScorerError, match="non-finite"):
        evaluate(NanScorer(), hand_pairs())


def test_prefkit_reward_model_folder_is_scored_through_its_load(
    tmp_path: Path, monkeypatch
) -> None:
    """A prefkit folder is recognised by its config.json and scored with RewardModel.score."""
    from prefkit.eval import scorers
    from prefkit.rm.model import RewardModel

    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format_version": 1, "mode": "embedding"}))

    class FakeModel:
        def score(self, prompts, responses, *, batch_size=64):
            assert all(isinstance(text, str) for text in prompts + responses)
            return np.array([float(len(p) + 10 * len(r)) for p, r in zip(prompts, responses)])

    monkeypatch.setattr(RewardModel, "load", classmethod(lambda cls, path, **kw: FakeModel()))
    scorer = scorers.load_scorer(str(folder), progress=False)
    assert isinstance(scorer, scorers.PrefkitRewardModelScorer) and scorer.name == str(folder)
    assert scorer.score(["ab", "c"], ["x", "yy"]).tolist() == [12.0, 21.0]
    with pytest.raises(ScorerError, match="policies"):
        scorers.load_scorer(str(folder), implicit_reward="sum")
