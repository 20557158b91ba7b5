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
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from safetensors.torch import load_file

from prefkit.train.checkpoint import complete_checkpoints
from rl_workers import PREAMBLE, finish_worker, start_worker

WORKER = PREAMBLE + textwrap.dedent(
    """
    from prefkit.rl.trainer import rl
    result = rl(prompts(8), model, tokenizer, rule, sys.argv[1],
       RLConfig(algo="grpo", max_new_tokens=5, max_steps=12, num_iterations=2, beta=0.05),
       TrainConfig(batch_size=4, lr=1e-2, progress=False, device="cpu", checkpoint_every_steps=2,
                   keep_checkpoints=None),
       callbacks=[slow])
    print("resumed from", result.train.resumed_from)
    """
)
TIMING = ("generation_s", "reward_s", "examples_per_s")


def _start(out_dir: Path, pause: float) -> subprocess.Popen:
    return start_worker(WORKER, out_dir, pause)


def _without_timing(path: Path) -> list[dict]:
    return [
        {key: value for key, value in json.loads(line).items() if key not in TIMING}
        for line in path.read_text().splitlines()
    ]


def test_sigkilled_run_resumes_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    assert "resumed from None" in finish_worker(_start(tmp_path / "whole", 0.0))

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
    output = finish_worker(_start(tmp_path / "cut", 0.0))
    assert "resumed from None" not in output and "checkpoints/step-" in output

    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name, tensor in whole.items():
        assert (tensor == resumed[name]).all(), name
    expected = _without_timing(tmp_path / "whole" / "metrics.jsonl")
    assert _without_timing(tmp_path / "cut" / "metrics.jsonl") == expected
    assert len(expected) == 12
