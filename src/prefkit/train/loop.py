"""The shared training loop: batching, reduction, optimisation, checkpoints.

Every trainer in prefkit (reward-model heads on cached embeddings, full
fine-tuning, LoRA, the DPO family) is a :class:`TrainTask` handed to
:func:`train`. The task knows its data and its loss; the loop knows nothing of
either and does the rest:

* **Reduction.** ``task.loss`` returns unreduced per-example losses. The loss of
  one optimizer step is the sum of the per-example losses of the global batch
  (all micro-batches, all ranks) divided by the number of examples in that
  global batch. Each micro-batch therefore backpropagates ``sum / num_examples``
  and ranks all-reduce the gradient *sums*, so batch 8 x 1 micro-step, batch 8
  split into 8 micro-steps of 1, and batch 8 split across ranks all give the
  same gradient (up to float rounding). The last batch of an epoch may be
  partial; it is divided by its own number of examples, so it is a mean like
  every other step (its examples are not down-weighted).
* **Order.** Batches come from :class:`LengthGroupedBatchSampler`, a pure
  function of ``(seed, epoch)``; rank ``r`` trains on ``batch[r::world_size]``.
* **Resume.** A checkpoint holds weights, optimizer, scheduler, every RNG state
  and the loop position. Resuming recomputes the epoch's batch order, skips the
  batches already done and restores the RNGs, so the final weights are bitwise
  those of an uninterrupted run (same machine, same world size).
* **Task state.** A task that carries state across steps (BCO's running reward
  mean) defines ``state_dict``/``load_state_dict`` (JSON values, stored in the
  checkpoint's ``state.json``) and ``after_optimizer_step``, which the loop calls
  once per optimizer step on every rank with a function that sums a tensor over
  the ranks; see :class:`StatefulTrainTask`. A task whose losses need a statistic
  of the whole step (KTO's KL estimate) defines ``before_step``, called with the
  global batch before the step's first micro-batch.
* **Early stopping.** With ``early_stopping_patience`` set, the loop keeps the
  weights of the best evaluation and puts them back into the model when
  training ends (``TrainResult.restored_best`` says whether it did).
* **Distributed.** With ``WORLD_SIZE > 1`` in the environment (``torchrun``,
  ``accelerate launch``) the loop joins or creates the process group (gloo on
  CPU, nccl on CUDA), broadcasts rank 0's weights at the start of a fresh run,
  and all-reduces gradients itself; pass the bare model, not a DDP wrapper. Only
  rank 0 writes metrics, checkpoints and the progress bar; ``out_dir`` must be
  on a file system all ranks share. A recipe with work of its own around
  training (scoring the data, fitting a temperature, saving the model) runs it
  inside :func:`distributed`, which holds the process group for the whole recipe.
* **Sharding** (``zero_stage``, the stages of ZeRO, Rajbhandari et al. 2020, built on
  ``torch.distributed.optim.ZeroRedundancyOptimizer``). Stage 1: each rank keeps the
  optimizer state of its share of the parameters only and steps those; the updated
  parameters are broadcast from their owners. Stage 2 also shards the gradients: after
  the step's backward passes each gradient is summed onto the rank that owns its
  parameter (``dist.reduce`` in buckets) instead of onto every rank, the other ranks
  drop theirs, and the global gradient norm is the square root of the summed squared
  norms of the shards. Whole parameters are assigned to ranks (largest first, each to
  the rank with the fewest elements so far), so a model whose embedding matrix is most
  of its weights is split unevenly. The parameters become views into one flat buffer
  per owner (``parameters_as_bucket_view``), which the owner broadcasts after its
  step. During the backward passes every rank still holds the whole gradient (it is
  reduced after them, not bucket by bucket during them as in DeepSpeed). Checkpoints
  hold the whole optimizer state, gathered onto rank 0 (``consolidate_state_dict``),
  in the same layout as without sharding.

Outputs under ``out_dir``: ``metrics.jsonl`` (one JSON object per optimizer step
with ``"split": "train"`` and per evaluation with ``"split": "eval"``; ``epoch``
counts from 0 and ``step`` from 1) and ``checkpoints/step-N/`` (layout in
:mod:`prefkit.train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prefkit.errors import UserInputError
from prefkit.progress import progress_bar
from prefkit.train.checkpoint import (
    Checkpoint,
    CheckpointContents,
    complete_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    read_latest_checkpoint,
    restore_rng_state,
    write_checkpoint,
)
from prefkit.train.sampler import LengthGroupedBatchSampler, shard_batch, split_micro_batches

BatchT = TypeVar("BatchT")

# Names the loop writes into each train line of metrics.jsonl; task metrics may not reuse them.
_LOOP_METRIC_NAMES = frozenset(
    {"split", "epoch", "step", "loss", "lr", "grad_norm", "examples_per_s", "num_examples"}
)
# Upper bound on the elements all-reduced in one call (64 Mi floats = 256 MiB in fp32).
_ALL_REDUCE_BUCKET_ELEMENTS = 1 << 26


@dataclass
class TrainConfig:
    """Settings of :func:`train`; validated on construction."""

    epochs: int = 1
    """Passes over the training examples."""
    batch_size: int = 32
    """Examples per optimizer step (the global batch, over all micro-steps and ranks)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step on each rank. A micro-batch holds
    ``batch_size / grad_accum_steps / world_size`` examples; both divisions must be exact."""
    lr: float = 1e-4
    """Peak learning rate (after warmup)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay for parameters with two or more dimensions;
    biases and normalisation scales are never decayed."""
    schedule: Literal["constant", "linear"] = "linear"
    """After warmup, keep the peak rate ("constant") or decay it linearly towards 0 ("linear")."""
    warmup_ratio: float = 0.0
    """Fraction of all optimizer steps spent warming up linearly from lr / warmup_steps to lr."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value; None disables clipping (the norm is still logged)."""
    seed: int = 0
    """Fixes the batch order (with the epoch) and seeds torch, ``random`` and NumPy at the
    start of a fresh run (rank r uses seed + r, so dropout masks differ across ranks)."""
    group_by_length: bool = True
    """Put examples of similar length in the same batch (less padding)."""
    eval_every: Literal["epoch"] | int = "epoch"
    """Evaluate at the end of every epoch ("epoch") or every N optimizer steps; only tasks
    with an evaluation set (a ``task.evaluate``) are evaluated."""
    early_stopping_patience: int | None = None
    """Stop after this many evaluations in a row without improvement of
    ``early_stopping_metric``, and restore the best weights at the end; None disables both."""
    early_stopping_metric: str = "loss"
    """Evaluation metric that early stopping watches: a key of the eval lines of
    metrics.jsonl (of the dict returned by ``task.evaluate``), e.g. loss."""
    early_stopping_mode: Literal["min", "max"] = "min"
    """Whether a lower ("min") or higher ("max") ``early_stopping_metric`` is better."""
    checkpoint_every_steps: int | None = None
    """Also checkpoint every N optimizer steps; a checkpoint is always written at the end of
    each epoch and when early stopping ends training. None: epoch ends only."""
    keep_checkpoints: int | None = 2
    """How many of the newest checkpoints to keep on disk; None keeps all."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; "auto" picks CUDA when available. Under torchrun, rank r uses cuda:LOCAL_RANK."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """bf16 autocast for the forward pass ("bf16", CUDA only), float32 everywhere ("no"), or
    bf16 exactly when training on a CUDA device that supports it ("auto")."""
    progress: bool = True
    """Show a progress bar with rate and ETA on stderr (rank 0 only)."""
    zero_stage: int = 0
    """Shard training state over the processes of a launch (accelerate launch / torchrun),
    as ZeRO does: 0 = none (every process holds all optimizer state and gradients); 1 = each
    process keeps the AdamW state of its share of the parameters only; 2 = the gradients
    too (each is summed onto the process that owns its parameter, not onto all). The updates
    are those of stage 0 up to float rounding. Needs two or more processes."""

    def __post_init__(self) -> None:
        _require_int("epochs", self.epochs, minimum=1)
        _require_int("batch_size", self.batch_size, minimum=1)
        _require_int("grad_accum_steps", self.grad_accum_steps, minimum=1)
        if self.batch_size % self.grad_accum_steps != 0:
            raise UserInputError(
                f"TrainConfig: batch_size ({self.batch_size}) must be a multiple of "
                f"grad_accum_steps ({self.grad_accum_steps}), so that every micro-batch has "
                "the same size; change one of them."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserInputError(
                f"TrainConfig: lr must be a positive finite number, got {self.lr}."
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UserInputError(
                f"TrainConfig: weight_decay must be >= 0, got {self.weight_decay}."
            )
        _require_choice("schedule", self.schedule, ("constant", "linear"))
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UserInputError(
                f"TrainConfig: warmup_ratio must be in [0, 1), got {self.warmup_ratio}."
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise UserInputError(
                f"TrainConfig: max_grad_norm must be > 0, or None to disable clipping; "
                f"got {self.max_grad_norm}."
            )
        _require_int("seed", self.seed, minimum=0)
        if self.eval_every != "epoch":
            if isinstance(self.eval_every, str):
                raise UserInputError(
                    f"TrainConfig: eval_every must be 'epoch' or a number of steps, "
                    f"got {self.eval_every!r}."
                )
            _require_int("eval_every", self.eval_every, minimum=1)
        if self.early_stopping_patience is not None:
            _require_int("early_stopping_patience", self.early_stopping_patience, minimum=1)
        if not self.early_stopping_metric:
            raise UserInputError(
                "TrainConfig: early_stopping_metric must name a metric of task.evaluate."
            )
        _require_choice("early_stopping_mode", self.early_stopping_mode, ("min", "max"))
        if self.checkpoint_every_steps is not None:
            _require_int("checkpoint_every_steps", self.checkpoint_every_steps, minimum=1)
        if self.keep_checkpoints is not None:
            _require_int("keep_checkpoints", self.keep_checkpoints, minimum=1)
        _require_choice("device", self.device, ("auto", "cpu", "cuda"))
        _require_choice("mixed_precision", self.mixed_precision, ("no", "bf16", "auto"))
        if (
            not isinstance(self.zero_stage, int)
            or isinstance(self.zero_stage, bool)
            or (self.zero_stage not in (0, 1, 2))
        ):
            raise UserInputError(
                f"TrainConfig: zero_stage must be 0 (no sharding), 1 (optimizer state) or 2 "
                f"(optimizer state and gradients), got {self.zero_stage!r}."
            )

    def micro_batch_size(self, world_size: int) -> int:
        """Examples per micro-batch on each rank when ``world_size`` ranks train."""
        per_rank, remainder = divmod(self.batch_size, self.grad_accum_steps * world_size)
        if remainder or per_rank == 0:
            raise UserInputError(
                f"TrainConfig: batch_size ({self.batch_size}) must be a multiple of "
                f"grad_accum_steps x world_size ({self.grad_accum_steps} x {world_size}); "
                "change batch_size or grad_accum_steps for this number of processes."
            )
        return per_rank


class TrainTask(Protocol[BatchT]):
    """What a trainer implements to be trained by :func:`train`.

    A task may also define ``evaluate(model) -> Mapping[str, float]`` (see
    :class:`EvaluatingTrainTask`); the loop calls it in eval mode under
    ``torch.no_grad()`` on every rank and uses rank 0's result. An ``evaluate``
    attribute that is None means no evaluation, as when it is absent. A task with
    state of its own may define the hooks of :class:`StatefulTrainTask`.
    """

    def example_lengths(self) -> Sequence[int]:
        """Length (or size proxy) of every training example; defines the example count."""
        ...

    def collate(self, indices: list[int]) -> BatchT:
        """Build the batch of these examples. Tensors found in the result (also inside
        dataclasses, mappings, lists and tuples) are moved to the training device."""
        ...

    def loss(
        self, model: nn.Module, batch: BatchT
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        """Per-example losses ``(B,)`` (unreduced, with grad) and metrics, each either
        per-example ``(B,)`` or a scalar already averaged over the batch."""
        ...


class EvaluatingTrainTask(TrainTask[BatchT], Protocol):
    """A :class:`TrainTask` that can also evaluate the model."""

    def evaluate(self, model: nn.Module) -> Mapping[str, float]:
        """Metrics on held-out data, e.g. ``{"loss": ..., "accuracy": ...}``. The model is
        on the training device; the task moves its own evaluation data there."""
        ...


class StatefulTrainTask(TrainTask[BatchT], Protocol):
    """A :class:`TrainTask` with state that changes during training and must survive a resume.

    The four methods are optional each; the loop calls those the task has.
    """

    def before_step(
        self,
        model: nn.Module,
        global_batch: Sequence[int],
        micro_batches: Sequence[Sequence[int]],
        sum_over_ranks: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """Called on every rank at the start of each optimizer step, before the first
        micro-batch, with the step's whole ``global_batch`` and this rank's share of it
        cut into ``micro_batches`` (empty when the rank has no example this step).

        For statistics of the whole step that every micro-batch's loss uses (KTO's KL
        estimate). Runs with gradients enabled unless the task disables them; the
        model is in training mode. ``sum_over_ranks`` is as in :meth:`after_optimizer_step`.
        """
        ...

    def after_optimizer_step(self, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Called on every rank after each optimizer step, before evaluation and checkpointing.

        Fold statistics gathered by ``loss`` over this step's micro-batches into the
        state. ``sum_over_ranks(t)`` returns the element-wise sum of ``t`` over all ranks
        (``t`` itself in a single process), on ``t``'s device; it is a collective, so
        every rank must call it the same number of times with tensors of the same shape
        (a rank with no examples in the step passes zeros).
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """The task's state as JSON values (floats round-trip exactly); saved in every
        checkpoint's ``state.json`` under ``"task"``. Taken on rank 0, so it must be
        the same on every rank."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when resuming (on every rank)."""
        ...


