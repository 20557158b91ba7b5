"""``prefkit.rm.scoring.score_records`` and ``prefkit rm score`` on every kind of record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefkit.cli import main
from prefkit.data.records import BinaryRecord, PairwiseRecord, RankingRecord, RatingRecord
from prefkit.rm.model import RewardModel
from prefkit.rm.scoring import score_records
from test_rm_format import _moved_copy

PROMPT = "how do I boil an egg"
ANSWERS = ["put it in boiling water for eight minutes", "no", "eggs are round", ""]


def _records() -> list:
    return [
        PairwiseRecord(
            id="pair", prompt=PROMPT, response_a=ANSWERS[0], response_b=ANSWERS[1], outcome="a"
        ),
        RankingRecord(
            id="candidates",
            prompt=PROMPT,
            responses=tuple(ANSWERS),
            ranks=(1, 3, 2, 4),
            response_ids=("c0", "c1", "c2", "c3"),
        ),
        BinaryRecord(id="thumb", prompt=PROMPT, response=ANSWERS[2], label=True),
    ]


@pytest.fixture(scope="module")
def embedding_model(tmp_path_factory) -> RewardModel:
    folder = _moved_copy("embedding", tmp_path_factory.mktemp("scoring"))
    return RewardModel.load(folder, cache_dir=folder.parent / "cache")


def test_every_kind_gets_one_reward_per_response_in_order(embedding_model) -> None:
    rewards = embedding_model.score([PROMPT] * len(ANSWERS), ANSWERS)  # (4,)
    pair, ranking, single = score_records(embedding_model, _records(), batch_size=2)
    assert (pair["id"], pair["kind"]) == ("pair", "pairwise")
    assert pair["reward_a"] == pytest.approx(rewards[0], abs=1e-6)
    assert pair["reward_b"] == pytest.approx(rewards[1], abs=1e-6)
    assert pair["margin"] == pytest.approx(rewards[0] - rewards[1], abs=1e-6)
    assert ranking["id"] == "candidates" and ranking["response_ids"] == ["c0", "c1", "c2", "c3"]
    np.testing.assert_allclose(ranking["rewards"], rewards, atol=1e-6)
    assert single == {"id": "thumb", "kind": "binary", "reward": pytest.approx(rewards[2])}
    normalized = score_records(embedding_model, _records()[:1], normalize=True)[0]
    spec = embedding_model.spec
    assert normalized["reward_a"] == pytest.approx(
        (rewards[0] - spec.reward_mean) / spec.reward_std, abs=1e-5
    )


def test_multiobjective_rows_carry_each_attribute(tmp_path: Path) -> None:
    folder = _moved_copy("multiobjective", tmp_path)
    model = RewardModel.load(folder, cache_dir=tmp_path / "cache")
    rating = RatingRecord(id="r", prompt=PROMPT, response=ANSWERS[0], ratings={"helpful": 1.0})
    (row,) = score_records(model, [rating])
    expected = model.score_attributes([PROMPT], [ANSWERS[0]])
    assert row["reward"] == pytest.approx(float(model.score([PROMPT], [ANSWERS[0]])[0]))
    assert row["attributes"][0] == pytest.approx({k: float(v[0]) for k, v in expected.items()})


def test_cli_scores_candidate_sets_keeping_order_and_ids(embedding_model, tmp_path: Path) -> None:
    folder = _moved_copy("embedding", tmp_path)
    data = tmp_path / "candidates.jsonl"
    candidate_sets = [
        RankingRecord(
            id=f"set{i}",
            prompt=PROMPT,
            responses=tuple(ANSWERS[i:] + ANSWERS[:i]),
            ranks=(1, 2, 3, 4),
        )
        for i in range(3)
    ]
    data.write_text("".join(json.dumps(record.to_dict()) + "\n" for record in candidate_sets))
    out = tmp_path / "scored.jsonl"
    code = main(
        ["rm", "score", str(folder), str(data), "--out", str(out), "--chunk-size", "2"]
        + ["--cache-dir", str(tmp_path / "cache"), "--no-progress", "--allow-empty-responses"]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in rows] == ["set0", "set1", "set2"]
    for record, row in zip(candidate_sets, rows, strict=True):
        expected = embedding_model.score([PROMPT] * 4, list(record.responses))
        np.testing.assert_allclose(row["rewards"], expected, atol=1e-5)
