"""What a reward-model training recipe returns: one :class:`RewardTrainResult` for every recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.rm.examples import TruncationCounts
from prefkit.rm.model import RewardModel
from prefkit.train.loop import TrainResult


@dataclass(frozen=True)
class StageReport:
    """What one run of the training loop did."""

    result: TrainResult
    """The loop's result: steps, last loss, early stopping, resume point, metrics file."""
    truncation: TruncationCounts
    """What max_length did to the stage's training records."""
    metrics: dict[str, float]
    """The final model on the training records (e.g. ``loss`` and ``accuracy``)."""
    eval_truncation: TruncationCounts | None = None
    """What max_length did to the held-out records; None without them."""
    eval_metrics: dict[str, float] = field(default_factory=dict)
    """The final model on the held-out records (the best weights under early stopping); empty without them."""

    def as_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "steps": result.global_step,
            "stopped_early": result.stopped_early,
            "best_step": result.best_step if result.restored_best else None,
            "truncation": dataclasses.asdict(self.truncation),
            "eval_truncation": dataclasses.asdict(self.eval_truncation)
            if self.eval_truncation
            else None,
            "metrics": self.metrics,
            "eval_metrics": self.eval_metrics,
        }


@dataclass(frozen=True)
class RewardTrainResult:
    """A trained and saved reward model and what each stage of its training did."""

    model: RewardModel
    """The trained model (in eval mode), as saved."""
    out_dir: Path
    """The model folder."""
    loss: str
    """The training loss (``regression+bradley-terry`` for the two multi-objective stages)."""
    stages: Mapping[str, StageReport]
    """Stage name -> report, in training order: ``train`` for :func:`~prefkit.rm.train.train_reward_model`,
    ``regression`` and ``gate`` for :func:`~prefkit.rm.multiobjective.train_multiobjective`."""

    def summary(self) -> dict[str, Any]:
        """The JSON line that ``prefkit rm train`` prints."""
        summary: dict[str, Any] = {"model_dir": str(self.out_dir), "loss": self.loss}
        if self.model.attributes:
            summary["attributes"] = self.model.attributes
        for name, stage in self.stages.items():
            summary[name] = {
                "steps": stage.result.global_step,
                "train": stage.metrics,
                "eval": stage.eval_metrics,
            }
        return summary