@dataclass(frozen=True)
class TrainEvent:
    """Passed to every callback after a step, an evaluation or a checkpoint (on all ranks)."""

    kind: Literal["step", "eval", "checkpoint"]
    epoch: int
    """Epoch of the step (from 0)."""
    global_step: int
    """Optimizer steps done so far."""
    metrics: Mapping[str, float]
    """The line written to metrics.jsonl for "step" and "eval"; empty for "checkpoint"."""
    checkpoint_dir: Path | None = None
    """The folder just written, for "checkpoint"."""
    rank: int = 0


TrainCallback = Callable[[TrainEvent], None]
OptimizerFactory = Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]


@dataclass
class TrainResult:
    """What :func:`train` did."""

    global_step: int
    """Optimizer steps done in total (including those before a resume)."""
    epochs_completed: int
    """Epochs finished to their last batch."""
    stopped_early: bool
    best_step: int | None
    """Step of the best evaluation, when early stopping is on and an evaluation ran."""
    best_metric: float | None
    restored_best: bool
    """True when the model now holds the weights of ``best_step`` rather than the last step."""
    last_train_loss: float | None
    """Loss of the last optimizer step run by this call (None when nothing was left to do)."""
    last_eval: dict[str, float]
    resumed_from: Path | None
    """The checkpoint this call continued from."""
    last_checkpoint: Path | None
    metrics_path: Path
    optimizer_state_elements: int = 0
    """Elements of the optimizer state tensors this rank holds at the end (for AdamW about
    twice the trainable parameters; about 1/world_size of that with ``zero_stage`` 1 or 2)."""
    gradient_elements: int = 0
    """Most gradient elements this rank held at an optimizer step, after the gradients
    were summed over the ranks (all trainable parameters' unless ``zero_stage`` is 2)."""


