"""Iterative DPO (``prefkit rl --algo iterative_dpo``): rounds, their files, resume, bad input.

The runs use the tiny random-weight policy of :mod:`prefkit.align.synthetic` and a
reward that is the share of the words a..d in a completion, so a round takes well
under a second of CPU.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefkit.cli import main
from prefkit.data.records import text_key
from prefkit.errors import UserInputError
from prefkit.generate.config import SamplingConfig, sequence_seed
from prefkit.generate.engines import HFEngine, Request
from prefkit.generate.run import encode_prompt, weights_digest
from prefkit.rl.config import RLConfig
from prefkit.rl.iterative import iterative_dpo
from prefkit.rl.trainer import rl
from prefkit.train.loop import TrainConfig, TrainEvent
from rl_workers import PREAMBLE, finish_worker, start_worker
from test_generate import save_policy, write_prompts
from test_rl_trainer import prompts, rule, tiny_policy

REWARD_MODULE = """
def good_words(prompts, completions, completion_ids, **columns):
    return [sum(w in "abcd" for w in c.split()) / max(len(c.split()), 1) for c in completions]
"""
ROUND_FILES = (
    "candidates.jsonl",
    "rewards.jsonl",
    "pairs.jsonl",
    "pairs_stats.json",
    "metrics.jsonl",
    "round.json",
)
TIMING = ("generation_s", "reward_s", "train_s")


def good_words(text: str) -> float:
    """The reward module's function, written out again: the share of words a..d."""
    words = text.split()
    return sum(word in "abcd" for word in words) / max(len(words), 1)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch) -> Path:
    save_policy(tmp_path / "policy")
    write_prompts(tmp_path / "prompts.jsonl", 8)
    (tmp_path / "iter_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _cli(*extra: str) -> int:
    return main(
        ["rl", "prompts.jsonl", "--model", "policy", "--reward", "python:iter_rewards:good_words",
         "--algo", "iterative_dpo", "--max-new-tokens", "5", "--batch-size", "4", "--lr", "1e-2",
         "--beta", "0.1", "--no-progress", *extra]
    )  # fmt: skip


def test_two_rounds_keep_their_files_and_round_two_samples_round_one_model(
    workspace: Path, capsys
) -> None:
    from transformers import AutoModelForCausalLM

    assert _cli("--rounds", "2", "--out", "run") == 0
    run = workspace / "run"
    for number in (1, 2):
        folder = run / f"round-{number}"
        for name in ROUND_FILES:
            assert (folder / name).is_file(), folder / name
        assert not (folder / "checkpoints").exists()  # removed once the round is recorded
        AutoModelForCausalLM.from_pretrained(folder / "model")
    assert [line["round"] for line in jsonl(run / "rounds.jsonl")] == [1, 2]

    # round 1 samples the given policy, round 2 the model round 1 trained, whose weights moved
    first, second = (jsonl(run / f"round-{n}" / "candidates.jsonl") for n in (1, 2))
    assert first[0]["metadata"]["generation"]["model"] == "policy"
    generation = second[0]["metadata"]["generation"]
    assert generation["model"] == str(Path("run") / "round-1" / "model")
    assert generation["weights_sha256"] == weights_digest(run / "round-1" / "model")
    start = load_file(str(workspace / "policy" / "model.safetensors"))
    trained = load_file(str(run / "round-1" / "model" / "model.safetensors"))
    assert max(float((start[k] - trained[k]).abs().max()) for k in start) > 1e-3
    # ... and round 2's candidates are exactly what round 1's model samples with those seeds
    tokenizer_model = AutoModelForCausalLM.from_pretrained(run / "round-1" / "model")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "round-1" / "model")
    sampling = SamplingConfig(**{**generation["sampling"], "stop": ()})
    record = second[0]
    ids, _ = encode_prompt(
        tokenizer, record["prompt"], chat_template=True, max_prompt_length=10_000
    )
    requests = [
        Request(ids, sequence_seed(sampling.seed, text_key(record["prompt"]), index))
        for index in range(sampling.num_samples)
    ]
    again = HFEngine(tokenizer_model, tokenizer).generate(requests, sampling)
    assert [completion.text for completion in again] == record["responses"]

    # pairs: each prompt's best against its worst response by the reward, worked out here
    for number, candidates in ((1, first), (2, second)):
        folder = run / f"round-{number}"
        pairs = {pair["metadata"]["source_id"]: pair for pair in jsonl(folder / "pairs.jsonl")}
        all_rewards = []
        for record in candidates:
            rewards = [good_words(text) for text in record["responses"]]
            all_rewards.extend(rewards)
            best = max(range(len(rewards)), key=lambda index: rewards[index])
            worst = min(range(len(rewards)), key=lambda index: rewards[index])
            if rewards[best] == rewards[worst]:
                assert record["id"] not in pairs  # a tie gives no pair
                continue
            pair = pairs[record["id"]]
            assert pair["response_a"] == record["responses"][best] and pair["outcome"] == "a"
            assert pair["response_b"] == record["responses"][worst]
            assert pair["margin"] == pytest.approx(rewards[best] - rewards[worst])
        metrics = json.loads((folder / "round.json").read_text())
        assert metrics["reward"] == pytest.approx(statistics.fmean(all_rewards))
        assert metrics["reward_std"] == pytest.approx(statistics.pstdev(all_rewards))
        assert metrics["pairs"] == len(pairs) and metrics["candidates"] == 8 * 4
        assert metrics["pairs"] + metrics["skipped_prompts"] == 8
    trained_steps = [line["step"] for line in jsonl(run / "round-2" / "metrics.jsonl")]
    assert trained_steps == list(range(1, len(trained_steps) + 1)) and trained_steps
    err = capsys.readouterr().err
    assert (
        "round 2 (ran candidates,rewards,pairs,model)" in err and "model: run/round-2/model" in err
    )

    # the same command again: nothing to do, and it says so
    stamp = (run / "round-2" / "model" / "model.safetensors").stat().st_mtime_ns
    assert _cli("--rounds", "2", "--out", "run") == 0
    assert "all 2 rounds were already done" in capsys.readouterr().err
    assert (run / "round-2" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    # other settings on the same folder are refused, naming what changed
    assert _cli("--rounds", "2", "--beta", "0.2", "--out", "run") == 2
    assert "config differ" in capsys.readouterr().err


def _run(out: Path, rounds: int = 2, callbacks=(), **config):
    model, tokenizer = tiny_policy()
    return iterative_dpo(
        prompts(8),
        model,
        tokenizer,
        rule,
        out,
        RLConfig(algo="iterative_dpo", rounds=rounds, max_new_tokens=5, beta=0.1, **config),
        TrainConfig(batch_size=4, lr=1e-2, progress=False, device="cpu", checkpoint_every_steps=1),
        callbacks=callbacks,
    )


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model" / "model.safetensors"))


def _pairs(folder: Path) -> list[dict]:
    """The pairs of a round, without the generator's path (the runs have other folders)."""
    pairs = jsonl(folder / "pairs.jsonl")
    for pair in pairs:
        pair["metadata"]["generation"].pop("model")
    return pairs


def _assert_same_run(first: Path, second: Path) -> None:
    for number in (1, 2):
        one, two = first / f"round-{number}", second / f"round-{number}"
        assert _pairs(one) == _pairs(two) and _pairs(one)
        weights, other = _weights(one), _weights(two)
        for name, tensor in weights.items():
            torch.testing.assert_close(other[name], tensor, rtol=0, atol=1e-6)
        metrics = [json.loads((folder / "round.json").read_text()) for folder in (one, two)]
        for item in metrics:
            for key in (*TIMING, "generator"):
                item.pop(key)
        assert metrics[0] == metrics[1]


def test_a_removed_round_model_is_retrained_alone_to_the_uninterrupted_weights(
    tmp_path: Path,
) -> None:
    whole = _run(tmp_path / "whole")
    assert [item.ran for item in whole.rounds] == [("candidates", "rewards", "pairs", "model")] * 2

    _run(tmp_path / "cut")
    cut = tmp_path / "cut"
    kept = {
        path: path.stat().st_mtime_ns
        for path in [*(cut / "round-1").rglob("*"), *(cut / "round-2").glob("*.json*")]
        if path.is_file() and path.name not in ("round.json", "metrics.jsonl")
    }
    import shutil

    shutil.rmtree(cut / "round-2" / "model")
    resumed = _run(cut)
    assert [item.ran for item in resumed.rounds] == [(), ("model",)]
    assert not resumed.already_done
    for path, stamp in kept.items():
        assert path.stat().st_mtime_ns == stamp, path  # round 1 and round 2's data not redone
    _assert_same_run(tmp_path / "whole", cut)
    # an unfinished round 2 without its rewards scores again, and the stages after it follow
    (cut / "round-2" / "rewards.jsonl").unlink()
    (cut / "round-2" / "round.json").unlink()
    again = _run(cut)
    assert [item.ran for item in again.rounds] == [(), ("rewards", "pairs", "model")]
    _assert_same_run(tmp_path / "whole", cut)


def test_a_run_stopped_inside_round_two_continues_from_its_checkpoint(tmp_path: Path) -> None:
    """A callback that raises stops the DPO of round 2 after its first step (a checkpoint is
    written at every step); the rerun keeps round 1, round 2's data and that checkpoint."""
    _run(tmp_path / "whole")

    class Stop(Exception):
        pass

    seen: list[int] = []

    def stop_in_round_two(event: TrainEvent) -> None:
        if event.kind == "checkpoint":
            seen.append(event.global_step)
            if len(seen) == 3:  # round 1 has 2 steps; round 2's first checkpoint
                raise Stop

    with pytest.raises(Stop):
        _run(tmp_path / "cut", callbacks=[stop_in_round_two])
    assert not (tmp_path / "cut" / "round-2" / "round.json").exists()
    assert (tmp_path / "cut" / "round-2" / "checkpoints").is_dir()
    steps: list[int] = []
    resumed = _run(
        tmp_path / "cut",
        callbacks=[lambda event: steps.append(event.global_step) if event.kind == "step" else None],
    )
    assert [item.ran for item in resumed.rounds] == [(), ("model",)]
    assert steps == [2]  # only round 2's second step is trained again
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")


def test_the_original_model_as_every_round_reference(tmp_path: Path) -> None:
    """Round 1's reference is the original model either way, so round 1 (and with it round 2's
    candidates and pairs) is the same; round 2's DPO is then anchored elsewhere."""
    start = _run(tmp_path / "start")
    original = _run(tmp_path / "original", round_reference="original")
    assert [item.metrics["reference"] for item in start.rounds] == ["start", "start"]
    assert [item.metrics["reference"] for item in original.rounds] == ["original (<module>)"] * 2
    for name, tensor in _weights(tmp_path / "start" / "round-1").items():
        assert torch.equal(_weights(tmp_path / "original" / "round-1")[name], tensor), name
    assert _pairs(tmp_path / "start" / "round-2") == _pairs(tmp_path / "original" / "round-2")
    one, two = (_weights(tmp_path / run / "round-2") for run in ("start", "original"))
    assert max(float((one[name] - two[name]).abs().max()) for name in one) > 1e-5


def test_lora_rounds_merge_their_adapters_into_the_next_round_policy(tmp_path: Path) -> None:
    result = _run(tmp_path / "run", lora=True, lora_r=4)
    first = tmp_path / "run" / "round-1" / "model"
    assert not (first / "adapter_config.json").exists()  # merged: a plain model folder
    assert result.rounds[1].metrics["generator_weights_sha256"] == weights_digest(first)
    model, _ = tiny_policy()
    merged = _weights(tmp_path / "run" / "round-1")
    moved = [
        name
        for name, tensor in model.state_dict().items()
        if name in merged and not torch.equal(merged[name], tensor)
    ]
    assert moved and all(name.endswith("weight") for name in moved)


def test_max_steps_per_round_runs_past_one_epoch(tmp_path: Path) -> None:
    result = _run(tmp_path / "run", rounds=1, max_steps=5)
    lines = jsonl(tmp_path / "run" / "round-1" / "metrics.jsonl")
    pairs = result.rounds[0].metrics["pairs"]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
    per_epoch = -(-pairs // 4)
    assert [line["epoch"] for line in lines] == [step // per_epoch for step in range(5)]


def test_iterative_dpo_improves_the_rule_reward_over_rounds(tmp_path: Path) -> None:
    """Three rounds: round r's candidates are samples of the policy after r - 1 rounds, so the
    reward of round 3's candidates is that of the twice-trained policy. A flipped preference
    lowers it, no gradient leaves it within sampling noise (about 0.05 here)."""
    model, tokenizer = tiny_policy()
    result = iterative_dpo(
        prompts(32),
        model,
        tokenizer,
        rule,
        tmp_path / "run",
        RLConfig(algo="iterative_dpo", rounds=3, max_new_tokens=6, beta=0.1),
        TrainConfig(batch_size=8, lr=1e-2, epochs=2, progress=False, device="cpu"),
    )
    rewards = [item.metrics["reward"] for item in result.rounds]
    assert rewards[0] < rewards[1] < rewards[2]
    assert rewards[2] > rewards[0] + 0.25, rewards


def _constant(prompts, completions, completion_ids, **columns):
    return [0.5] * len(completions)


def _nothing(prompts, completions, completion_ids, **columns):
    return [None] * len(completions)


def test_a_round_where_every_prompt_ties_keeps_its_policy(tmp_path: Path) -> None:
    model, tokenizer = tiny_policy()
    start = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = iterative_dpo(
        prompts(8),
        model,
        tokenizer,
        _constant,
        tmp_path / "run",
        RLConfig(algo="iterative_dpo", rounds=1, max_new_tokens=5),
        TrainConfig(batch_size=4, progress=False, device="cpu"),
    )
    metrics = result.rounds[0].metrics
    assert metrics["pairs"] == 0 and metrics["skipped_prompts"] == 8
    assert metrics["train_steps"] == 0 and metrics["reward_std"] == 0
    saved = _weights(tmp_path / "run" / "round-1")
    for name, tensor in saved.items():
        assert torch.equal(tensor, start[name]), name
    with pytest.raises(UserInputError, match="the reward gave no sample of this round a value"):
        iterative_dpo(
            prompts(8),
            *tiny_policy(),
            _nothing,
            tmp_path / "none",
            RLConfig(algo="iterative_dpo", rounds=1, max_new_tokens=5),
            TrainConfig(batch_size=4, progress=False, device="cpu"),
        )


def test_bad_settings_are_clear_errors(workspace: Path, capsys) -> None:
    with pytest.raises(UserInputError, match="rounds must be an integer >= 1, got 0"):
        RLConfig(algo="iterative_dpo", rounds=0)
    with pytest.raises(UserInputError, match="num_generations must be >= 2, got 1"):
        RLConfig(algo="iterative_dpo", num_generations=1)
    with pytest.raises(UserInputError, match="rounds = 2 is not used by algo 'grpo'"):
        RLConfig(algo="grpo", rounds=2)
    with pytest.raises(UserInputError, match="listwise loss"):
        RLConfig(algo="iterative_dpo", dpo_loss="lipo_lambda")
    with pytest.raises(UserInputError, match="num_iterations = 2 is not used by iterative_dpo"):
        RLConfig(algo="iterative_dpo", num_iterations=2)
    with pytest.raises(UserInputError, match="kl_estimator = 'k3' is not used"):
        RLConfig(algo="iterative_dpo", kl_estimator="k3")
    with pytest.raises(UserInputError, match="call prefkit.rl.iterative.iterative_dpo"):
        rl(["a :"], *tiny_policy(), rule, workspace / "x", RLConfig(algo="iterative_dpo"))
    assert _cli("--rounds", "0", "--out", "bad") == 2
    assert "rounds must be an integer >= 1, got 0" in capsys.readouterr().err
    assert _cli("--num-generations", "1", "--out", "bad") == 2
    assert "num_generations must be >= 2, got 1" in capsys.readouterr().err
    assert _cli("--ref", "policy", "--round-reference", "original", "--out", "bad") == 2
    assert "not both" in capsys.readouterr().err
    assert not os.path.exists(workspace / "bad" / "round-1")


KILL_WORKER = PREAMBLE + textwrap.dedent(
    """
    from prefkit.rl.iterative import iterative_dpo
    result = iterative_dpo(prompts(12), model, tokenizer, rule, sys.argv[1],
        RLConfig(algo="iterative_dpo", rounds=2, max_new_tokens=5, beta=0.1),
        TrainConfig(batch_size=2, lr=1e-2, progress=False, device="cpu",
                    checkpoint_every_steps=1, keep_checkpoints=None),
        callbacks=[slow])
    print("ran", [list(item.ran) for item in result.rounds])
    """
)


def _start(out_dir: Path, pause: float) -> subprocess.Popen:
    return start_worker(KILL_WORKER, out_dir, pause)


def test_a_sigkilled_run_resumes_inside_round_two_to_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    """SIGKILL (no cleanup) once round 2's DPO has a complete step-2 checkpoint; the rerun keeps
    round 1 and round 2's data, resumes the DPO there and ends as the run never killed."""
    from prefkit.train.checkpoint import complete_checkpoints

    whole = finish_worker(_start(tmp_path / "whole", 0.0))
    assert "ran [['candidates', 'rewards', 'pairs', 'model']" in whole

    killed = _start(tmp_path / "cut", 0.3)
    checkpoints = tmp_path / "cut" / "round-2" / "checkpoints"
    deadline = time.monotonic() + 240
    while not any(path.name == "step-2" for path in complete_checkpoints(checkpoints)):
        assert killed.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "no step-2 checkpoint in round 2 within 240 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "round-2" / "round.json").exists()
    assert "ran [[], ['model']]" in finish_worker(_start(tmp_path / "cut", 0.0))
    _assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert jsonl(tmp_path / "cut" / "round-2" / "metrics.jsonl") != []
    steps = [line["step"] for line in jsonl(tmp_path / "cut" / "round-2" / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))
