"""Ensembles of embedding-mode heads: ``train_ensemble``, mean reward, spread, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from prefkit.cli import main
from prefkit.data import write_records
from prefkit.data.records import PairwiseRecord, RatingRecord
from prefkit.errors import UserInputError
from prefkit.rm.ensemble import train_ensemble
from prefkit.rm.model import RewardModel
from prefkit.rm.scoring import score_records
from prefkit.rm.spec import RewardModelSpec
from prefkit.rm.train import train_reward_model
from test_rm_train import WORDS, make_tiny_bert, quick_config


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert-ensemble"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ensemble-cache")


def _response(rng: random.Random, quality: int) -> str:
    words = rng.sample(WORDS, 8 - quality) + ["excellent"] * quality
    rng.shuffle(words)
    return " ".join(words)


def graded_pairs(count: int, seed: int, noise: float) -> list[PairwiseRecord]:
    """Pairs of qualities 0..4 (the count of 'excellent'), the better one wins, except that
    a share ``noise`` of the labels is flipped."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        quality_a, quality_b = rng.sample(range(5), 2)
        outcome = "a" if quality_a > quality_b else "b"
        if rng.random() < noise:
            outcome = "b" if outcome == "a" else "a"
        records.append(
            PairwiseRecord(
                id=f"g{seed}-{index}",
                prompt="say something",
                response_a=_response(rng, quality_a),
                response_b=_response(rng, quality_b),
                outcome=outcome,
            )
        )
    return records


def test_ensemble_at_least_as_accurate_and_unsure_where_wrong(tiny_bert, cache, tmp_path):
    """Over eight seeds (small noisy training sets, so single heads err), the ensemble of
    five heads with seeds s..s+4 is at least as accurate on held-out pairs as the head
    trained with seed s on all pairs, and its members disagree more (std of P(a)) on
    the pairs it gets wrong than on those it gets right."""
    single_right, ensemble_right, spread_wrong, spread_right = [], [], [], []
    for seed in range(8):
        train_records = graded_pairs(80, 100 + seed, noise=0.3)
        held_out = graded_pairs(300, 900 + seed, noise=0.0)
        truth = np.array([record.outcome == "a" for record in held_out])
        config = quick_config(tiny_bert, cache, epochs=4, features="response", seed=seed)
        single = train_reward_model(
            train_records, config, tmp_path / f"single{seed}", log=lambda _: None
        ).model
        ensemble = train_ensemble(
            train_records, config, tmp_path / f"ensemble{seed}", 5, log=lambda _: None
        ).model
        single_rows = score_records(single, held_out)
        rows = score_records(ensemble, held_out)
        single_right.append((np.array([row["margin"] for row in single_rows]) > 0) == truth)
        right = (np.array([row["margin"] for row in rows]) > 0) == truth
        ensemble_right.append(right)
        spread = np.array([row["p_a_std"] for row in rows])
        spread_wrong.append(spread[~right])
        spread_right.append(spread[right])
    single_accuracy = np.concatenate(single_right).mean()
    ensemble_accuracy = np.concatenate(ensemble_right).mean()
    assert 0.7 < single_accuracy < 0.97, single_accuracy  # the task leaves room to improve
    assert ensemble_accuracy >= single_accuracy, (ensemble_accuracy, single_accuracy)
    wrong, right = np.concatenate(spread_wrong).mean(), np.concatenate(spread_right).mean()
    assert wrong > right > 0.01, (wrong, right)  # members do differ, most where it errs