@dataclass
class WarmupSchedule:
    """Learning-rate multiplier by step: linear warmup, then constant or linear decay.

    A dataclass so that ``LambdaLR.state_dict()`` stores its fields as plain values.
    Step ``s`` (from 0) gets ``(s + 1) / warmup_steps`` during warmup, so no step
    runs at rate 0, and ``(total_steps - s) / (total_steps - warmup_steps)`` during
    linear decay, so the last step runs at a small positive rate.
    """

    kind: str
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        # max(..., 1): the scheduler is stepped once more after the last optimizer step,
        # which must not divide by zero when warmup covers the whole run.
        return max(self.total_steps - step, 0) / max(self.total_steps - self.warmup_steps, 1)


def default_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameters that require grad; only matrices are weight-decayed."""
    decayed = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    not_decayed = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": params, "weight_decay": weight_decay}
        for params, weight_decay in ((decayed, config.weight_decay), (not_decayed, 0.0))
        if params
    ]
    if not groups:
        raise ValueError(
            "train: the model has no parameters with requires_grad=True; nothing to train."
        )
    return torch.optim.AdamW(groups, lr=config.lr)


def train(
    model: nn.Module,
    task: TrainTask[Any],
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    optimizer_factory: OptimizerFactory | None = None,
    callbacks: Sequence[TrainCallback] = (),
    max_steps: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` in place and return what happened.

    Args:
        model: trained in place; moved to the training device.
        task: data and loss, see :class:`TrainTask`.
        config: see :class:`TrainConfig`.
        out_dir: receives ``metrics.jsonl`` and ``checkpoints/``.
        resume: continue from the newest readable checkpoint in ``out_dir`` when there
            is one (a finished run returns at once). With False, existing checkpoints
            are an error rather than being overwritten.
        optimizer_factory: builds the optimizer from the model (after it is moved to the
            device) and the config; defaults to :func:`default_optimizer`. It must build
            the same parameter groups in the same order on every run for resume to work.
        callbacks: called with a :class:`TrainEvent` after each step, evaluation and
            checkpoint. An exception raised by a callback stops training there.
        max_steps: stop after this many optimizer steps instead of after ``config.epochs``
            epochs (as many epochs as the steps need are run, the last one possibly in
            part; the learning-rate schedule spans ``max_steps``). A checkpoint is written
            at the last step.
    """
    if max_steps is not None and (
        isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1
    ):
        raise UserInputError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    runtime = Runtime.start(config)
    try:
        return _Trainer(model, task, config, Path(out_dir), runtime, callbacks, max_steps).run(
            resume=resume, optimizer_factory=optimizer_factory or default_optimizer
        )
    finally:
        runtime.close()


