"""Length-debiased reward training: a length head trained beside the reward, dropped at inference.

The recipe is the disentangled reward of ODIN (Chen et al. 2024, "ODIN: Disentangled
Reward Mitigates Hacking in RLHF"). During training the preference loss reads
r = r_q + r_l, where r_q is the model's own head (the quality reward) and r_l a
linear length head on the same representation (the standardised features in
embedding mode, the pooled backbone state in finetune and LoRA modes). Each batch adds

    weight * (|rho(r_q, L)| - rho(r_l, L))

with rho the Pearson correlation over the batch's items and L = log(1 + characters)
of the response: the length head is pushed to carry length, the quality head to be
uncorrelated with it. ODIN's orthogonality term between the two heads' weights is
left out, since the quality head may be an MLP. After training the length head is
discarded: the saved model is the quality head alone, so scoring is unchanged.

The correlations are taken over the items of each micro-batch, so unlike the
preference loss the penalty depends on how a step's batch is split: with
``--grad-accum-steps`` or several processes (each correlating its own share of the
batch) it is not the penalty of one process holding the whole batch.

The training summary keeps the reward-length Spearman correlation of r_q + r_l
("combined", what the model would score with the length head kept) and of r_q
("quality", what it scores) on the training items and on held-out items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prefkit.data.records import AnyRecord
from prefkit.eval.metrics import spearman
from prefkit.rm.examples import Examples, ItemIndex, build_examples
from prefkit.rm.heads import RewardHead
from prefkit.rm.model import Items, ItemStore, RewardModel
from prefkit.rm.task import RewardBatch, RewardTask, losses_from_outputs, make_batch
from prefkit.train.loop import move_to_device

DEFAULT_LENGTH_DEBIAS = 0.3
"""The penalty weight of ``prefkit rm train --length-debias`` without a value. On pairs where
the chosen response is usually the longer one, weights near 1 push the quality head against
length (the length head then makes up the difference in training), so held-out rewards turn
anti-correlated with length; 0.3 took the correlation near 0 in tests/test_rm_length_debias.py."""


def item_log_lengths(records: Sequence[AnyRecord], attributes: list[str] | None) -> torch.Tensor:
    """(U,) log(1 + characters) of each item's response, in the item order that
    :func:`prefkit.rm.train.prepare` gives the records' store."""
    index = ItemIndex()
    build_examples(records, index, attributes)
    return torch.tensor([float(np.log1p(len(text))) for text in index.responses])


class LengthDebiasedModel(nn.Module):
    """A reward model and a linear length head on the representation its head reads.

    ``forward`` returns the model's (M, K) outputs and the (M,) length-head outputs.
    :meth:`release` removes the hook on the model's head; the model is then as before.
    """

    def __init__(self, model: RewardModel):
        super().__init__()
        self.reward_model = model
        head = model.head
        width = head.feature_mean.numel() if isinstance(head, RewardHead) else head.in_features
        self.length_head = nn.Linear(width, 1)
        nn.init.zeros_(self.length_head.weight)
        nn.init.zeros_(self.length_head.bias)
        self._representation: torch.Tensor | None = None
        self._hook = head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        inputs = args[0]
        if isinstance(module, RewardHead):
            inputs = (inputs - module.feature_mean) / module.feature_std
        self._representation = inputs

    def forward(self, items: Items) -> tuple[torch.Tensor, torch.Tensor]:
        quality = self.reward_model(items)
        assert self._representation is not None
        length = self.length_head(self._representation.float()).squeeze(-1)
        self._representation = None
        return quality, length

    def release(self) -> RewardModel:
        """The reward model without the length head's hook."""
        self._hook.remove()
        return self.reward_model

    @torch.inference_mode()
    def store_outputs(
        self, store: ItemStore, batch_size: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """(U,) quality rewards and (U,) length-head outputs of every item of ``store``."""
        quality, length = [], []
        device = next(self.parameters()).device
        for start in range(0, len(store.lengths), batch_size):
            rows = list(range(start, min(start + batch_size, len(store.lengths))))
            q, ell = self(move_to_device(store.batch(rows), device))
            quality.append(q.float().mean(dim=1).cpu())
            length.append(ell.float().cpu())
        return torch.cat(quality).numpy(), torch.cat(length).numpy()


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two (M,) tensors; 0 when either is constant."""
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm() + 1e-8)


@dataclass
class LengthBatch:
    """A reward batch and the log lengths of its M items."""

    batch: RewardBatch
    lengths: torch.Tensor
    """(M,) log(1 + characters) of each item's response, in the batch's item order."""


class LengthDebiasTask(RewardTask):
    """:class:`~prefkit.rm.task.RewardTask` for a :class:`LengthDebiasedModel`: the loss reads
    quality + length and adds the decorrelation penalty; evaluation reads the quality head."""

    def __init__(
        self,
        store: ItemStore,
        examples: Examples,
        loss_name: str,
        *,
        lengths: torch.Tensor,
        weight: float,
        **options: Any,
    ):
        super().__init__(store, examples, loss_name, **options)
        self.lengths = lengths
        self.weight = weight

    def collate(self, indices: list[int]) -> LengthBatch:  # type: ignore[override]
        # make_batch orders the batch's items as torch.unique does.
        unique = torch.unique(self.examples.positions[indices].clamp(min=0))
        return LengthBatch(make_batch(self.store, self.examples, indices), self.lengths[unique])

    def loss(  # type: ignore[override]
        self, model: nn.Module, batch: LengthBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert isinstance(model, LengthDebiasedModel) and batch.batch.items is not None
        quality, length = model(batch.batch.items)
        losses, metrics = losses_from_outputs(
            model.reward_model,
            quality + length[:, None],
            batch.batch,
            self.loss_name,
            self.centering,
        )
        quality_corr = pearson(quality.mean(dim=1), batch.lengths)
        length_corr = pearson(length, batch.lengths)
        penalty = self.weight * (quality_corr.abs() - length_corr)
        metrics = {
            **metrics,
            "quality_length_corr": quality_corr.detach(),
            "length_head_corr": length_corr.detach(),
        }
        return losses + penalty, metrics

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        assert isinstance(model, LengthDebiasedModel)
        return super().evaluate(model.reward_model)


def length_debias_summary(
    model: LengthDebiasedModel,
    weight: float,
    store: ItemStore,
    lengths: torch.Tensor,
    eval_store: ItemStore | None = None,
    eval_lengths: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Reward-length Spearman of quality + length ("combined") and of quality alone, on the
    training items and (when given) the held-out items."""

    def correlations(item_store: ItemStore, item_lengths: torch.Tensor) -> dict[str, float]:
        quality, length = model.store_outputs(item_store)
        values = item_lengths.numpy()
        return {
            "combined": spearman(quality + length, values),
            "quality": spearman(quality, values),
        }

    summary: dict[str, Any] = {"weight": weight, "train": correlations(store, lengths)}
    if eval_store is not None and eval_lengths is not None:
        summary["eval"] = correlations(eval_store, eval_lengths)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line: reward-length Spearman with the length head kept and dropped."""
    parts = [
        f"{split} {values['combined']:+.3f} -> {values['quality']:+.3f}"
        for split, values in summary.items()
        if isinstance(values, dict)
    ]
    return "length debias: reward-length Spearman (length head kept -> dropped): " + "; ".join(
        parts
    )
