"""RL training processes for the tests that SIGKILL a run and start it again.

A worker script is :data:`PREAMBLE` followed by its own call: the preamble sets one torch
thread, builds the tiny synthetic policy (``model``, ``tokenizer``) and defines ``rule``
(the synthetic rule reward), ``slow`` (a callback that sleeps ``sys.argv[2]`` seconds after
each step, so that a test has time to kill the run) and ``prompts(count)``. The run's
output folder is ``sys.argv[1]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PREAMBLE = textwrap.dedent(
    """
    import random, sys, time
    import torch
    torch.set_num_threads(1)
    from prefkit.align.synthetic import build_model, build_tokenizer, good_fraction, random_prompt
    from prefkit.rl.config import RLConfig
    from prefkit.train.loop import TrainConfig

    def rule(prompts, completions, completion_ids, **columns):
        return [good_fraction(text) for text in completions]

    def slow(event):
        if event.kind == "step":
            time.sleep(float(sys.argv[2]))

    def prompts(count):
        rng = random.Random(0)
        return [random_prompt(rng, 1 + index % 3) for index in range(count)]

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    """
)


def start_worker(script: str, out_dir: Path, pause: float) -> subprocess.Popen:
    """``script`` (the preamble included) in its own process, single-process training."""
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    return subprocess.Popen(
        [sys.executable, "-c", script, str(out_dir), str(pause)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_worker(process: subprocess.Popen) -> str:
    """The worker's output once it has exited with 0 (within 300 s)."""
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]
    return output
