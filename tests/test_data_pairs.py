"""Scored candidate sets -> pairs, and budgeted selection, on hand-made sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prefkit.cli import main
from prefkit.data.pairs import PairsConfig, attach_rewards, build_pairs
from prefkit.data.records import RankingRecord, RatingRecord
from prefkit.data.select import SelectConfig, gumbel_top_k_order, select_records


def candidate_set(set_id: str, scores, *, tokens=None, responses=None) -> RankingRecord:
    responses = responses or [f"response {index}" for index in range(len(scores))]
    metadata = {}
    if tokens is not None:
        metadata["responses"] = [{"tokens": n, "finish_reason": "eos"} for n in tokens]
    return RankingRecord(
        id=set_id, prompt="p", responses=responses, scores=scores, metadata=metadata
    )


def test_best_worst_takes_the_extremes():
    pairs, stats = build_pairs([candidate_set("s", [1.0, 3.0, 2.0, 0.0])], PairsConfig())
    (pair,) = pairs
    assert (pair.response_a, pair.response_b, pair.outcome) == ("response 1", "response 3", "a")
    assert pair.margin == 3.0 and pair.metadata["scores"] == [3.0, 0.0]
    assert pair.metadata["p_chosen"] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert stats.sets_read == stats.sets_used == stats.pairs_written == 1


def test_best_random_is_seeded_and_keeps_the_best():
    sets = [candidate_set(f"s{index}", [0.0, 5.0, 1.0, 2.0, 3.0]) for index in range(40)]
    first, _ = build_pairs(sets, PairsConfig(strategy="best-random", seed=3))
    again, _ = build_pairs(sets, PairsConfig(strategy="best-random", seed=3))
    assert [p.id for p in first] == [p.id for p in again]
    assert all(pair.response_a == "response 1" for pair in first)
    assert len({pair.response_b for pair in first}) == 4  # every other response gets drawn


def test_all_pairs_orient_by_score_and_filter_by_margin():
    """scores 0, 2, 2.5: margins 2 (1>0), 2.5 (2>0), 0.5 (2>1); --min-margin 1 drops the last."""
    pairs, stats = build_pairs(
        [candidate_set("s", [0.0, 2.0, 2.5])], PairsConfig(strategy="all", min_margin=1.0)
    )
    assert sorted((p.response_a[-1], p.response_b[-1], p.margin) for p in pairs) == [
        ("1", "0", 2.0),
        ("2", "0", 2.5),
    ]
    assert stats.dropped_pairs == {"below_min_margin": 1}


def test_ties_and_top_quantile():
    """Margins 0.05, 1, 2, 3 (best-worst of four sets). Tie margin 0.1 turns the first into a
    tie; the top half of the three others by P = sigmoid(margin) keeps margins 2 and 3."""
    sets = [candidate_set(f"s{m}", [0.0, m]) for m in (0.05, 1.0, 2.0, 3.0)]
    pairs, stats = build_pairs(sets, PairsConfig(tie_margin=0.1, top_quantile=0.5))
    assert [(p.outcome, p.margin) for p in pairs] == [("tie", None), ("a", 2.0), ("a", 3.0)]
    assert stats.dropped_pairs == {"below_top_quantile": 1} and stats.ties_written == 1
    pairs, stats = build_pairs(sets, PairsConfig(tie_margin=0.1, drop_ties=True))
    assert len(pairs) == 3 and stats.dropped_pairs == {"tie": 1}


def test_length_penalty_changes_the_choice():
    """rewards 2 and 1.5, lengths 10 and 2 tokens, L = 0.1: s = 1.0 and 1.3, so the short one wins
    with margin 0.3; by characters ('xx..' 10 vs 2) the same."""
    record = candidate_set("s", [2.0, 1.5], tokens=[10, 2], responses=["x" * 10, "yy"])
    (pair,), _ = build_pairs([record], PairsConfig(length_penalty=0.1))
    assert pair.response_a == "yy" and pair.margin == pytest.approx(0.3)
    assert pair.metadata["scores"] == [1.5, 2.0]
    assert pair.metadata["length_penalty"]["lengths"] == [2, 10]
    (pair,), _ = build_pairs([record], PairsConfig(length_penalty=0.1, length_unit="chars"))
    assert pair.response_a == "yy"
    with pytest.raises(ValueError, match="length-unit chars"):
        build_pairs([candidate_set("t", [1.0, 2.0])], PairsConfig(length_penalty=0.1))


def test_bad_sets_are_counted_not_lost():
    one = RatingRecord(id="one", prompt="p", response="r", ratings={"reward": 1.0})
    nan_one = candidate_set("nan1", [float("nan"), 1.0, None])
    nan_two = candidate_set("nan2", [float("nan"), 1.0, 0.0])
    same = candidate_set("same", [1.0, 0.0], responses=["r", "r"])
    pairs, stats = build_pairs([one, nan_one, nan_two, same], PairsConfig())
    assert [p.id for p in pairs] == ["nan2/1-2"]
    assert stats.skipped_sets == {"one_response": 1, "fewer_than_two_scored": 1}
    assert stats.omitted_responses == {"missing_score": 1}
    assert stats.dropped_pairs == {"identical_responses": 1}
    assert stats.sets_read == 4 and stats.sets_used == 2


def test_attach_rewards_checks_ids_and_lengths():
    record = candidate_set("s", [None, None])
    (scored,) = attach_rewards([record], {"s": {"rewards": [0.5, 1.0]}}, source="x")
    assert scored.scores == (0.5, 1.0)
    with pytest.raises(ValueError, match="no scores for record 's'"):
        list(attach_rewards([record], {}, source="x"))
    with pytest.raises(ValueError, match="2 values"):
        list(attach_rewards([record], {"s": {"rewards": [1.0]}}, source="x"))


def test_gumbel_top_k_draws_proportional_to_exp_z_over_tau():
    """k = 1: P(first = i) = softmax(z / tau)_i; 4,000 seeds get within 0.025 of it."""
    scores = np.array([0.0, 1.0, 2.0, 4.0])
    z = (scores - scores.mean()) / scores.std()
    expected = np.exp(z / 0.7) / np.exp(z / 0.7).sum()
    firsts = np.bincount(
        [gumbel_top_k_order(scores, 0.7, seed)[0] for seed in range(4000)], minlength=4
    )
    assert np.allclose(firsts / 4000, expected, atol=0.025)
    assert list(gumbel_top_k_order(scores, 0.0, 0)) == [3, 2, 1, 0]


def test_select_budgets_and_counts():
    records = [
        RatingRecord(
            id=str(index),
            prompt="p",
            response="r",
            ratings={"reward": float(index) if index != 5 else None},
            metadata={"responses": [{"tokens": 10, "finish_reason": "eos"}]},
        )
        for index in range(8)
    ]
    selected, stats = select_records(records, SelectConfig(budget_records=3, temperature=0))
    assert [record.id for record in selected] == ["4", "6", "7"]  # top 3, in input order
    assert stats.skipped == {"missing_score": 1} and stats.not_selected == 4
    assert selected[-1].metadata["selection"]["order"] == 0
    selected, stats = select_records(records, SelectConfig(budget_tokens=25, seed=1))
    assert len(selected) == 2 and stats.selected_tokens == 20
    with pytest.raises(ValueError, match="exactly one"):
        SelectConfig()


def test_pairs_and_select_commands(tmp_path, capsys):
    scored = tmp_path / "scored.jsonl"
    sets = [candidate_set(f"s{index}", [0.0, float(index), 1.0]) for index in range(4)]
    sets.append(candidate_set("flat", [2.0, 2.0, 2.0]))
    scored.write_text("".join(json.dumps(record.to_dict()) + "\n" for record in sets))
    out = tmp_path / "pairs.jsonl"
    code = main(["data", "pairs", str(scored), "--out", str(out), "--drop-ties"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sets_read"] == 5 and summary["pairs_written"] == 4
    assert summary["dropped_pairs"] == {"tie": 1}  # the flat set: margin 0
    selected = tmp_path / "selected.jsonl"
    code = main(["data", "select", str(scored), "--out", str(selected), "--budget-records", "2"])
    assert code == 0 and len(selected.read_text().splitlines()) == 2
    rewards = tmp_path / "rewards.jsonl"  # as prefkit rm score writes them; NaN is no score
    rows = [
        {"id": r.id, "kind": "ranking", "rewards": [float(i), 0.0, 0.0]} for i, r in enumerate(sets)
    ]
    rows[0]["rewards"] = [float("nan")] * 3
    rewards.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code = main(
        ["data", "select", str(scored), "--scores", str(rewards), "--out", str(selected)]
        + ["--budget-records", "2", "--temperature", "0"]
    )
    assert code == 0
    assert [json.loads(line)["id"] for line in selected.read_text().splitlines()] == ["s3", "flat"]
    assert "skipped 1 missing_score" in capsys.readouterr().err
    code = main(["data", "select", str(scored), "--out", str(selected)])
    assert code == 2 and "exactly one" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "function"),
    [
        (["pairs"], "prefkit.data.pairs.build_pairs"),
        (["select", "--budget-records", "1"], "prefkit.data.select.select_records"),
    ],
)
def test_a_bug_in_pairs_or_select_keeps_its_traceback(tmp_path, monkeypatch, command, function):
    """A ValueError the library did not raise as a user error propagates out of main."""
    scored = tmp_path / "scored.jsonl"
    scored.write_text(json.dumps(candidate_set("s", [0.0, 1.0]).to_dict()) + "\n")

    def broken(*args, **kwargs):
        raise ValueError("an internal index mismatch")

    monkeypatch.setattr(function, broken)
    with pytest.raises(ValueError, match="internal index mismatch"):
        main(["data", command[0], str(scored), "--out", str(tmp_path / "out.jsonl"), *command[1:]])
