"""Sharded training (``TrainConfig.zero_stage`` 1 and 2) in two CPU processes (gloo).

Two processes with the optimizer state (stage 1), or the optimizer state and the
gradients (stage 2), split between them must train as one unsharded process on the
same global batches: the same per-step losses and gradient norms (clipping is active:
``max_grad_norm`` is below the norms), the same weights, and a last checkpoint whose
optimizer state is the whole AdamW state of the single process (it is gathered onto
rank 0, not saved per rank). Each rank must hold only its share of that state (and,
at stage 2, of the gradients): the counts are measured on the ranks and must add up to
the single process's, with no rank holding more than 60% (the model's parameters are
split 54/46 by size, whole parameters per rank). A run stopped after step 3 and started
again resumes from its step-2 checkpoint to the uninterrupted sharded run's weights,
bit for bit.

9 examples in global batches of 4 (4, 4, 1) for two epochs: 6 steps, the last of each
epoch with one example, so rank 1's share of it is empty. Run as a script, this file
is one rank: ``python test_train_zero.py WORK_DIR ZERO_STAGE STOP_AFTER_STEP FLOAT64_HEAD``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from launch_helpers import start_ranks
from prefkit.errors import UserInputError
from prefkit.train.loop import TrainConfig, train
from test_train_loop import INPUT_DIM, RegressionTask, StopAtStep

STOPPED = 3
"""Exit status of a worker stopped by StopAtStep."""


def make_model() -> nn.Module:
    """945 trainable parameters in 10 tensors; ZeroRedundancyOptimizer splits them 512/433."""
    torch.manual_seed(0)
    hidden = [nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3)]
    return nn.Sequential(nn.Linear(INPUT_DIM, 16), nn.ReLU(), *hidden, nn.Linear(16, 1))


def zero_config(zero_stage: int) -> TrainConfig:
    return TrainConfig(
        epochs=2,
        batch_size=4,
        grad_accum_steps=2,
        lr=0.05,
        weight_decay=0.1,
        warmup_ratio=0.0,
        max_grad_norm=0.5,
        checkpoint_every_steps=2,
        keep_checkpoints=None,
        device="cpu",
        progress=False,
        zero_stage=zero_stage,
    )


def worker(work_dir: Path, zero_stage: int, stop_after_step: int, float64_head: bool) -> int:
    """One rank: train, then write this rank's weights and state counts."""
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    model = make_model()
    if float64_head:
        model[-1].double()
    callbacks = [StopAtStep(stop_after_step)] if stop_after_step else []
    try:
        result = train(
            model,
            RegressionTask(num_examples=9),
            zero_config(zero_stage),
            work_dir,
            callbacks=callbacks,
        )
    except KeyboardInterrupt:
        return STOPPED
    except UserInputError as error:
        print(error, file=sys.stderr)
        return 2
    save_file(
        {name: tensor.contiguous() for name, tensor in model.state_dict().items()},
        work_dir / f"weights-rank-{rank}.safetensors",
    )
    counts = {
        "optimizer_state_elements": result.optimizer_state_elements,
        "gradient_elements": result.gradient_elements,
        "resumed_from": None if result.resumed_from is None else result.resumed_from.name,
    }
    (work_dir / f"counts-rank-{rank}.json").write_text(json.dumps(counts))
    return 0


def launch(
    work_dir: Path,
    zero_stage: int,
    world_size: int,
    stop_after_step: int = 0,
    float64_head: bool = False,
):
    arguments = [str(work_dir), str(zero_stage), str(stop_after_step), str(int(float64_head))]
    return start_ranks([__file__, *arguments], world_size)


def finish(processes, expected_code: int = 0) -> None:
    for rank, process in enumerate(processes):
        output, _ = process.communicate(timeout=120)
        assert process.returncode == expected_code, f"rank {rank}:\n{output[-3000:]}"


