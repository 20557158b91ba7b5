"""``prefkit align`` end to end on a tiny local model: outputs, resume, errors."""

from __future__ import annotations

import json
import random
import re

import pytest

from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
from prefkit.cli import main


@pytest.fixture()
def workspace(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    model.save_pretrained(tmp_path / "base", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "base")
    rng = random.Random(0)
    with open(tmp_path / "pairs.jsonl", "w") as handle:
        for _ in range(8):
            row = {
                "prompt": random_prompt(rng),
                "chosen": random_completion(rng),
                "rejected": random_completion(rng),
            }
            handle.write(json.dumps(row) + "\n")
    return tmp_path


def _args(workspace, *extra):
    return [
        "align",
        str(workspace / "pairs.jsonl"),
        "--model",
        str(workspace / "base"),
        "--out",
        str(workspace / "out"),
        "--batch-size",
        "4",
        "--max-length",
        "32",
        "--max-prompt-length",
        "16",
        "--ref-cache-dir",
        str(workspace / "cache"),
        "--quiet",
        *extra,
    ]


def test_align_command_trains_saves_and_reuses_the_reference_cache(workspace, capsys):
    from transformers import AutoModelForCausalLM

    assert main(_args(workspace, "--loss", "sigmoid", "--loss-args", "beta=0.2")) == 0
    lines = (workspace / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "reward_accuracy" in json.loads(lines[0])
    AutoModelForCausalLM.from_pretrained(workspace / "out" / "model", use_safetensors=True)
    assert "computed" in capsys.readouterr().err
    # Run again in the same folder: the finished run resumes (nothing left) and the cache is read.
    assert main(_args(workspace)) == 0
    assert "read from cache" in capsys.readouterr().err


def test_align_command_reports_bad_loss_arguments(workspace, capsys):
    assert main(_args(workspace, "--loss", "simpo", "--loss-args", "tau=1")) == 2
    assert "does not take" in capsys.readouterr().err


def _write_jsonl(path, rows):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _lines(workspace):
    return [
        json.loads(line) for line in (workspace / "out" / "metrics.jsonl").read_text().splitlines()
    ]


def test_align_command_trains_bco_on_thumbs_with_a_held_out_fraction(workspace, capsys):
    rng = random.Random(1)
    _write_jsonl(
        workspace / "thumbs.jsonl",
        [
            {
                "prompt": random_prompt(rng),
                "completion": random_completion(rng),
                "label": index % 2 == 0,
            }
            for index in range(10)
        ],
    )
    args = _args(workspace, "--loss", "bco", "--eval-fraction", "0.2", "--epochs", "2")
    args[1] = str(workspace / "thumbs.jsonl")
    assert main(args) == 0
    lines = _lines(workspace)
    train_lines = [line for line in lines if line["split"] == "train"]
    eval_lines = [line for line in lines if line["split"] == "eval"]
    assert len(train_lines) == 4 and [line["step"] for line in eval_lines] == [2, 4]
    assert train_lines[0]["reward_shift"] == 0.0 and train_lines[-1]["reward_shift"] != 0.0
    assert eval_lines[0]["num_examples"] == 2 and "reward_margin" in eval_lines[0]
    err = capsys.readouterr().err
    assert "evaluation: 2 records -> 2 examples" in err and "last evaluation: loss" in err


def test_align_command_trains_bco_pair_with_eval_data_every_step(workspace, capsys):
    rng = random.Random(2)
    _write_jsonl(
        workspace / "eval.jsonl",
        [
            {
                "prompt": random_prompt(rng),
                "chosen": random_completion(rng),
                "rejected": random_completion(rng),
            }
            for _ in range(3)
        ],
    )
    assert (
        main(
            _args(
                workspace,
                "--loss",
                "bco_pair",
                "--eval-data",
                str(workspace / "eval.jsonl"),
                "--eval-every",
                "1",
                "--early-stopping-patience",
                "5",
            )
        )
        == 0
    )
    eval_lines = [line for line in _lines(workspace) if line["split"] == "eval"]
    assert [line["step"] for line in eval_lines] == [1, 2]
    for name in ("loss", "reward_accuracy", "chosen_rewards", "rejected_rewards", "reward_margin"):
        assert name in eval_lines[0]
    assert eval_lines[0]["num_examples"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--eval-fraction", "1.5"), r"eval_fraction must be a number in \[0, 1\)"),
        (("--eval-fraction", "0.01"), "holds out no record"),
        (("--eval-fraction", "0.5", "--eval-data", "pairs.jsonl"), "both given"),
        (("--early-stopping-patience", "1"), "no evaluation set"),
    ],
)
def test_align_command_explains_bad_evaluation_settings(workspace, capsys, extra, message):
    extra = [str(workspace / part) if part.endswith(".jsonl") else part for part in extra]
    assert main(_args(workspace, *extra)) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (workspace / "out" / "checkpoints").exists()


def test_align_help_describes_the_evaluation_options(capsys):
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--eval-data PATH held-out feedback data" in text
    assert "--eval-fraction X Hold out this fraction of the records" in text
    assert "--eval-every epoch|N" in text and "--early-stopping-patience N" in text


def test_eval_every_option_takes_the_word_epoch_or_a_number_of_steps(capsys):
    import argparse

    from prefkit.config import add_dataclass_arguments
    from prefkit.train.loop import TrainConfig

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)
    assert parser.parse_args([]).eval_every == "epoch"
    assert parser.parse_args(["--eval-every", "epoch"]).eval_every == "epoch"
    assert parser.parse_args(["--eval-every", "3"]).eval_every == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval-every", "soon"])
    assert "expected 'epoch' or int, found 'soon'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--loss", "simpo", "--ref", "base"), "uses no reference model"),
        (("--mixed-precision", "bf16", "--device", "cpu"), "bf16 is far slower"),
        (("--loss", "sigmoid", "--loss-args", "beta=-1"), "beta must be a finite number"),
    ],
)
def test_align_command_prints_a_user_mistake_as_one_line(workspace, capsys, extra, message):
    """A mistake found while training (not while parsing) is the user's: one line, status 2."""
    extra = [str(workspace / part) if part == "base" else part for part in extra]
    assert main(_args(workspace, *extra)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("prefkit: error:")]
    assert len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize(
    ("function", "error"),
    [
        ("align", ValueError("record 'r1' points at slot 3 of a 2-slot table")),
        ("align", RuntimeError("CUDA error: an illegal memory access")),
        ("check_evaluation_settings", TypeError("unsupported operand type(s)")),
    ],
)
def test_align_command_lets_a_bug_show_its_traceback(workspace, monkeypatch, function, error):
    """An exception the library did not raise as a user error propagates out of main, so
    the traceback is shown, whatever words its message holds."""
    import prefkit.align.trainer

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(prefkit.align.trainer, function, broken)
    with pytest.raises(type(error), match=re.escape(str(error))):
        main(_args(workspace))