@contextlib.contextmanager
def distributed(config: TrainConfig) -> Iterator[Runtime]:
    """The processes of a ``torchrun`` / ``accelerate launch`` for the length of a recipe.

    Joins or creates the process group as :func:`train` does (``WORLD_SIZE > 1`` in the
    environment; gloo on CPU, nccl on CUDA) and keeps it until the block ends, so that
    every :func:`train` inside it reuses the group and the recipe can broadcast
    (``runtime.broadcast_object``) and sum (``runtime.sum_over_ranks``) around
    training. A block that ends normally waits for every rank (a barrier) before it
    destroys the group it created, so no process exits while rank 0 is still
    writing; a block left by an exception does not wait (the other ranks may
    never get there). In a single process the runtime is rank 0 of 1 and the
    collectives return their input.
    """
    runtime = Runtime.start(config)
    try:
        yield runtime
        runtime.barrier()
    finally:
        runtime.close()


def move_to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it moved to ``device``.

    Looks inside dataclasses, mappings (returned as dicts), lists and tuples
    (named tuples keep their type); other values are returned unchanged.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        moved = {
            f.name: move_to_device(getattr(batch, f.name), device)
            for f in dataclasses.fields(batch)
            if f.init
        }
        return dataclasses.replace(batch, **moved)
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(value, device) for value in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


@dataclass
class _LoopState:
    """Where training stands; saved as JSON in every checkpoint."""

    epoch: int = 0
    """Epoch to continue in."""
    batch_in_epoch: int = 0
    """Batches of that epoch already trained."""
    global_step: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)


class Runtime:
    """Device, rank and the few collective operations the loop needs.

    A recipe that does more than call :func:`train` (scores the data afterwards,
    fits a temperature, saves a model) gets one from :func:`distributed`, so that
    its work before and after training can use the same process group.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        owns_process_group: bool,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.owns_process_group = owns_process_group

    @classmethod
    def start(cls, config: TrainConfig) -> Runtime:
        _refuse_sharded_launch()
        env_world_size = int(os.environ.get("WORLD_SIZE", "1"))
        already_initialized = dist.is_available() and dist.is_initialized()
        distributed = already_initialized or env_world_size > 1
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))

        if config.device == "cuda" and not torch.cuda.is_available():
            raise UserInputError(
                "TrainConfig.device is 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'."
            )
        use_cuda = config.device == "cuda" or (
            config.device == "auto" and torch.cuda.is_available()
        )
        if use_cuda:
            device = torch.device(
                "cuda", local_rank if distributed else torch.cuda.current_device()
            )
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")

        if config.mixed_precision == "bf16" and not use_cuda:
            raise UserInputError(
                "TrainConfig.mixed_precision is 'bf16' but training runs on CPU, where bf16 is "
                "far slower than float32; use 'no', or 'auto' to get bf16 only on CUDA."
            )
        bf16 = config.mixed_precision == "bf16" or (
            config.mixed_precision == "auto" and use_cuda and torch.cuda.is_bf16_supported()
        )

        owns_process_group = False
        if env_world_size > 1 and not already_initialized:
            if not dist.is_available():
                raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            owns_process_group = True
        rank = dist.get_rank() if distributed else 0
        world_size = dist.get_world_size() if distributed else 1
        if config.zero_stage > 0 and world_size == 1:
            raise UserInputError(
                f"TrainConfig.zero_stage (--zero-stage) is {config.zero_stage}, but training runs "
                "in one process: it shards the optimizer state (and with 2 the gradients) over "
                "the processes of a launch. Run the command under accelerate launch or torchrun "
                "with two or more processes, or use zero stage 0."
            )
        return cls(rank, world_size, device, torch.bfloat16 if bf16 else None, owns_process_group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self.world_size == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather_objects(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def sum_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over all ranks, on ``tensor``'s device."""
        if self.world_size == 1:
            return tensor
        total = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(tensor.device)

    def broadcast_module(self, model: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (as DDP does at construction)."""
        if self.world_size == 1:
            return
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def all_reduce_gradient_sums(self, parameters: Sequence[nn.Parameter]) -> None:
        """Sum gradients over ranks, in flat buckets to limit the number of calls.

        A parameter with no gradient on this rank (e.g. a rank whose share of the last
        batch is empty) contributes zeros, so all ranks call the same collectives.
        """
        if self.world_size == 1:
            return
        gradients = _gradients_or_zeros(parameters)
        _sum_in_buckets(gradients, lambda flat: dist.all_reduce(flat, op=dist.ReduceOp.SUM))

    def reduce_gradient_sums_to_owners(
        self, parameters: Sequence[nn.Parameter], owners: Sequence[int]
    ) -> None:
        """Sum each gradient over ranks onto the rank ``owners[i]`` that owns ``parameters[i]``
        (ZeRO stage 2); every other rank drops that gradient (sets it to None).

        As in :meth:`all_reduce_gradient_sums`, a missing gradient contributes zeros and
        the gradients travel in flat buckets, here one run of buckets per owner.
        """
        if self.world_size == 1:
            return
        gradients = _gradients_or_zeros(parameters)
        for owner in range(self.world_size):
            owned = [i for i, p_owner in enumerate(owners) if p_owner == owner]
            _sum_in_buckets(
                [gradients[i] for i in owned],
                lambda flat, owner=owner: dist.reduce(flat, dst=owner, op=dist.ReduceOp.SUM),
                copy_back=self.rank == owner,
            )
            if self.rank != owner:
                for i in owned:
                    parameters[i].grad = None


def _gradients_or_zeros(parameters: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    """The gradient of every parameter, a zero one set where there is none."""
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    return [p.grad for p in parameters]  # type: ignore[misc]


def _sum_in_buckets(
    gradients: Sequence[torch.Tensor],
    collective: Callable[[torch.Tensor], Any],
    *,
    copy_back: bool = True,
) -> None:
    """Run ``collective`` (an in-place sum over ranks) on flat copies of the gradients,
    bucket by bucket, and copy each result back into the gradients when ``copy_back``."""
    for bucket in _buckets(gradients):
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        collective(flat)
        if copy_back:
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()


class _StepTotals:
    """Sums of losses and task metrics over the micro-batches of one step, on one rank."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(
        self,
        per_example_losses: torch.Tensor,
        metrics: Mapping[str, torch.Tensor],
        num_examples: int,
    ) -> None:
        self._add("loss", per_example_losses.detach().double().sum(), num_examples)
        for name, value in metrics.items():
            if name in _LOOP_METRIC_NAMES:
                raise ValueError(
                    f"task.loss returned a metric named {name!r}, which the loop itself logs; "
                    f"rename it (reserved: {sorted(_LOOP_METRIC_NAMES)})."
                )
            value = torch.as_tensor(value).detach().double()
            if value.ndim == 0:  # a batch mean: weight it by the micro-batch size
                self._add(name, value * num_examples, num_examples)
            elif value.shape == (num_examples,):
                self._add(name, value.sum(), num_examples)
            else:
                raise ValueError(
                    f"task.loss returned metric {name!r} with shape {tuple(value.shape)} for a "
                    f"micro-batch of {num_examples} examples; expected a scalar or ({num_examples},)."
                )

    def _add(self, name: str, total: torch.Tensor, count: int) -> None:
        self.sums[name] = self.sums[name] + total if name in self.sums else total
        self.counts[name] = self.counts.get(name, 0) + count

    def as_floats(self) -> dict[str, tuple[float, int]]:
        return {name: (float(total.item()), self.counts[name]) for name, total in self.sums.items()}


