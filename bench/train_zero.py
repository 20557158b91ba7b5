"""Sharded training (``--zero-stage``) on two CPU processes (gloo): memory held and speed.

Model: an MLP of 8 square layers (``--width`` 256: 526,593 float32 parameters in 18
tensors), trained by :func:`prefkit.train.loop.train` with AdamW on random regression
data (``--examples`` 1024 in global batches of 64, one epoch: 16 optimizer steps), one
torch thread per process, gradient clipping at 1. Each run is two processes with the
environment ``torchrun`` gives them, at ``zero_stage`` 0, 1 and 2; the set is repeated
``--repeats`` times with the stages interleaved, after one unrecorded warm-up run, and
medians are reported.

Per rank and run: the elements of the AdamW state tensors the rank holds at the end
(``TrainResult.optimizer_state_elements``; bytes = 4 x elements) and the most gradient
elements it held at an optimizer step (after the reduction), counted on the rank;
steps/s from the first to the last step event (the first step's set-up left out), by
the wall clock and by the process's CPU time (less swayed by other work on a shared
machine; time spent waiting in a collective is not CPU time); the time of the
end-of-epoch checkpoint (sharded runs gather the optimizer state onto rank
0 for it); the process's peak RSS (torch and Python included, so the state's share of
it is small at this size).

Usage: ``python bench/train_zero.py [--repeats 3] [--width 256] [--examples 1024]
[--out bench/results/train_zero.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

STAGES = (0, 1, 2)


class RegressionTask:
    """Squared error of a scalar target on random inputs (the loop's TrainTask)."""

    def __init__(self, num_examples: int, width: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(num_examples, width, generator=generator)  # (N, width)
        self.targets = self.inputs[:, :8].sum(dim=1)  # (N,)

    def example_lengths(self) -> list[int]:
        return [1] * len(self.targets)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[indices], "targets": self.targets[indices]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        predictions = model(batch["inputs"]).squeeze(-1)  # (B,)
        return (predictions - batch["targets"]).square(), {}


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def worker(out_dir: Path, zero_stage: int, width: int, examples: int) -> None:
    """One rank of one run; writes ``rank-R.json``."""
    from prefkit.train.loop import TrainConfig, train

    torch.set_num_threads(1)
    step_times: list[float] = []
    step_cpu_times: list[float] = []
    checkpoint_times: list[float] = []

    def clock(event) -> None:
        if event.kind == "step":
            step_times.append(time.perf_counter())
            step_cpu_times.append(time.process_time())
        elif event.kind == "checkpoint":
            checkpoint_times.append(time.perf_counter())

    config = TrainConfig(
        epochs=1,
        batch_size=64,
        lr=1e-3,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        group_by_length=False,
        device="cpu",
        progress=False,
        zero_stage=zero_stage,
    )
    result = train(
        make_model(width),
        RegressionTask(examples, width),
        config,
        out_dir / "run",
        callbacks=[clock],
    )
    rank = int(os.environ.get("RANK", "0"))
    record = {
        "optimizer_state_elements": result.optimizer_state_elements,
        "gradient_elements": result.gradient_elements,
        "steps": result.global_step,
        "steps_per_s": (len(step_times) - 1) / (step_times[-1] - step_times[0]),
        "steps_per_cpu_s": (len(step_times) - 1) / (step_cpu_times[-1] - step_cpu_times[0]),
        "checkpoint_s": checkpoint_times[-1] - step_times[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (out_dir / f"rank-{rank}.json").write_text(json.dumps(record))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_pair(zero_stage: int, width: int, examples: int) -> list[dict]:
    """Two processes at ``zero_stage``; their records, rank 0 first."""
    with tempfile.TemporaryDirectory(prefix="train-zero-") as folder:
        out_dir = Path(folder)
        port = str(free_port())
        processes = []
        for rank in range(2):
            env = {
                **os.environ,
                "WORLD_SIZE": "2",
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "OMP_NUM_THREADS": "1",
            }
            arguments = [__file__, "--worker", str(out_dir), str(zero_stage)]
            arguments += ["--width", str(width), "--examples", str(examples)]
            processes.append(
                subprocess.Popen(
                    [sys.executable, *arguments],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for rank, process in enumerate(processes):
            output, _ = process.communicate(timeout=600)
            if process.returncode != 0:
                raise SystemExit(f"stage {zero_stage} rank {rank} failed:\n{output[-3000:]}")
        return [json.loads((out_dir / f"rank-{rank}.json").read_text()) for rank in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--out", default="bench/results/train_zero.json")
    parser.add_argument("--worker", nargs=2, metavar=("OUT_DIR", "ZERO_STAGE"))
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), args.width, args.examples)
        return

    runs: dict[int, list[list[dict]]] = {stage: [] for stage in STAGES}
    load_before = os.getloadavg()
    run_pair(0, args.width, args.examples)  # warm-up (file cache, imports), not recorded
    for repeat in range(args.repeats):
        for stage in STAGES:
            runs[stage].append(run_pair(stage, args.width, args.examples))
            print(f"round {repeat + 1}, stage {stage}: {runs[stage][-1]}", file=sys.stderr)
    num_parameters = sum(p.numel() for p in make_model(args.width).parameters())

    def median(stage: int, rank: int, name: str) -> float:
        return statistics.median(run[rank][name] for run in runs[stage])

    stages = {}
    for stage in STAGES:
        per_rank = [
            {
                "optimizer_state_mib": runs[stage][0][rank]["optimizer_state_elements"] * 4 / 2**20,
                "optimizer_state_elements": runs[stage][0][rank]["optimizer_state_elements"],
                "gradient_elements": runs[stage][0][rank]["gradient_elements"],
                "steps_per_s_median": median(stage, rank, "steps_per_s"),
                "steps_per_cpu_s_median": median(stage, rank, "steps_per_cpu_s"),
                "checkpoint_s_median": median(stage, rank, "checkpoint_s"),
                "peak_rss_mib_median": median(stage, rank, "peak_rss_mib"),
            }
            for rank in range(2)
        ]
        stages[f"zero_stage_{stage}"] = {
            "per_rank": per_rank,
            "steps_per_s_all_repeats": [run[0]["steps_per_s"] for run in runs[stage]],
        }
    base = stages["zero_stage_0"]["per_rank"][0]
    for stage in STAGES:
        rank_0 = stages[f"zero_stage_{stage}"]["per_rank"][0]
        largest_state = max(
            rank["optimizer_state_elements"] for rank in stages[f"zero_stage_{stage}"]["per_rank"]
        )
        stages[f"zero_stage_{stage}"]["ratios_to_stage_0"] = {
            "largest_rank_optimizer_state": largest_state / base["optimizer_state_elements"],
            "rank_0_steps_per_s": rank_0["steps_per_s_median"] / base["steps_per_s_median"],
            "rank_0_steps_per_cpu_s": rank_0["steps_per_cpu_s_median"]
            / base["steps_per_cpu_s_median"],
        }
    results = {
        "benchmark": "bench/train_zero.py",
        "setup": {
            "processes": 2,
            "backend": "gloo (CPU)",
            "torch_threads_per_process": 1,
            "model": f"MLP, 8 x Linear({args.width}, {args.width}) + Linear({args.width}, 1)",
            "trainable_parameters": num_parameters,
            "examples": args.examples,
            "batch_size": 64,
            "steps": runs[0][0][0]["steps"],
            "repeats": args.repeats,
            "torch": torch.__version__,
        },
        "stages": stages,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "note": (
            "Run on a shared 2-core machine with other work on it: the timings are noisy "
            "(medians of interleaved repeats; the state and gradient counts are exact). "
            "Both processes share the 2 cores, so steps/s shows the cost of the extra "
            "collectives on loopback gloo, not what GPUs with nccl would show."
        ),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
