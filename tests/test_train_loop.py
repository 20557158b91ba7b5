"""Tests of the shared training loop, its sampler and its checkpoints.

The models are a tiny MLP (with dropout where RNG replay matters) on random
regression data, so the whole file runs in seconds on a CPU. Run as a script,
this file is the worker of the two-process distributed test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prefkit.errors import UserInputError
from prefkit.train import checkpoint as checkpoint_module
from prefkit.train import loop as loop_module
from prefkit.train.loop import TrainConfig, TrainEvent, move_to_device, train
from prefkit.train.sampler import (
    LengthGroupedBatchSampler,
    shard_batch,
    split_micro_batches,
)

INPUT_DIM = 6


@dataclass
class RegressionBatch:
    inputs: torch.Tensor
    """(B, INPUT_DIM)"""
    targets: torch.Tensor
    """(B,)"""


class RegressionTask:
    """Squared error of a scalar regression on random data.

    ``eval_losses``, when given, scripts what ``evaluate`` returns, call by call;
    ``evals_done`` skips the first values (for a resumed run).
    """

    def __init__(
        self,
        num_examples: int = 40,
        seed: int = 0,
        eval_losses: list[float] | None = None,
        evals_done: int = 0,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(num_examples, INPUT_DIM, generator=generator)
        true_weights = torch.randn(INPUT_DIM, generator=generator)
        self.targets = self.inputs @ true_weights + 0.1 * torch.randn(
            num_examples, generator=generator
        )
        self.lengths = torch.randint(1, 100, (num_examples,), generator=generator).tolist()
        self.eval_losses = eval_losses
        self.evals_done = evals_done

    def example_lengths(self) -> list[int]:
        return self.lengths

    def collate(self, indices: list[int]) -> RegressionBatch:
        return RegressionBatch(inputs=self.inputs[indices], targets=self.targets[indices])

    def loss(self, model: nn.Module, batch: RegressionBatch):
        predictions = model(batch.inputs).squeeze(-1)  # (B,)
        errors = predictions - batch.targets  # (B,)
        metrics = {
            "abs_error": errors.abs().detach(),  # per example, (B,)
            "mean_prediction": predictions.mean().detach(),  # scalar batch mean
        }
        return errors.square(), metrics

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.eval_losses is not None:
            value = self.eval_losses[self.evals_done]
            self.evals_done += 1
            return {"loss": value}
        predictions = model(self.inputs).squeeze(-1)
        return {"loss": float((predictions - self.targets).square().mean())}


class TaskWithoutEvaluate:
    def __init__(self) -> None:
        self.inner = RegressionTask()

    def example_lengths(self) -> list[int]:
        return self.inner.example_lengths()

    def collate(self, indices: list[int]) -> RegressionBatch:
        return self.inner.collate(indices)

    def loss(self, model: nn.Module, batch: RegressionBatch):
        return self.inner.loss(model, batch)


def make_mlp(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(INPUT_DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def quiet_config(**overrides) -> TrainConfig:
    settings = {"progress": False, "device": "cpu", "lr": 1e-2}
    settings.update(overrides)
    return TrainConfig(**settings)


def read_metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(lines: list[dict]) -> list[dict]:
    return [
        {key: value for key, value in line.items() if key != "examples_per_s"} for line in lines
    ]


def assert_same_weights(model_a: nn.Module, model_b: nn.Module) -> None:
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs"


def weights_differ(model_a: nn.Module, model_b: nn.Module) -> bool:
    return any(
        not torch.equal(a, b)
        for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values())
    )


class StopAtStep:
    """Simulates a kill: raises KeyboardInterrupt after the given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __call__(self, event: TrainEvent) -> None:
        if event.kind == "step" and event.global_step == self.step:
            raise KeyboardInterrupt


class RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients it was given at every step."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.recorded: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.recorded.append(
            [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        )
        return super().step(closure)


# --- 1. reduction and accumulation ------------------------------------------------