def test_ensemble_folder_round_trips_and_compares_by_mean_probability(tiny_bert, cache, tmp_path):
    records = graded_pairs(60, 5, noise=0.2)
    config = quick_config(tiny_bert, cache, epochs=2, features="response")
    held_out = graded_pairs(40, 55, noise=0.2)
    result = train_ensemble(
        records, config, tmp_path / "rm", 3, eval_records=held_out, log=lambda _: None
    )
    assert list(result.stages) == ["member0", "member1", "member2"]
    spec = RewardModelSpec.read(tmp_path / "rm")
    # One temperature for the ensemble, fitted on held-out pairs.
    assert spec.temperature != 1.0 and result.calibration["temperature"] == spec.temperature
    assert spec.training["calibration"]["nll_after"] <= spec.training["calibration"]["nll_before"]
    assert spec.ensemble_size == 3 and spec.training["ensemble"]["seeds"] == [0, 1, 2]
    assert "accuracy" in spec.training["train_metrics"]

    loaded = RewardModel.load(tmp_path / "rm", cache_dir=cache / "cache")
    prompts = ["say something"] * 3
    responses = [_response(random.Random(seed), seed) for seed in range(3)]
    members = loaded.predict_members(prompts, responses)  # (E, N, K)
    assert members.shape == (3, 3, 1)
    np.testing.assert_allclose(loaded.score(prompts, responses), members.mean(axis=(0, 2)), 1e-6)
    np.testing.assert_allclose(
        result.model.score(prompts, responses), loaded.score(prompts, responses), 1e-6
    )
    # Each member is the model trained in members/<i>.
    for index in range(3):
        member = RewardModel.load(
            tmp_path / "rm" / "members" / str(index), cache_dir=cache / "cache"
        )
        np.testing.assert_allclose(member.score(prompts, responses), members[index, :, 0], 1e-5)

    margins = members[:, 0, 0] - members[:, 1, 0]
    t = spec.temperature
    expected = float(np.mean([1 / (1 + math.exp(-margin / t)) for margin in margins]))
    assert loaded.compare(prompts[0], responses[0], responses[1]) == pytest.approx(expected, 1e-6)
    assert expected != pytest.approx(1 / (1 + math.exp(-margins.mean() / t)), abs=1e-9)

    rows = score_records(loaded, records[:4], normalize=True)
    raw = score_records(loaded, records[:4])
    for row, plain in zip(rows, raw, strict=True):
        assert row["reward_std_a"] == pytest.approx(plain["reward_std_a"] / spec.reward_std)
        assert plain["reward_std_a"] > 0 and plain["reward_std_b"] > 0 and plain["p_a_std"] > 0
    first = records[0]
    assert raw[0]["prob_a"] == pytest.approx(
        loaded.compare(first.prompt, first.response_a, first.response_b), 1e-6
    )
    single_rows = score_records(
        loaded,
        [RatingRecord(id="r", prompt="say something", response=responses[0], ratings={"q": 1.0})],
    )
    assert single_rows[0]["reward_std"] == pytest.approx(float(members[:, 0, 0].std()), 1e-5)


def test_one_head_folder_is_unchanged(tiny_bert, cache, tmp_path):
    """A folder trained without an ensemble says ensemble_size 1, keeps ``head.*`` weights,
    and scores rows without spread fields."""
    records = graded_pairs(40, 6, noise=0.0)
    config = quick_config(tiny_bert, cache, epochs=1, features="response")
    train_reward_model(records, config, tmp_path / "rm", log=lambda _: None)
    config_json = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config_json["ensemble_size"] == 1
    model = RewardModel.load(tmp_path / "rm", cache_dir=cache / "cache")
    assert all(name.startswith("head.") for name in model.head_state())
    rows = score_records(model, records[:3])
    assert set(rows[0]) == {"id", "kind", "reward_a", "reward_b", "margin", "prob_a"}
    reward_a, reward_b = model.score(
        ["say something"] * 2, [records[0].response_a, records[0].response_b]
    )
    assert model.compare("say something", records[0].response_a, records[0].response_b) == (
        float(model.preference_probability([reward_a], [reward_b])[0])
    )

    del config_json["ensemble_size"]  # a folder from before the field: one head
    assert RewardModelSpec.from_json(config_json).ensemble_size == 1


def test_ensemble_size_is_validated(tiny_bert, cache, tmp_path):
    records = graded_pairs(10, 7, noise=0.0)
    with pytest.raises(UserInputError, match="size must be >= 2"):
        train_ensemble(records, quick_config(tiny_bert, cache), tmp_path / "a", 1)
    with pytest.raises(UserInputError, match="needs mode embedding"):
        train_ensemble(records, quick_config(tiny_bert, cache, mode="finetune"), tmp_path / "b", 2)
    spec = RewardModelSpec.read(_trained(tiny_bert, cache, tmp_path / "c"))
    values = spec.to_json()
    with pytest.raises(UserInputError, match="ensemble_size"):
        RewardModelSpec.from_json({**values, "ensemble_size": 0})
    with pytest.raises(UserInputError, match="ensemble_size"):
        RewardModelSpec.from_json({**values, "mode": "finetune", "ensemble_size": 2})


def _trained(backbone: str, cache: Path, out: Path) -> Path:
    config = quick_config(backbone, cache, epochs=1, features="response")
    train_reward_model(graded_pairs(20, 8, noise=0.0), config, out, log=lambda _: None)
    return out


def test_cli_train_ensemble_then_score(tiny_bert, cache, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    write_records(graded_pairs(60, 9, noise=0.1), data)
    common = ["--cache-dir", str(cache / "cache"), "--no-progress"]
    args = ["rm", "train", str(data), "--out", str(tmp_path / "rm"), "--backbone", tiny_bert]
    args += ["--features", "response", "--epochs", "2", "--device", "cpu", *common]
    assert main([*args, "--ensemble", "3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ensemble"] == 3 and len(summary["steps"]) == 3
    assert "accuracy" in summary["train"]
    out = tmp_path / "scores.jsonl"
    score = ["rm", "score", str(tmp_path / "rm"), str(data), "--out", str(out), *common]
    assert main(score) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 60 and all(row["reward_std_a"] >= 0 and "p_a_std" in row for row in rows)
    assert main([*args, "--mode", "finetune", "--ensemble", "2"]) == 2
    assert "--ensemble" in capsys.readouterr().err
