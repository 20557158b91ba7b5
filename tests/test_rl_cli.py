"""``prefkit rl``: a python:module:function reward, outputs, a rerun that finds the run done, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.cli import main
from test_generate import save_policy, write_prompts
from test_rl_rewards import ensemble_folder  # noqa: F401 (a module fixture)

REWARD_MODULE = """
def good_words(prompts, completions, completion_ids, **columns):
    return [sum(w in "abcd" for w in c.split()) / max(len(c.split()), 1) for c in completions]
"""


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    """A folder with a policy, prompts and a reward module, as the current directory."""
    save_policy(tmp_path / "policy")
    write_prompts(tmp_path / "prompts.jsonl", 12)
    (tmp_path / "cli_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _rl(*extra: str) -> int:
    return main(
        [
            "rl",
            "prompts.jsonl",
            "--model",
            "policy",
            "--reward",
            "python:cli_rewards:good_words",
            "--max-new-tokens",
            "4",
            "--batch-size",
            "4",
            "--no-progress",
            *extra,
        ]
    )


def test_rl_command_trains_writes_metrics_and_a_loadable_model(workspace: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM

    assert _rl("--algo", "rloo", "--max-steps", "3", "--out", "run") == 0
    err = capsys.readouterr().err
    assert "3 steps; 12 prompts" in err and "model: run/model" in err
    lines = [
        json.loads(line) for line in (workspace / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert "reward/python:cli_rewards:good_words" in lines[0]
    AutoModelForCausalLM.from_pretrained(workspace / "run" / "model")
    # the same command again finds the finished run (its last checkpoint) and trains nothing more
    assert _rl("--algo", "rloo", "--max-steps", "3", "--out", "run") == 0
    assert len((workspace / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_rl_command_errors_are_one_line_and_name_the_problem(workspace: Path, capsys) -> None:
    assert _rl("--algo", "rloo", "--scale-rewards", "batch", "--out", "bad") == 2
    assert "scale_rewards = 'batch' is not used by algo 'rloo'" in capsys.readouterr().err
    assert _rl("--algo", "grpo", "--reward-weights", "1,2", "--out", "bad") == 2
    assert "2 weights for 1 --reward specs" in capsys.readouterr().err
    code = main(
        ["rl", "prompts.jsonl", "--model", "policy", "--reward", "python:cli_rewards:nope",
         "--out", "bad", "--no-progress"]
    )  # fmt: skip
    assert code == 2
    assert "cli_rewards has no function 'nope'" in capsys.readouterr().err


def test_uncertainty_penalty_reaches_the_ensemble_reward(
    workspace: Path,
    ensemble_folder: Path,  # noqa: F811 (the fixture imported above)
    capsys,
) -> None:
    """The same first-step samples scored by a 3-member ensemble: with --uncertainty-penalty 1
    every reward is mean - std of the members, so the step's mean reward is lower."""
    rewards = {}
    for penalty in ("0", "1"):
        out = f"ensemble-{penalty}"
        code = main(
            ["rl", "prompts.jsonl", "--model", "policy", "--reward", str(ensemble_folder),
             "--uncertainty-penalty", penalty, "--max-new-tokens", "4", "--batch-size", "4",
             "--max-steps", "1", "--algo", "rloo", "--out", out, "--no-progress"]
        )  # fmt: skip
        assert code == 0
        (line,) = (workspace / out / "metrics.jsonl").read_text().splitlines()
        rewards[penalty] = json.loads(line)["reward"]
    assert rewards["1"] < rewards["0"] - 1e-4
