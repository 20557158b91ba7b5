"""``prefkit align`` end to end on a tiny local model: outputs, resume, errors."""

from __future__ import annotations

import json
import random

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
            row = {"prompt": random_prompt(rng), "chosen": random_completion(rng),
                   "rejected": random_completion(rng)}
            handle.write(json.dumps(row) + "\n")
    return tmp_path


def _args(workspace, *extra):
    return ["align", str(workspace / "pairs.jsonl"), "--model", str(workspace / "base"),
            "--out", str(workspace / "out"), "--batch-size", "4", "--max-length", "32",
            "--max-prompt-length", "16", "--ref-cache-dir", str(workspace / "cache"), "--quiet",
            *extra]


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
