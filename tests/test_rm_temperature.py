"""Temperature scaling at the end of ``rm train``: T is fitted on the held-out pairs, saved
in config.json, and read by ``compare``, ``score_records`` (``prob_a``) and ``prefkit eval``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from prefkit.cli import main
from prefkit.data.records import PairwiseRecord
from prefkit.eval.evaluate import evaluate
from prefkit.eval.metrics import fit_temperature
from prefkit.eval.scorers import PrefkitRewardModelScorer
from prefkit.rm.model import RewardModel
from prefkit.rm.scoring import score_records
from prefkit.rm.train import train_reward_model
from test_rm_train import keyword_pairs, make_tiny_bert, quick_config


def noisy_pairs(count: int, seed: int, flip: float = 0.3) -> list[PairwiseRecord]:
    """Keyword pairs with a share ``flip`` of the outcomes reversed: a model fitted hard to
    such data is over-confident on held-out pairs."""
    rng = random.Random(seed + 1000)
    records = keyword_pairs(count, seed)
    for index, record in enumerate(records):
        if rng.random() < flip:
            flipped = "b" if record.outcome == "a" else "a"
            records[index] = PairwiseRecord(
                id=record.id,
                prompt=record.prompt,
                response_a=record.response_a,
                response_b=record.response_b,
                outcome=flipped,
            )
    return records


def held_out_margins(model: RewardModel, records: list[PairwiseRecord]) -> np.ndarray:
    prompts = [record.prompt for record in records]
    rewards_a = model.score(prompts, [record.response_a for record in records])
    rewards_b = model.score(prompts, [record.response_b for record in records])
    return rewards_a - rewards_b


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, list[PairwiseRecord]]:
    root = tmp_path_factory.mktemp("temperature")
    backbone = make_tiny_bert(root / "bert")
    config = quick_config(
        backbone, root, epochs=30, lr=1e-2, features="response", dropout=0.0, head="mlp"
    )
    eval_records = noisy_pairs(200, seed=7)
    lines: list[str] = []
    train_reward_model(
        noisy_pairs(200, seed=5), config, root / "rm", eval_records=eval_records, log=lines.append
    )
    assert any(line.startswith("temperature: T = ") for line in lines), lines
    return root / "rm", root, eval_records


def test_fitted_temperature_is_saved_and_used_by_compare_and_score(trained) -> None:
    folder, root, eval_records = trained
    model = RewardModel.load(folder, cache_dir=root / "cache")
    temperature = model.spec.temperature
    summary = json.loads((folder / "config.json").read_text())
    assert summary["format_version"] >= 3 and summary["temperature"] == temperature
    calibration = summary["training"]["calibration"]
    assert calibration["temperature"] == temperature and calibration["n"] == 200
    # The saved T is the fit of the loaded model's own held-out margins.
    margins = held_out_margins(model, eval_records)
    outcomes = [record.outcome for record in eval_records]
    refit = fit_temperature(margins, np.zeros(len(margins)), outcomes)
    assert refit["temperature"] == pytest.approx(temperature, rel=1e-4)
    # Trained hard on 30% flipped labels, the raw margins are over-confident.
    assert temperature > 1.5
    assert calibration["nll_after"] < calibration["nll_before"]
    assert calibration["after"]["ece"] < calibration["before"]["ece"]
    assert calibration["after"]["brier"] < calibration["before"]["brier"]

    record = eval_records[0]
    margin = margins[0]
    expected = 1.0 / (1.0 + math.exp(-margin / temperature))
    compared = model.compare(record.prompt, record.response_a, record.response_b)
    assert compared == pytest.approx(expected, abs=1e-6)
    assert abs(compared - 1.0 / (1.0 + math.exp(-margin))) > 1e-3  # not the raw sigmoid
    for normalize in (False, True):
        rows = score_records(model, eval_records[:5], normalize=normalize)
        probabilities = [row["prob_a"] for row in rows]
        np.testing.assert_allclose(
            probabilities, 1.0 / (1.0 + np.exp(-margins[:5] / temperature)), atol=1e-6
        )


def test_eval_calibrates_with_the_model_temperature(trained, monkeypatch) -> None:
    folder, root, eval_records = trained
    monkeypatch.setenv("PREFKIT_CACHE", str(root / "prefkit-cache"))
    scorer = PrefkitRewardModelScorer(folder, device="cpu", progress=False)
    temperature = scorer.model.spec.temperature
    run = evaluate([scorer], eval_records, n_resamples=0)
    report = run.to_json()["models"][0]
    training = json.loads((folder / "config.json").read_text())["training"]["calibration"]
    assert report["calibration"]["temperature"] == pytest.approx(temperature)
    assert report["calibration"]["ece"] == pytest.approx(training["after"]["ece"], abs=1e-6)
    assert report["calibration"]["brier"] == pytest.approx(training["after"]["brier"], abs=1e-6)
    # The same pairs at T = 1: the calibration before scaling that rm train saw.
    before = report["calibration"]["before_scaling"]
    assert before["temperature"] == 1.0
    assert before["ece"] == pytest.approx(training["before"]["ece"], abs=1e-6)
    assert before["ece"] > report["calibration"]["ece"]
    for ours, theirs in zip(before["bins"], training["before"]["bins"], strict=True):
        assert ours["n"] == theirs["n"]

    # The HTML report draws both reliability curves, each through its own bins.
    from prefkit.eval.report import render_report

    page = render_report(run)
    assert page.count('<path class="reliability-before"') == 1
    assert page.count('<path class="reliability"') == 1
    filled = [entry for entry in before["bins"] if entry["n"] > 0]
    assert page.count('<circle class="reliability-before"') == len(filled)
    assert f"before temperature scaling, T = 1 (ECE {before['ece']:.3f}" in page
    first = filled[0]
    assert (
        f"{first['n']:,} pairs, mean confidence {first['mean_predicted']:.3f}, share where the "
        f"preferred response won {first['observed_frequency']:.3f}" in page
    )


def test_no_fit_temperature_keeps_t_1(tmp_path) -> None:
    backbone = make_tiny_bert(tmp_path / "bert")
    config = quick_config(backbone, tmp_path, epochs=1, features="response", fit_temperature=False)
    lines: list[str] = []
    result = train_reward_model(
        noisy_pairs(40, seed=1),
        config,
        tmp_path / "rm",
        eval_records=noisy_pairs(40, seed=2),
        log=lines.append,
    )
    assert result.model.spec.temperature == 1.0 and result.calibration is None
    assert "temperature: not fitted (--no-fit-temperature); T = 1" in lines
    saved = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert saved["temperature"] == 1.0 and saved["training"]["calibration"] is None


def test_cli_prints_the_calibration_before_and_after(tmp_path, capsys) -> None:
    backbone = make_tiny_bert(tmp_path / "bert")
    for name, records in (("train", noisy_pairs(60, seed=3)), ("eval", noisy_pairs(60, seed=4))):
        with (tmp_path / f"{name}.jsonl").open("w") as handle:
            for record in records:
                handle.write(json.dumps(record.to_dict()) + "\n")
    arguments = [
        "rm", "train", str(tmp_path / "train.jsonl"), "--eval-data", str(tmp_path / "eval.jsonl"),
        "--out", str(tmp_path / "rm"), "--backbone", backbone, "--features", "response",
        "--cache-dir", str(tmp_path / "cache"), "--epochs", "2", "--no-progress",
    ]  # fmt: skip
    assert main(arguments) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    calibration = summary["calibration"]
    assert set(calibration) == {"temperature", "n", "nll", "ece", "brier"}
    assert calibration["n"] == 60 and calibration["nll"][1] <= calibration["nll"][0]
    assert "temperature: T = " in captured.err
    assert main([*arguments[:-1], "--no-fit-temperature", "--no-progress"]) == 0
    assert "calibration" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_fraction_holds_out_a_seeded_split_and_fits_t_on_it(tmp_path) -> None:
    from prefkit.data.split import split_eval_records

    backbone = make_tiny_bert(tmp_path / "bert")
    records = noisy_pairs(240, seed=11)
    config = quick_config(
        backbone,
        tmp_path,
        epochs=30,
        lr=1e-2,
        features="response",
        dropout=0.0,
        head="mlp",
        eval_fraction=0.25,
    )
    lines: list[str] = []
    result = train_reward_model(records, config, tmp_path / "rm", log=lines.append)
    assert "held out 60 of 240 records at random (--eval-fraction 0.25, seed 0)" in lines
    training, held_out = split_eval_records(records, 0.25, config.loop.seed)
    saved = json.loads((tmp_path / "rm" / "config.json").read_text())["training"]
    # Trained on the other 180 only; T fitted on the 60 held out, as an explicit --eval-data
    # of those 60 would.
    assert saved["records"] == 180 and saved["calibration"]["n"] == 60
    model = RewardModel.load(tmp_path / "rm", cache_dir=tmp_path / "cache")
    margins = held_out_margins(model, held_out)
    outcomes = [record.outcome for record in held_out]
    refit = fit_temperature(margins, np.zeros(len(margins)), outcomes)
    assert refit["temperature"] == pytest.approx(result.model.spec.temperature, rel=1e-4)
    assert result.model.spec.temperature > 1.5  # over-confident on 30% flipped labels
    # Never worse than T = 1 on the held-out pairs, and accuracy is unchanged.
    calibration = saved["calibration"]
    assert calibration["nll_after"] <= calibration["nll_before"]
    probabilities = [row["prob_a"] for row in score_records(model, held_out)]
    assert np.array_equal(np.array(probabilities) > 0.5, margins > 0)
    # The same seed holds out the same records: a second run fits the same T.
    again = train_reward_model(records, config, tmp_path / "rm-again", log=lambda _: None)
    assert again.model.spec.temperature == pytest.approx(result.model.spec.temperature)


def test_eval_fraction_and_eval_data_together_are_refused(tmp_path) -> None:
    backbone = make_tiny_bert(tmp_path / "bert")
    config = quick_config(backbone, tmp_path, epochs=1, features="response", eval_fraction=0.2)
    with pytest.raises(ValueError, match="both given"):
        train_reward_model(
            noisy_pairs(20, seed=1), config, tmp_path / "rm", eval_records=noisy_pairs(5, seed=2)
        )
    with pytest.raises(ValueError, match=r"eval_fraction must be a number in \[0, 1\)"):
        quick_config(backbone, tmp_path, eval_fraction=1.0)