def read_run(work_dir: Path, world_size: int):
    lines = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    weights = [
        load_file(work_dir / f"weights-rank-{rank}.safetensors") for rank in range(world_size)
    ]
    counts = [
        json.loads((work_dir / f"counts-rank-{rank}.json").read_text())
        for rank in range(world_size)
    ]
    return lines, weights, counts


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_sharded_processes_match_one_process_and_resume(tmp_path, zero_stage: int) -> None:
    # The independent runs at once: one unsharded process, the sharded pair, and the sharded
    # pair that is stopped after step 3 (its last checkpoint is step 2).
    single = launch(tmp_path / "single", 0, 1)
    sharded = launch(tmp_path / "sharded", zero_stage, 2)
    stopped = launch(tmp_path / "resumed", zero_stage, 2, stop_after_step=3)
    finish(single)
    finish(sharded)
    finish(stopped, expected_code=STOPPED)
    resumed = launch(tmp_path / "resumed", zero_stage, 2)
    finish(resumed)

    (one_lines, (one_weights,), (one_counts,)) = read_run(tmp_path / "single", 1)
    two_lines, two_weights, two_counts = read_run(tmp_path / "sharded", 2)

    # The same steps, losses and gradient norms as one process, with clipping at work, and
    # the same evaluations (at the end of each epoch).
    one_train = [line for line in one_lines if line["split"] == "train"]
    assert [line["num_examples"] for line in one_train] == [4, 4, 1] * 2
    assert [line["split"] for line in two_lines] == [line["split"] for line in one_lines]
    for single_line, double_line in zip(one_lines, two_lines, strict=True):
        assert double_line["step"] == single_line["step"]
        names = ["loss", "grad_norm", "abs_error", "mean_prediction"]
        for name in names if single_line["split"] == "train" else ["loss"]:
            assert double_line[name] == pytest.approx(single_line[name], abs=1e-5), name
    assert max(line["grad_norm"] for line in one_train) > 2 * zero_config(0).max_grad_norm
    assert one_lines[-1]["loss"] < one_lines[2]["loss"]  # the evaluations: it did train
    # Every rank ends with the single process's weights (the owners broadcast their updates).
    for rank_weights in two_weights:
        assert rank_weights.keys() == one_weights.keys()
        for name, tensor in one_weights.items():
            torch.testing.assert_close(rank_weights[name], tensor, atol=1e-5, rtol=0, msg=name)

    # The sharded run's checkpoint holds the whole AdamW state: the single process's.
    for step in ("step-2", "step-6"):
        one_state = load_file(tmp_path / "single" / "checkpoints" / step / "optimizer.safetensors")
        two_state = load_file(tmp_path / "sharded" / "checkpoints" / step / "optimizer.safetensors")
        assert two_state.keys() == one_state.keys() and len(one_state) == 3 * 10
        for name, tensor in one_state.items():
            torch.testing.assert_close(two_state[name], tensor, atol=1e-5, rtol=0, msg=name)
        one_groups, two_groups = (
            json.loads((tmp_path / run / "checkpoints" / step / "optimizer.json").read_text())[
                "param_groups"
            ]
            for run in ("single", "sharded")
        )
        assert two_groups == one_groups

    # Measured on the ranks: each holds its share of the AdamW state (two moments and a step
    # per parameter tensor), together the single process's, no rank 60% of it or more.
    num_parameters = sum(tensor.numel() for tensor in one_weights.values())
    assert num_parameters == 945
    assert one_counts["optimizer_state_elements"] == 2 * num_parameters + 10
    shares = [counts["optimizer_state_elements"] for counts in two_counts]
    assert sum(shares) == one_counts["optimizer_state_elements"]
    assert max(shares) < 0.6 * one_counts["optimizer_state_elements"], shares
    gradients = [counts["gradient_elements"] for counts in two_counts]
    assert one_counts["gradient_elements"] == num_parameters
    if zero_stage == 2:  # each rank kept the gradients of the parameters it steps only
        assert sum(gradients) == num_parameters and max(gradients) < 0.6 * num_parameters
    else:  # stage 1 sums whole gradients on every rank, as without sharding
        assert gradients == [num_parameters, num_parameters]

    # Stopped after step 3 and started again: from step 2 to the uninterrupted run, exactly.
    resumed_lines, resumed_weights, resumed_counts = read_run(tmp_path / "resumed", 2)
    assert [counts["resumed_from"] for counts in resumed_counts] == ["step-2", "step-2"]
    for rank in range(2):
        for name, tensor in two_weights[rank].items():
            assert torch.equal(resumed_weights[rank][name], tensor), (rank, name)
    for got, expected in zip(resumed_lines, two_lines, strict=True):
        assert {k: v for k, v in got.items() if k != "examples_per_s"} == {
            k: v for k, v in expected.items() if k != "examples_per_s"
        }


def test_zero_stage_needs_several_processes(tmp_path, monkeypatch) -> None:
    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(UserInputError, match="zero_stage .*is 2, but training runs in one process"):
        train(make_model(), RegressionTask(num_examples=9), zero_config(2), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_zero_stage_refuses_parameters_of_two_dtypes(tmp_path) -> None:
    processes = launch(tmp_path / "run", 2, 2, float64_head=True)
    for process in processes:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 2, output[-3000:]
        assert "needs every trainable parameter in one dtype" in output
        assert "torch.DoubleTensor, torch.FloatTensor" in output
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("value", [3, -1, True, "2", 2.0])
def test_zero_stage_is_validated(value) -> None:
    with pytest.raises(UserInputError, match="zero_stage must be 0"):
        TrainConfig(zero_stage=value)


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"))
