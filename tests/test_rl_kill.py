"""A training process killed with SIGKILL resumes to the weights of a run that was never killed.

The worker trains grpo for 12 steps (checkpoints every 2, two iterations per
generation batch) and sleeps 0.2 s after each step, so the test can kill it
(SIGKILL: no cleanup, no handler) once the step-4 checkpoint is complete. Run
again with the same arguments, it continues from its newest complete checkpoint;
its final model and every logged number but the timings must equal those of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from safetensors.torch import load_file

from prefkit.train.checkpoint import complete_checkpoints

WORKER = textwrap.dedent(
    """
    import random, sys, time
    import torch
    torch.set_num_threads(1)
    from prefkit.align.synthetic import build_model, build_tokenizer, good_fraction, random_prompt
    from prefkit.rl.config import RLConfig
    from prefkit.rl.trainer import rl
    from prefkit.train.loop import TrainConfig

    def rule(prompts, completions, completion_ids, **columns):
        return [good_fraction(text) for text in completions]

    def slow(event):
        if event.kind == "step":
            time.sleep(float(sys.argv[2]))

    rng = random.Random(0)
    prompts = [random_prompt(rng, 1 + index % 3) for index in range(8)]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    result = rl(prompts, model, tokenizer, rule, sys.argv[1],
       RLConfig(algo="grpo", max_new_tokens=5, max_steps=12, num_iterations=2, beta=0.05),
       TrainConfig(batch_size=4, lr=1e-2, progress=False, device="cpu", checkpoint_every_steps=2,
                   keep_checkpoints=None),
       callbacks=[slow])
    print("resumed from", result.train.resumed_from)
    """
)
TIMING = ("generation_s", "reward_s", "examples_per_s")


def _start(out_dir: Path, pause: float) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(out_dir), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output


def _without_timing(path: Path) -> list[dict]:
    return [
        {key: value for key, value in json.loads(line).items() if key not in TIMING}
        for line in path.read_text().splitlines()
    ]


def test_sigkilled_run_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    assert "resumed from None" in _finish(_start(tmp_path / "whole", 0.0))

    killed = _start(tmp_path / "cut", 0.2)
    deadline = time.monotonic() + 240
    while not any(
        path.name == "step-4" for path in complete_checkpoints(tmp_path / "cut" / "checkpoints")
    ):
        assert killed.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "no step-4 checkpoint within 240 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "model").exists()
    output = _finish(_start(tmp_path / "cut", 0.0))
    assert "resumed from None" not in output and "checkpoints/step-" in output

    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name, tensor in whole.items():
        assert (tensor == resumed[name]).all(), name
    expected = _without_timing(tmp_path / "whole" / "metrics.jsonl")
    assert _without_timing(tmp_path / "cut" / "metrics.jsonl") == expected
    assert len(expected) == 12