class _MetricsLog:
    """Appends JSON lines to metrics.jsonl on rank 0."""

    def __init__(self, path: Path, enabled: bool, resumed_at_step: int | None) -> None:
        self.path = path
        self._file = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resumed_at_step is not None and path.is_file():
            # Lines after the checkpoint are replayed by this run; drop them (and a torn last line).
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("step", 0) <= resumed_at_step:
                        kept.append(line + "\n")
        path.write_text("".join(kept))
        self._file = path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Trainer:
    """One call of :func:`train`; holds what the steps share."""

    def __init__(
        self,
        model: nn.Module,
        task: TrainTask[Any],
        config: TrainConfig,
        out_dir: Path,
        runtime: Runtime,
        callbacks: Sequence[TrainCallback],
        max_steps: int | None = None,
    ) -> None:
        self.model = model
        self.task = task
        self.config = config
        self.out_dir = out_dir
        self.checkpoint_root = out_dir / "checkpoints"
        self.runtime = runtime
        self.callbacks = list(callbacks)
        self.evaluate: Callable[[nn.Module], Mapping[str, float]] | None = getattr(
            task, "evaluate", None
        )
        self.before_step = getattr(task, "before_step", None)
        self.after_optimizer_step = getattr(task, "after_optimizer_step", None)
        if config.early_stopping_patience is not None and self.evaluate is None:
            raise ValueError(
                "TrainConfig.early_stopping_patience is set but the task has no evaluate(model) "
                "method; add one or set early_stopping_patience=None."
            )
        self.sampler = LengthGroupedBatchSampler(
            task.example_lengths(),
            config.batch_size,
            seed=config.seed,
            group_by_length=config.group_by_length,
        )
        self.examples_digest = hashlib.sha256(
            ",".join(str(length) for length in self.sampler.lengths).encode()
        ).hexdigest()
        """sha256 of the example lengths the batch order is computed from (saved in checkpoints)."""
        self.micro_batch_size = config.micro_batch_size(runtime.world_size)
        self.max_steps = max_steps
        steps_per_epoch = len(self.sampler)
        self.num_epochs = (
            config.epochs if max_steps is None else math.ceil(max_steps / max(steps_per_epoch, 1))
        )
        self.total_steps = config.epochs * steps_per_epoch if max_steps is None else max_steps
        self.state = _LoopState()
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.last_checkpoint: Path | None = None

    def run(self, *, resume: bool, optimizer_factory: OptimizerFactory) -> TrainResult:
        model, config = self.model, self.config
        model.to(self.runtime.device)
        model.zero_grad(set_to_none=True)
        self.optimizer = optimizer_factory(model, config)
        self.parameters = [
            p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad
        ]
        self.owners: list[int] | None = None
        """Rank that steps each of ``self.parameters`` (zero_stage 1 and 2), else None."""
        if config.zero_stage > 0:
            self.optimizer, self.owners = _shard_optimizer(
                self.optimizer, self.parameters, self.runtime
            )
        self.most_gradient_elements = 0
        warmup_steps = math.ceil(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupSchedule(config.schedule, warmup_steps, self.total_steps)
        )

        checkpoint = self._find_checkpoint(resume)
        if checkpoint is None:
            _seed_everything(config.seed + self.runtime.rank)
            self.runtime.broadcast_module(model)
        else:
            self._restore(checkpoint)

        metrics_log = _MetricsLog(
            self.out_dir / "metrics.jsonl",
            enabled=self.runtime.is_main,
            resumed_at_step=None if checkpoint is None else checkpoint.step,
        )
        progress = progress_bar(
            total=self.total_steps,
            initial=self.state.global_step,
            description="training",
            unit="step",
            enabled=config.progress and self.runtime.is_main,
        )
        last_train_loss = None
        try:
            model.train()
            for epoch, batch_index, global_batch, end_of_epoch in self._remaining_batches():
                record = {"split": "train", "epoch": epoch, "step": self.state.global_step + 1}
                record |= self._train_step(global_batch)
                self.state.global_step += 1
                self.state.batch_in_epoch = batch_index + 1
                last_train_loss = record["loss"]
                metrics_log.write(record)
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")
                self._notify("step", epoch, record)

                if self._evaluation_due(end_of_epoch):
                    eval_record = {"split": "eval", "epoch": epoch, "step": self.state.global_step}
                    eval_record |= self._evaluate_and_track_best()
                    metrics_log.write(eval_record)
                    self._notify("eval", epoch, eval_record)
                if end_of_epoch:
                    self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
                every = config.checkpoint_every_steps
                if (
                    end_of_epoch
                    or self.state.stopped_early
                    or (every is not None and self.state.global_step % every == 0)
                    or self.state.global_step == self.max_steps
                ):
                    self._checkpoint(epoch)
                if self.state.stopped_early:
                    break
        finally:
            progress.close()
            metrics_log.close()

        restored_best = False
        if self.best_weights is not None and self.state.best_step != self.state.global_step:
            _load_weights(model, self.best_weights, source="best weights kept in memory")
            restored_best = True
        return TrainResult(
            global_step=self.state.global_step,
            epochs_completed=self.state.epoch,
            stopped_early=self.state.stopped_early,
            best_step=self.state.best_step,
            best_metric=self.state.best_metric,
            restored_best=restored_best,
            last_train_loss=last_train_loss,
            last_eval=dict(self.state.last_eval),
            resumed_from=None if checkpoint is None else checkpoint.path,
            last_checkpoint=self.last_checkpoint,
            metrics_path=self.out_dir / "metrics.jsonl",
            optimizer_state_elements=_optimizer_state_elements(self.optimizer),
            gradient_elements=self.most_gradient_elements,
        )

    def _remaining_batches(self) -> Iterator[tuple[int, int, list[int], bool]]:
        """(epoch, batch index, global batch, is last of epoch) for the batches not yet trained."""
        if self.state.stopped_early:
            return
        first_epoch, skip = self.state.epoch, self.state.batch_in_epoch
        for epoch in range(first_epoch, self.num_epochs):
            batches = self.sampler.batches(epoch)
            start = skip if epoch == first_epoch else 0
            for batch_index in range(start, len(batches)):
                if self.max_steps is not None and self.state.global_step >= self.max_steps:
                    return
                yield epoch, batch_index, batches[batch_index], batch_index == len(batches) - 1

    def _train_step(self, global_batch: list[int]) -> dict[str, float]:
        started = time.perf_counter()
        runtime = self.runtime
        num_examples = len(global_batch)
        totals = _StepTotals()
        rank_share = shard_batch(global_batch, runtime.rank, runtime.world_size)
        micro_batches = split_micro_batches(rank_share, self.micro_batch_size)
        if self.before_step is not None:
            with runtime.autocast():
                self.before_step(self.model, global_batch, micro_batches, runtime.sum_over_ranks)
        for micro_indices in micro_batches:
            batch = move_to_device(self.task.collate(micro_indices), runtime.device)
            with runtime.autocast():
                per_example_losses, metrics = self.task.loss(self.model, batch)
            if per_example_losses.shape != (len(micro_indices),):
                raise ValueError(
                    f"task.loss returned losses of shape {tuple(per_example_losses.shape)} for a "
                    f"micro-batch of {len(micro_indices)} examples; return one unreduced loss per "
                    "example, shape (B,): the loop does the averaging."
                )
            # This micro-batch's share of (sum of per-example losses) / (examples in the global batch).
            (per_example_losses.float().sum() / num_examples).backward()
            totals.add(per_example_losses, metrics, len(micro_indices))

        if self.config.zero_stage == 2:
            assert self.owners is not None
            runtime.reduce_gradient_sums_to_owners(self.parameters, self.owners)
            grad_norm = self._clip_sharded_gradients()
        else:
            runtime.all_reduce_gradient_sums(self.parameters)
            gradients = [p.grad for p in self.parameters if p.grad is not None]
            if self.config.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    self.parameters, self.config.max_grad_norm
                )
            elif gradients:
                grad_norm = torch.nn.utils.get_total_norm(gradients)
            else:
                grad_norm = torch.zeros(())
        self.most_gradient_elements = max(
            self.most_gradient_elements,
            sum(p.grad.numel() for p in self.parameters if p.grad is not None),
        )
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_optimizer_step is not None:
            self.after_optimizer_step(runtime.sum_over_ranks)

        merged: dict[str, list[float]] = {}
        for rank_totals in runtime.gather_objects(totals.as_floats()):
            for name, (total, count) in rank_totals.items():
                merged.setdefault(name, [0.0, 0])
                merged[name][0] += total
                merged[name][1] += count
        averages = {name: total / count for name, (total, count) in merged.items()}
        elapsed = time.perf_counter() - started
        return {
            "loss": averages.pop("loss"),
            "lr": lr,
            "grad_norm": float(grad_norm.item()),
            "examples_per_s": num_examples / max(elapsed, 1e-9),
            "num_examples": num_examples,
            **averages,
        }

    def _clip_sharded_gradients(self) -> torch.Tensor:
        """The global norm of gradients sharded over the ranks (each rank holds its owned
        parameters' only), clipping them to ``max_grad_norm`` as ``clip_grad_norm_`` does."""
        owned = [p for p in self.parameters if p.grad is not None]
        local_norm = torch.nn.utils.get_total_norm([p.grad for p in owned]).to(self.runtime.device)
        grad_norm = self.runtime.sum_over_ranks(local_norm.double().square()).sqrt().float()
        if self.config.max_grad_norm is not None and owned:
            torch.nn.utils.clip_grads_with_norm_(owned, self.config.max_grad_norm, grad_norm)
        return grad_norm

    def _evaluation_due(self, end_of_epoch: bool) -> bool:
        if self.evaluate is None:
            return False
        if self.config.eval_every == "epoch":
            return end_of_epoch
        return self.state.global_step % self.config.eval_every == 0

    def _evaluate_and_track_best(self) -> dict[str, float]:
        assert self.evaluate is not None
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.runtime.autocast():
                raw = self.evaluate(model)
        finally:
            model.train(was_training)
        metrics = self.runtime.broadcast_object({name: float(value) for name, value in raw.items()})
        self.state.last_eval = metrics

        config, state = self.config, self.state
        if config.early_stopping_patience is None:
            return metrics
        if config.early_stopping_metric not in metrics:
            raise UserInputError(
                f"TrainConfig.early_stopping_metric is {config.early_stopping_metric!r} but "
                f"task.evaluate returned only {sorted(metrics)}; set early_stopping_metric to one of them."
            )
        value = metrics[config.early_stopping_metric]
        best = state.best_metric
        improved = not math.isnan(value) and (
            best is None or (value < best if config.early_stopping_mode == "min" else value > best)
        )
        if improved:
            state.best_metric, state.best_step = value, state.global_step
            state.evals_without_improvement = 0
            self.best_weights = {
                name: tensor.detach().to("cpu", copy=True)
                for name, tensor in _checkpointed_tensors(model).items()
            }
        else:
            state.evals_without_improvement += 1
            state.stopped_early = state.evals_without_improvement >= config.early_stopping_patience
        return metrics

    def _checkpoint(self, epoch: int) -> None:
        contents = None
        if self.owners is not None:  # a ZeroRedundancyOptimizer: every rank sends rank 0 its shard
            self.optimizer.consolidate_state_dict(to=0)  # type: ignore[attr-defined]
        if self.runtime.is_main:
            best_is_current = self.state.best_step == self.state.global_step
            optimizer_state = self.optimizer.state_dict()
            if self.owners is not None:
                # ZeroRedundancyOptimizer keeps the gathered shards (a host copy of the whole
                # state) until the next consolidation; nothing reads them after state_dict.
                self.optimizer._all_state_dicts = []  # type: ignore[attr-defined]
            contents = CheckpointContents(
                model=_checkpointed_tensors(self.model),
                best_model=None if best_is_current else self.best_weights,
                optimizer=optimizer_state,
                scheduler=self.scheduler.state_dict(),
                state={
                    "loop": dataclasses.asdict(self.state),
                    "world_size": self.runtime.world_size,
                    "config": dataclasses.asdict(self.config),
                    "examples_digest": self.examples_digest,
                    **self._task_state(),
                },
            )
        path = write_checkpoint(
            self.checkpoint_root,
            self.state.global_step,
            contents,
            rank=self.runtime.rank,
            device=self.runtime.device,
            barrier=self.runtime.barrier,
        )
        if self.runtime.is_main:
            prune_checkpoints(self.checkpoint_root, self.config.keep_checkpoints)
        self.runtime.barrier()
        self.last_checkpoint = path
        self._notify("checkpoint", epoch, {}, checkpoint_dir=path)

    def _task_state(self) -> dict[str, Any]:
        """``{"task": task.state_dict()}`` for a task with state, else empty."""
        state_dict = getattr(self.task, "state_dict", None)
        return {} if state_dict is None else {"task": state_dict()}

    def _restore_task_state(self, checkpoint: Checkpoint) -> None:
        load_state_dict = getattr(self.task, "load_state_dict", None)
        if load_state_dict is None:
            return
        if "task" in checkpoint.state:
            load_state_dict(checkpoint.state["task"])
        elif self._task_state().get("task"):
            warnings.warn(
                f"{checkpoint.path / 'state.json'} holds no task state (it was written by a "
                "version without it); the task continues from its initial state, so the result "
                "may differ from an uninterrupted run.",
                stacklevel=4,
            )

    def _find_checkpoint(self, resume: bool) -> Checkpoint | None:
        if not resume:
            if complete_checkpoints(self.checkpoint_root):
                raise FileExistsError(
                    f"{self.checkpoint_root} holds checkpoints of an earlier run and resume=False; "
                    "pass resume=True to continue that run, or use an empty out_dir."
                )
            return None
        checkpoint = None
        if self.runtime.is_main:
            checkpoint = read_latest_checkpoint(self.checkpoint_root, rank=0)
        chosen = self.runtime.broadcast_object(None if checkpoint is None else str(checkpoint.path))
        if chosen is not None and checkpoint is None:
            checkpoint = read_checkpoint(Path(chosen), rank=self.runtime.rank)
        return checkpoint

    def _restore(self, checkpoint: Checkpoint) -> None:
        saved_digest = checkpoint.state.get("examples_digest")
        if saved_digest is not None and saved_digest != self.examples_digest:
            warnings.warn(
                f"Resuming from {checkpoint.path}, but the training examples (their number or "
                "lengths) differ from that run's, so the batch order differs: the resumed epoch "
                "may skip some examples and repeat others. Resume with the same data and "
                "settings, or use an empty output folder.",
                stacklevel=3,
            )
        saved_config = checkpoint.state.get("config", {})
        changed = {
            name: (saved_config.get(name), value)
            for name, value in dataclasses.asdict(self.config).items()
            if name not in ("progress", "device") and saved_config.get(name) != value
        }
        if changed:
            warnings.warn(
                f"Resuming from {checkpoint.path} with a changed config (name: (saved, now)): "
                f"{changed}; the result will differ from an uninterrupted run.",
                stacklevel=3,
            )
        _load_weights(
            self.model, checkpoint.model, source=str(checkpoint.path / "model.safetensors")
        )
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        self.state = _LoopState(**checkpoint.state["loop"])
        self._restore_task_state(checkpoint)
        self.last_checkpoint = checkpoint.path
        if self.config.early_stopping_patience is not None and self.state.best_step is not None:
            self.best_weights = checkpoint.best_model or checkpoint.model
        if checkpoint.rng is not None:
            restore_rng_state(*checkpoint.rng, device=self.runtime.device)
        else:
            warnings.warn(
                f"{checkpoint.path} has no RNG state for rank {self.runtime.rank} (it was written by "
                f"{checkpoint.state.get('world_size')} processes); reseeding, so dropout will not "
                "replay the uninterrupted run exactly.",
                stacklevel=3,
            )
            _seed_everything(self.config.seed + self.runtime.rank + self.state.global_step)

    def _notify(
        self,
        kind: Literal["step", "eval", "checkpoint"],
        epoch: int,
        metrics: Mapping[str, float],
        checkpoint_dir: Path | None = None,
    ) -> None:
        event = TrainEvent(
            kind=kind,
            epoch=epoch,
            global_step=self.state.global_step,
            metrics=metrics,
            checkpoint_dir=checkpoint_dir,
            rank=self.runtime.rank,
        )
        for callback in self.callbacks:
            callback(event)