def test_gradients_do_not_depend_on_accumulation_and_match_plain_pytorch(tmp_path):
    """Batch 8 x 1 micro-step, batch 8 as 8 micro-steps of 1, and a hand-written loop
    (mean of the per-example losses of each batch) give the same gradients. 10 examples
    make the second step a partial batch of 2, which must be a mean over 2."""
    task = RegressionTask(num_examples=10)
    learning_rate = 0.1
    optimizers = {}
    for accum in (1, 8):
        model = make_mlp()
        config = quiet_config(
            batch_size=8, grad_accum_steps=accum, max_grad_norm=None, schedule="constant"
        )

        def factory(model, config, accum=accum):
            optimizers[accum] = RecordingSGD(model.parameters(), lr=learning_rate)
            return optimizers[accum]

        train(model, task, config, tmp_path / f"accum-{accum}", optimizer_factory=factory)

    reference = make_mlp()
    expected_losses = []
    batches = LengthGroupedBatchSampler(task.example_lengths(), 8, seed=0).batches(0)
    assert [len(batch) for batch in batches] == [8, 2]
    for step, indices in enumerate(batches):
        per_example_losses, _ = task.loss(reference, task.collate(indices))
        mean_loss = per_example_losses.mean()
        gradients = torch.autograd.grad(mean_loss, list(reference.parameters()))
        expected_losses.append(mean_loss.item())
        for accum in (1, 8):
            for got, expected in zip(optimizers[accum].recorded[step], gradients):
                torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        with torch.no_grad():
            for parameter, gradient in zip(reference.parameters(), gradients):
                parameter -= learning_rate * gradient

    for accum in (1, 8):
        lines = read_metrics(tmp_path / f"accum-{accum}")
        logged = [line["loss"] for line in lines if line["split"] == "train"]
        assert logged == pytest.approx(expected_losses, abs=1e-6)


def test_weights_after_several_adamw_steps_do_not_depend_on_accumulation(tmp_path):
    task = RegressionTask(num_examples=36)
    models = {}
    for accum in (1, 8):
        models[accum] = make_mlp()
        config = quiet_config(epochs=3, batch_size=8, grad_accum_steps=accum, warmup_ratio=0.2)
        train(models[accum], task, config, tmp_path / f"accum-{accum}")
    for a, b in zip(models[1].parameters(), models[8].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_task_metrics_are_averaged_over_examples(tmp_path):
    """A per-example metric is a mean over examples; a scalar one is weighted by
    its micro-batch size, so both equal the mean over the whole batch."""
    task = RegressionTask(num_examples=8)
    model = make_mlp()
    initial = copy.deepcopy(model)
    train(model, task, quiet_config(batch_size=8, grad_accum_steps=4), tmp_path)
    (line, _eval_line) = read_metrics(tmp_path)
    with torch.no_grad():
        predictions = initial(task.inputs).squeeze(-1)
    assert line["abs_error"] == pytest.approx(
        (predictions - task.targets).abs().mean().item(), abs=1e-6
    )
    assert line["mean_prediction"] == pytest.approx(predictions.mean().item(), abs=1e-6)
    assert line["num_examples"] == 8
    assert {"loss", "lr", "grad_norm", "examples_per_s", "epoch", "step", "split"} <= set(line)


# --- 2. exact resume --------------------------------------------------------------


def resume_config() -> TrainConfig:
    # 40 examples / batch 4 = 10 steps per epoch; checkpoints at 3, 6, 9, 10, 12, 15, ...
    return quiet_config(
        epochs=3,
        batch_size=4,
        seed=1,
        checkpoint_every_steps=3,
        keep_checkpoints=2,
        warmup_ratio=0.1,
    )


def run_uninterrupted(out_dir: Path) -> nn.Module:
    model = make_mlp(dropout=0.3)
    train(model, RegressionTask(), resume_config(), out_dir)
    return model


def run_interrupted_at(out_dir: Path, step: int) -> None:
    with pytest.raises(KeyboardInterrupt):
        train(
            make_mlp(dropout=0.3),
            RegressionTask(),
            resume_config(),
            out_dir,
            callbacks=[StopAtStep(step)],
        )


def test_resume_mid_epoch_matches_uninterrupted_run_bitwise(tmp_path):
    expected = run_uninterrupted(tmp_path / "uninterrupted")
    out_dir = tmp_path / "interrupted"
    run_interrupted_at(out_dir, step=17)  # in the second epoch, two steps after checkpoint 15

    # A different initialisation: everything must come from the checkpoint.
    resumed = make_mlp(dropout=0.3, seed=123)
    result = train(resumed, RegressionTask(), resume_config(), out_dir)

    assert result.resumed_from is not None and result.resumed_from.name == "step-15"
    assert result.global_step == 30 and result.epochs_completed == 3
    assert_same_weights(resumed, expected)
    lines = read_metrics(out_dir)
    assert [line["step"] for line in lines if line["split"] == "train"] == list(range(1, 31))
    assert [line["epoch"] for line in lines if line["split"] == "eval"] == [0, 1, 2]
    # Same lines as the uninterrupted run, apart from timing.
    assert without_timing(lines) == without_timing(read_metrics(tmp_path / "uninterrupted"))
    assert sorted(path.name for path in (out_dir / "checkpoints").iterdir()) == [
        "step-27",
        "step-30",
    ]


def test_resume_warns_when_the_examples_differ_from_the_checkpoints(tmp_path):
    run_interrupted_at(tmp_path, step=17)
    same = tmp_path / "same"
    run_interrupted_at(same, step=17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same data resumes without a warning
        train(make_mlp(dropout=0.3), RegressionTask(), resume_config(), same)

    other = RegressionTask()
    other.lengths = [
        length + 1 if index % 2 else length for index, length in enumerate(other.lengths)
    ]
    with pytest.warns(UserWarning, match="batch order differs"):
        train(make_mlp(dropout=0.3), other, resume_config(), tmp_path)


class ShiftedRegressionTask(RegressionTask):
    """Squared error around a running mean of earlier steps' errors (state, as BCO's delta).

    ``loss`` adds up the errors of each micro-batch; ``after_optimizer_step`` folds the
    step's sums into the mean, which the next steps subtract from their errors.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.error_sum, self.error_count = 0.0, 0
        self.step_totals = torch.zeros(2, dtype=torch.float64)

    def loss(self, model: nn.Module, batch: RegressionBatch):
        errors = model(batch.inputs).squeeze(-1) - batch.targets  # (B,)
        shift = self.error_sum / self.error_count if self.error_count else 0.0
        self.step_totals += torch.tensor([errors.detach().double().sum().item(), len(errors)])
        return (errors - shift).square(), {"shift": torch.tensor(shift)}

    def after_optimizer_step(self, sum_over_ranks) -> None:
        error_sum, error_count = sum_over_ranks(self.step_totals).tolist()
        self.error_sum += error_sum
        self.error_count += round(error_count)
        self.step_totals = torch.zeros(2, dtype=torch.float64)

    def state_dict(self) -> dict:
        return {"error_sum": self.error_sum, "error_count": self.error_count}

    def load_state_dict(self, state) -> None:
        self.error_sum, self.error_count = state["error_sum"], state["error_count"]


def test_task_state_is_checkpointed_and_restored_for_an_exact_resume(tmp_path):
    expected_task = ShiftedRegressionTask()
    expected = make_mlp(dropout=0.3)
    train(expected, expected_task, resume_config(), tmp_path / "uninterrupted")
    assert expected_task.error_count == 3 * 40

    out_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(
            make_mlp(dropout=0.3),
            ShiftedRegressionTask(),
            resume_config(),
            out_dir,
            callbacks=[StopAtStep(17)],
        )
    state = json.loads((out_dir / "checkpoints" / "step-15" / "state.json").read_text())
    assert state["task"]["error_count"] == 15 * 4
    resumed_task = ShiftedRegressionTask()
    resumed = make_mlp(dropout=0.3, seed=123)
    train(resumed, resumed_task, resume_config(), out_dir)
    assert_same_weights(resumed, expected)
    assert resumed_task.state_dict() == expected_task.state_dict()
    assert without_timing(read_metrics(out_dir)) == without_timing(
        read_metrics(tmp_path / "uninterrupted")
    )


def test_checkpoints_without_task_state_still_load(tmp_path):
    """Checkpoints written before tasks had state: a task without state resumes silently;
    a task with state resumes from its initial state, with a warning."""
    out_dir = tmp_path / "old"
    run_interrupted_at(out_dir, step=17)
    for state_path in (out_dir / "checkpoints").glob("step-*/state.json"):
        assert "task" not in json.loads(state_path.read_text())  # RegressionTask has no state
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copy_dir = tmp_path / "copy"
        shutil.copytree(out_dir, copy_dir)
        train(make_mlp(dropout=0.3), RegressionTask(), resume_config(), copy_dir)
    with pytest.warns(UserWarning, match="holds no task state"):
        train(make_mlp(dropout=0.3), ShiftedRegressionTask(), resume_config(), out_dir)


def test_resume_without_rng_restore_would_differ(tmp_path, monkeypatch):
    """Guards the test above: dropout makes the RNG state matter, so skipping its
    restore changes the result."""
    expected = run_uninterrupted(tmp_path / "uninterrupted")
    out_dir = tmp_path / "interrupted"
    run_interrupted_at(out_dir, step=17)
    monkeypatch.setattr(loop_module, "restore_rng_state", lambda tensors, metadata, device: None)
    resumed = make_mlp(dropout=0.3)
    train(resumed, RegressionTask(), resume_config(), out_dir)
    assert weights_differ(resumed, expected)


def test_resume_skips_partial_and_corrupt_checkpoints(tmp_path):
    expected = run_uninterrupted(tmp_path / "uninterrupted")
    out_dir = tmp_path / "interrupted"
    run_interrupted_at(out_dir, step=17)
    checkpoints = out_dir / "checkpoints"
    good = checkpoints / "step-15"
    # Killed while writing step 18: a staging folder with half a model file.
    partial = checkpoints / ".step-18.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:50])
    # A step folder without state.json, as a non-atomic copy would leave.
    incomplete = checkpoints / "step-19"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"")
    # A folder that claims to be complete but whose weights are truncated.
    corrupt = checkpoints / "step-16"
    corrupt.mkdir()
    for path in good.iterdir():
        (corrupt / path.name).write_bytes(path.read_bytes())
    (corrupt / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:50])

    resumed = make_mlp(dropout=0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(resumed, RegressionTask(), resume_config(), out_dir)

    messages = " | ".join(str(warning.message) for warning in caught)
    assert "Skipping unreadable checkpoint" in messages and "step-16" in messages
    assert "Ignoring incomplete checkpoint" in messages and "step-19" in messages
    assert result.resumed_from == good
    assert_same_weights(resumed, expected)
    assert not partial.exists()  # cleaned up by the next checkpoint write


def test_checkpoint_layout_has_no_pickles_and_loads_with_safetensors(tmp_path):
    train(make_mlp(dropout=0.3), RegressionTask(), quiet_config(batch_size=8), tmp_path)
    (checkpoint_dir,) = (tmp_path / "checkpoints").iterdir()
    assert checkpoint_dir.name == "step-5"
    assert sorted(path.name for path in checkpoint_dir.iterdir()) == [
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng-rank-0.safetensors",
        "scheduler.json",
        "state.json",
    ]
    optimizer_tensors = load_file(checkpoint_dir / "optimizer.safetensors")
    assert {"state/0/exp_avg", "state/0/exp_avg_sq", "state/0/step"} <= set(optimizer_tensors)
    assert load_file(checkpoint_dir / "rng-rank-0.safetensors")["torch_cpu"].dtype == torch.uint8
    state = json.loads((checkpoint_dir / "state.json").read_text())
    assert state["loop"]["global_step"] == 5 and state["loop"]["epoch"] == 1
    assert state["loop"]["batch_in_epoch"] == 0


def test_resuming_a_finished_run_does_nothing_and_resume_false_refuses(tmp_path):
    model = make_mlp(dropout=0.3)
    train(model, RegressionTask(), resume_config(), tmp_path)
    again = make_mlp(dropout=0.3, seed=5)
    result = train(again, RegressionTask(), resume_config(), tmp_path)
    assert result.global_step == 30 and result.last_train_loss is None
    assert_same_weights(again, model)
    with pytest.raises(FileExistsError, match="resume=True"):
        train(make_mlp(), RegressionTask(), resume_config(), tmp_path, resume=False)


def test_max_steps_stops_inside_an_epoch_checkpoints_there_and_resumes_to_nothing(tmp_path):
    """40 examples in batches of 8: 5 steps per epoch, so max_steps=12 ends in epoch 2 after
    two of its batches; up to there it is the run of 3 epochs (constant learning rate)."""
    reference = make_mlp()
    with pytest.raises(KeyboardInterrupt):
        train(
            reference,
            RegressionTask(),
            quiet_config(batch_size=8, epochs=3, schedule="constant"),
            tmp_path / "epochs",
            callbacks=[StopAtStep(12)],
        )
    model = make_mlp()
    config = quiet_config(batch_size=8, epochs=1, schedule="constant")
    result = train(model, RegressionTask(), config, tmp_path / "steps", max_steps=12)
    assert result.global_step == 12 and result.epochs_completed == 2
    assert_same_weights(model, reference)
    lines = read_metrics(tmp_path / "steps")
    assert [(line["epoch"], line["step"]) for line in lines if line["split"] == "train"] == [
        (step // 5, step + 1) for step in range(12)
    ]
    assert result.last_checkpoint is not None and result.last_checkpoint.name == "step-12"
    again = train(make_mlp(seed=3), RegressionTask(), config, tmp_path / "steps", max_steps=12)
    assert again.resumed_from is not None and again.resumed_from.name == "step-12"
    assert again.global_step == 12 and again.last_train_loss is None
    # the linear schedule spans max_steps: the last step runs at lr * 1 / 12
    linear = quiet_config(batch_size=8, epochs=1, schedule="linear")
    train(make_mlp(), RegressionTask(), linear, tmp_path / "linear", max_steps=12)
    assert read_metrics(tmp_path / "linear")[-1]["lr"] == pytest.approx(1e-2 / 12)
    with pytest.raises(UserInputError, match="max_steps must be an integer >= 1, got 0"):
        train(make_mlp(), RegressionTask(), config, tmp_path / "bad", max_steps=0)


# --- 3. determinism ---------------------------------------------------------------


def test_same_seed_same_weights_different_seed_different_weights(tmp_path):
    models = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        models[name] = make_mlp(dropout=0.3)
        train(
            models[name],
            RegressionTask(),
            quiet_config(epochs=2, batch_size=4, seed=seed),
            tmp_path / name,
        )
    assert_same_weights(models["a"], models["b"])
    assert weights_differ(models["a"], models["c"])


# --- 4. sampler -------------------------------------------------------------------


def mean_length_spread(batches: list[list[int]], lengths: list[int]) -> float:
    spreads = [max(lengths[i] for i in batch) - min(lengths[i] for i in batch) for batch in batches]
    return sum(spreads) / len(spreads)


def test_sampler_covers_every_index_once_and_groups_by_length():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 513, (1003,), generator=generator).tolist()
    rng_before = torch.get_rng_state()
    grouped = LengthGroupedBatchSampler(lengths, 8, seed=3)
    ungrouped = LengthGroupedBatchSampler(lengths, 8, seed=3, group_by_length=False)
    for sampler in (grouped, ungrouped):
        for epoch in (0, 1):
            batches = sampler.batches(epoch)
            assert len(batches) == len(sampler) == 126
            assert sorted(i for batch in batches for i in batch) == list(range(1003))
            assert [len(batch) for batch in batches] == [8] * 125 + [3]
    assert mean_length_spread(grouped.batches(0), lengths) < 0.1 * mean_length_spread(
        ungrouped.batches(0), lengths
    )
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global RNG touched


def test_sampler_order_is_a_function_of_seed_and_epoch():
    lengths = list(range(100))
    sampler = LengthGroupedBatchSampler(lengths, 4, seed=3, mega_batch_factor=5)
    assert sampler.batches(2) == LengthGroupedBatchSampler(
        lengths, 4, seed=3, mega_batch_factor=5
    ).batches(2)
    assert sampler.batches(2) != sampler.batches(3)
    assert sampler.batches(2) != LengthGroupedBatchSampler(
        lengths, 4, seed=4, mega_batch_factor=5
    ).batches(2)


def test_sharding_and_micro_batches_partition_a_batch():
    batch = list(range(10, 17))  # 7 examples over 3 ranks
    shares = [shard_batch(batch, rank, 3) for rank in range(3)]
    assert sorted(i for share in shares for i in share) == batch
    assert [len(share) for share in shares] == [3, 2, 2]
    assert shard_batch([5], 1, 2) == []
    assert split_micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


# --- 5. early stopping and metrics.jsonl ------------------------------------------


def early_stopping_config() -> TrainConfig:
    # 20 examples / batch 4 = 5 steps per epoch.
    return quiet_config(epochs=10, batch_size=4, early_stopping_patience=2, seed=2)


SCRIPTED_EVAL_LOSSES = [3.0, 2.0, 2.5, 2.4, 1.0, 1.0]  # best after epoch 1, stop after epoch 3


def test_early_stopping_stops_after_patience_and_restores_best_weights(tmp_path):
    model = make_mlp(dropout=0.3)
    snapshots = {}

    def snapshot(event: TrainEvent) -> None:
        if event.kind == "eval":
            snapshots[event.global_step] = copy.deepcopy(model.state_dict())

    task = RegressionTask(num_examples=20, eval_losses=SCRIPTED_EVAL_LOSSES)
    result = train(model, task, early_stopping_config(), tmp_path, callbacks=[snapshot])

    assert result.stopped_early and result.restored_best
    assert (result.best_step, result.best_metric, result.global_step) == (10, 2.0, 20)
    assert task.evals_done == 4
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[10][name])
    assert not torch.equal(snapshots[20]["0.weight"], snapshots[10]["0.weight"])

    lines = read_metrics(tmp_path)
    train_lines = [line for line in lines if line["split"] == "train"]
    eval_lines = [line for line in lines if line["split"] == "eval"]
    assert [line["step"] for line in train_lines] == list(range(1, 21))
    assert [line["epoch"] for line in train_lines] == [step // 5 for step in range(20)]
    assert [(line["epoch"], line["step"], line["loss"]) for line in eval_lines] == [
        (0, 5, 3.0),
        (1, 10, 2.0),
        (2, 15, 2.5),
        (3, 20, 2.4),
    ]
    assert len(lines) == 24


def test_early_stopping_state_and_best_weights_survive_a_resume(tmp_path):
    expected = make_mlp(dropout=0.3)
    train(
        expected,
        RegressionTask(num_examples=20, eval_losses=SCRIPTED_EVAL_LOSSES),
        early_stopping_config(),
        tmp_path / "uninterrupted",
    )
    out_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(
            make_mlp(dropout=0.3),
            RegressionTask(num_examples=20, eval_losses=SCRIPTED_EVAL_LOSSES),
            early_stopping_config(),
            out_dir,
            callbacks=[StopAtStep(17)],
        )
    # The step-15 checkpoint must carry the best (step 10) weights next to the current ones.
    assert (out_dir / "checkpoints" / "step-15" / "best_model.safetensors").is_file()

    resumed = make_mlp(dropout=0.3, seed=9)
    task = RegressionTask(num_examples=20, eval_losses=SCRIPTED_EVAL_LOSSES, evals_done=3)
    result = train(resumed, task, early_stopping_config(), out_dir)
    assert result.stopped_early and result.best_step == 10 and result.restored_best
    assert_same_weights(resumed, expected)


# --- 6. distributed ---------------------------------------------------------------


def distributed_config(grad_accum_steps: int) -> TrainConfig:
    return quiet_config(batch_size=8, grad_accum_steps=grad_accum_steps, lr=0.05, max_grad_norm=0.5)


def distributed_worker(work_dir: Path) -> None:
    """One rank of the distributed test: 9 examples, so step 1 has 8 (4 per rank,
    two micro-batches of 2) and step 2 has 1 (rank 1's share is empty)."""
    rank = int(os.environ["RANK"])
    model = make_mlp()
    train(
        model,
        RegressionTask(num_examples=9),
        distributed_config(grad_accum_steps=2),
        work_dir / "run",
    )
    save_file(
        {name: tensor.contiguous() for name, tensor in model.state_dict().items()},
        work_dir / f"weights-rank-{rank}.safetensors",
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    single = make_mlp()
    train(
        single,
        RegressionTask(num_examples=9),
        distributed_config(grad_accum_steps=1),
        tmp_path / "single",
    )

    port = free_port()
    workers = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, str(tmp_path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    for rank, worker in enumerate(workers):
        output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, f"rank {rank} failed:\n{output}"

    rank_weights = [load_file(tmp_path / f"weights-rank-{rank}.safetensors") for rank in range(2)]
    for name, tensor in single.state_dict().items():
        assert torch.equal(rank_weights[0][name], rank_weights[1][name])
        torch.testing.assert_close(rank_weights[0][name], tensor, rtol=0, atol=1e-6)
    distributed_lines = read_metrics(tmp_path / "run")
    single_lines = read_metrics(tmp_path / "single")
    assert [line["split"] for line in distributed_lines] == ["train", "train", "eval"]
    assert [line["num_examples"] for line in distributed_lines[:2]] == [8, 1]
    for got, expected in zip(distributed_lines, single_lines, strict=True):
        for key in ("loss", "grad_norm", "abs_error", "mean_prediction"):
            if key in expected:
                assert got[key] == pytest.approx(expected[key], abs=1e-6)
    checkpoint_files = {
        path.name for path in (tmp_path / "run" / "checkpoints" / "step-2").iterdir()
    }
    assert {
        "rng-rank-0.safetensors",
        "rng-rank-1.safetensors",
        "model.safetensors",
    } <= checkpoint_files


# --- 7. validation and errors -----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        (
            {"batch_size": 10, "grad_accum_steps": 4},
            r"batch_size \(10\) must be a multiple of grad_accum_steps \(4\)",
        ),
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio must be in \[0, 1\)"),
        ({"max_grad_norm": 0.0}, "max_grad_norm must be > 0, or None"),
        ({"schedule": "cosine"}, r"schedule must be one of \['constant', 'linear'\], got 'cosine'"),
        ({"eval_every": "step"}, "eval_every must be 'epoch' or a number of steps"),
        ({"eval_every": 0}, "eval_every must be an integer >= 1"),
        ({"early_stopping_patience": 0}, "early_stopping_patience must be an integer >= 1"),
        ({"early_stopping_mode": "lowest"}, "early_stopping_mode must be one of"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be an integer >= 1"),
        ({"device": "tpu"}, "device must be one of"),
        ({"batch_size": True}, "batch_size must be an integer"),
    ],
)
def test_config_validation_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_micro_batch_size_needs_batch_divisible_by_ranks():
    config = TrainConfig(batch_size=8, grad_accum_steps=2)
    assert config.micro_batch_size(world_size=2) == 2
    with pytest.raises(ValueError, match=r"multiple of grad_accum_steps x world_size \(2 x 3\)"):
        config.micro_batch_size(world_size=3)


def test_errors_at_train_time_say_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="has no evaluate"):
        train(
            make_mlp(),
            TaskWithoutEvaluate(),
            quiet_config(early_stopping_patience=1),
            tmp_path / "a",
        )
    with pytest.raises(ValueError, match="bf16.*CPU"):
        train(make_mlp(), RegressionTask(), quiet_config(mixed_precision="bf16"), tmp_path / "b")

    class ReducedLossTask(RegressionTask):
        def loss(self, model, batch):
            per_example_losses, metrics = super().loss(model, batch)
            return per_example_losses.mean(), metrics

    with pytest.raises(ValueError, match="one unreduced loss per example"):
        train(make_mlp(), ReducedLossTask(), quiet_config(), tmp_path / "c")
    with pytest.raises(UserInputError, match="returned only \\['loss'\\]"):
        config = quiet_config(early_stopping_patience=1, early_stopping_metric="accuracy")
        train(make_mlp(), RegressionTask(), config, tmp_path / "d")


@pytest.mark.parametrize(
    ("variable", "engine"),
    [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")],
)
def test_a_deepspeed_or_fsdp_launch_is_refused_not_silently_unsharded(
    tmp_path, monkeypatch, variable, engine
):
    monkeypatch.setenv(variable, "true")  # what accelerate launch sets for such a config
    with pytest.raises(
        UserInputError, match=rf"a config for {engine} \({variable}=true\).*multi_gpu\.yaml"
    ):
        train(make_mlp(), RegressionTask(), quiet_config(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(variable, "false")
    train(make_mlp(), RegressionTask(), quiet_config(), tmp_path / "out")


def test_move_to_device_reaches_nested_tensors():
    batch = {
        "pair": RegressionBatch(torch.zeros(2, INPUT_DIM), torch.zeros(2)),
        "ids": [torch.ones(1)],
        "n": 3,
    }
    moved = move_to_device(batch, torch.device("cpu"))
    assert isinstance(moved["pair"], RegressionBatch) and moved["n"] == 3
    assert torch.equal(moved["ids"][0], torch.ones(1))


def test_checkpoint_module_round_trips_optimizer_state():
    model = make_mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, INPUT_DIM)).sum().backward()
    optimizer.step()
    tensors, state_json = checkpoint_module.split_optimizer_state(optimizer.state_dict())
    restored = checkpoint_module.join_optimizer_state(tensors, json.loads(json.dumps(state_json)))
    fresh = torch.optim.AdamW(make_mlp().parameters(), lr=0.1)
    fresh.load_state_dict(restored)
    for before, after in zip(optimizer.state.values(), fresh.state.values()):
        for key in before:
            assert torch.equal(before[key], after[key])
    assert fresh.param_groups[0]["betas"] == (0.9, 0.999)


if __name__ == "__main__":
    distributed_worker(Path(sys.argv[1]))


def test_schedule_with_warmup_over_the_whole_run_does_not_divide_by_zero() -> None:
    from prefkit.train.loop import WarmupSchedule

    schedule = WarmupSchedule("linear", warmup_steps=3, total_steps=3)
    assert [schedule(step) for step in range(4)] == [1 / 3, 2 / 3, 1.0, 0.0]
    decaying = WarmupSchedule("linear", warmup_steps=1, total_steps=3)
    assert [decaying(step) for step in range(4)] == [1.0, 1.0, 0.5, 0.0]