def _checkpointed_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters and buffers of ``model``, by ``state_dict`` name.

    Frozen parameters are left out: they do not change, and the caller loads them
    from the same source when rebuilding the model.
    """
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name for name, _ in model.named_buffers()}
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name in trainable or name in buffers
    }


def _load_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    expected = set(_checkpointed_tensors(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise UserInputError(
            f"{source} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]} "
            f"({len(missing)} and {len(unexpected)} in all). Was it written for another model, or "
            "with other parameters frozen?"
        )
    model.load_state_dict(dict(tensors), strict=False)


_SHARDED_LAUNCHES = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP"}
"""Variables ``accelerate launch`` sets for a DeepSpeed or FSDP config -> the engine's name."""


def _refuse_sharded_launch() -> None:
    """A DeepSpeed / FSDP launch would train plainly data-parallel here; say so instead."""
    for variable, engine in _SHARDED_LAUNCHES.items():
        if os.environ.get(variable, "false").lower() == "true":
            raise UserInputError(
                f"accelerate launch was given a config for {engine} ({variable}=true), but prefkit's "
                f"training loop does its own data-parallel gradient all-reduce and does not hand "
                f"the model to {engine}: every GPU would hold the whole model, gradients and "
                "optimizer state, and the sharding settings would be ignored. Launch with a "
                "plain multi-GPU config instead (docs/accelerate/multi_gpu.yaml) and add "
                "--zero-stage 2 to shard the optimizer state and gradients "
                "(docs/accelerate/sharded.md)."
            )


def _shard_optimizer(
    optimizer: torch.optim.Optimizer, parameters: Sequence[nn.Parameter], runtime: Runtime
) -> tuple[torch.optim.Optimizer, list[int]]:
    """``optimizer`` (before its first step) as a ZeroRedundancyOptimizer of the same class,
    parameter groups and settings, and the rank that owns each of ``parameters``."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if not isinstance(optimizer, torch.optim.Optimizer) or optimizer.state:
        raise TypeError(
            "zero_stage: the optimizer factory must return a torch.optim.Optimizer that has not "
            f"stepped yet, got {type(optimizer).__name__}."
        )
    kinds = sorted({torch.typename(p) for p in parameters})
    if len(kinds) > 1:
        raise UserInputError(
            f"TrainConfig.zero_stage (--zero-stage) needs every trainable parameter in one dtype "
            f"(ZeroRedundancyOptimizer's condition), but the model trains {', '.join(kinds)}; "
            "load the model in one dtype (float32; --mixed-precision bf16 keeps float32 weights), "
            "or use zero stage 0."
        )
    groups = [
        {**group, "params": [p for p in group["params"] if p.requires_grad]}
        for group in optimizer.param_groups
    ]
    # The settings the class takes as arguments (AdamW's defaults also hold a fixed flag);
    # every group carries all of them anyway.
    accepted = inspect.signature(type(optimizer)).parameters
    sharded = ZeroRedundancyOptimizer(
        [group for group in groups if group["params"]],
        optimizer_class=type(optimizer),
        # The parameters become views into one flat buffer per owner, so the updated ones
        # are broadcast in one call per owner rather than one per parameter (in
        # bench/train_zero.py stage 1 ran at 0.71x stage 0's steps/s without it, 0.90x with it).
        parameters_as_bucket_view=True,
        **{name: value for name, value in optimizer.defaults.items() if name in accepted},
    )
    mine = {id(p) for group in sharded.optim.param_groups for p in group["params"]}
    owned_by_rank = runtime.gather_objects(
        [index for index, p in enumerate(parameters) if id(p) in mine]
    )
    owners = [-1] * len(parameters)
    for rank, indices in enumerate(owned_by_rank):
        for index in indices:
            owners[index] = rank
    if -1 in owners:
        raise RuntimeError("ZeroRedundancyOptimizer left a trainable parameter without an owner")
    return sharded, owners


def _optimizer_state_elements(optimizer: torch.optim.Optimizer) -> int:
    """Elements of the state tensors that this rank's optimizer holds (its shard's when sharded)."""
    local = getattr(optimizer, "optim", optimizer)  # a ZeroRedundancyOptimizer's own shard
    return sum(
        value.numel()
        for state in local.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _buckets(tensors: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Consecutive runs of same dtype and device, each at most the bucket size (or one tensor)."""
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        fits = size + tensor.numel() <= _ALL_REDUCE_BUCKET_ELEMENTS
        if bucket and (
            not fits or tensor.dtype != bucket[0].dtype or tensor.device != bucket[0].device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    if bucket:
        yield bucket


def _require_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"TrainConfig: {name} must be an integer >= {minimum}, got {value!r}.")


def _require_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"TrainConfig: {name} must be one of {list(choices)}, got {value!r}.")
