"""The reward-model training task for the shared loop: losses per kind of feedback.

==============  ==================================  ==========================================
data            loss (``--loss auto``)               function in :mod:`prefkit.losses.reward`
==============  ==================================  ==========================================
pairs           Bradley-Terry                        ``bradley_terry_loss``
+ margins       Bradley-Terry with margin            ``bradley_terry_margin_loss``
+ strengths     strength-scaled Bradley-Terry        ``strength_scaled_bradley_terry_loss``
+ ties          Davidson (nu learned)                ``davidson_tie_loss``
+ votes/soft    soft labels (vote fraction)          ``soft_label_loss``
rankings        Plackett-Luce (ties grouped)         ``plackett_luce_loss``
ratings         masked regression, one output each   ``rating_regression_loss``
==============  ==================================  ==========================================

Precedence among pair losses: soft labels (any record with a soft label or two
or more votes), then ties, then margins, then strengths. Record weights
multiply the per-example loss. ``centering > 0`` adds the reward-centering
penalty to pair losses. The model scores the items of a batch once and the loss
reads the rewards it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prefkit.data.records import AnyRecord, PairwiseRecord, RankingRecord, RatingRecord
from prefkit.errors import UserInputError
from prefkit.losses.reward import (
    OUTCOME_A_WINS,
    OUTCOME_TIE,
    bradley_terry_loss,
    bradley_terry_margin_loss,
    davidson_tie_loss,
    plackett_luce_loss,
    rating_regression_loss,
    reward_centering_penalty,
    soft_label_loss,
    strength_scaled_bradley_terry_loss,
)
from prefkit.rm.examples import Examples, data_kind
from prefkit.rm.model import Items, ItemStore, RewardModel

LOSS_NAMES = (
    "auto",
    "bradley-terry",
    "bt-margin",
    "bt-strength",
    "davidson",
    "soft-label",
    "plackett-luce",
    "regression",
)
PAIR_LOSSES = ("bradley-terry", "bt-margin", "bt-strength", "davidson", "soft-label")


def choose_loss(records: Sequence[AnyRecord], requested: str = "auto", source: str = "data") -> str:
    """The loss for these records (see the module docstring); checks that a requested one fits."""
    kind = data_kind(records, source)
    if kind == RankingRecord.kind:
        allowed, chosen = ("plackett-luce",), "plackett-luce"
    elif kind == RatingRecord.kind:
        allowed, chosen = ("regression",), "regression"
    else:
        pairs: Sequence[PairwiseRecord] = records  # type: ignore[assignment]
        allowed = PAIR_LOSSES
        if any(
            r.soft_label is not None or (r.votes and sum(v is not None for v in r.votes) >= 2)
            for r in pairs
        ):
            chosen = "soft-label"
        elif any(r.is_tie for r in pairs):
            chosen = "davidson"
        elif any(r.margin is not None for r in pairs):
            chosen = "bt-margin"
        elif any(r.strength is not None for r in pairs):
            chosen = "bt-strength"
        else:
            chosen = "bradley-terry"
        ties = sum(r.is_tie for r in pairs)
        if requested in ("bradley-terry", "bt-margin", "bt-strength") and ties:
            raise UserInputError(
                f"{source}: {ties} of {len(pairs)} pairs are ties, which --loss {requested} cannot use; "
                "use --loss davidson or soft-label (or auto), or remove the ties."
            )
    if requested == "auto":
        return chosen
    if requested not in allowed:
        raise UserInputError(
            f"{source}: --loss {requested} does not fit {kind} records; use one of {', '.join(allowed)}."
        )
    return requested


@dataclass
class RewardBatch:
    """A batch of examples over the items it needs. Unused target fields are None."""

    items: Items | None
    """The M unique items of the batch; None when the outputs of the items are computed
    beforehand (evaluation scores every item of a store once)."""
    positions: torch.Tensor
    """(B, N) row in ``items`` of each example's n-th item; -1 = padding (rankings)."""
    outcomes: torch.Tensor | None = None
    """(B,) pairs: 0 = a wins, 1 = b wins, 2 = tie."""
    prob_a: torch.Tensor | None = None
    """(B,) pairs: fraction of votes for a (soft label)."""
    strengths: torch.Tensor | None = None
    """(B,) pairs: preference strength (1 when absent)."""
    margins: torch.Tensor | None = None
    """(B,) pairs: target margin (0 when absent)."""
    weights: torch.Tensor | None = None
    """(B,) sample weights (1 when absent)."""
    human_scores: torch.Tensor | None = None
    """(B, N) rankings: higher = better."""
    ranked: torch.Tensor | None = None
    """(B, N) rankings: True where the item is present and ranked."""
    ratings: torch.Tensor | None = None
    """(B, K) ratings: targets."""
    observed: torch.Tensor | None = None
    """(B, K) ratings: True where rated."""


def example_losses(
    model: RewardModel, batch: RewardBatch, loss_name: str, centering: float = 0.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses (B,) and metrics for ``batch`` under ``loss_name``.

    The M items of the batch (chosen and rejected alike) go through the model in
    one forward pass.
    """
    assert batch.items is not None
    return losses_from_outputs(model, model(batch.items), batch, loss_name, centering)


def losses_from_outputs(
    model: RewardModel,
    outputs: torch.Tensor,
    batch: RewardBatch,
    loss_name: str,
    centering: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example losses (B,) and metrics from item outputs already computed.

    ``outputs`` is (M, K): row m holds the model's outputs for the item that
    ``batch.positions`` calls m. ``model`` is read only for the Davidson tie parameter.
    """
    if loss_name == "regression":
        predicted = outputs[batch.positions[:, 0]]  # (B, K)
        result = rating_regression_loss(predicted, batch.ratings, batch.observed)
        return result.losses, result.metrics
    rewards = outputs.mean(dim=1)  # (M,)
    if loss_name == "plackett-luce":
        present = batch.positions >= 0  # (B, N)
        scores = rewards[batch.positions.clamp(min=0)] * present  # (B, N)
        result = plackett_luce_loss(scores, batch.human_scores, batch.ranked & present)
        return result.losses, result.metrics
    rewards_a = rewards[batch.positions[:, 0]]  # (B,)
    rewards_b = rewards[batch.positions[:, 1]]  # (B,)
    a_wins = batch.outcomes == OUTCOME_A_WINS
    chosen = torch.where(a_wins, rewards_a, rewards_b)
    rejected = torch.where(a_wins, rewards_b, rewards_a)
    if loss_name == "bradley-terry":
        result = bradley_terry_loss(chosen, rejected)
    elif loss_name == "bt-margin":
        result = bradley_terry_margin_loss(chosen, rejected, batch.margins)
    elif loss_name == "bt-strength":
        result = strength_scaled_bradley_terry_loss(chosen, rejected, batch.strengths)
    elif loss_name == "davidson":
        result = davidson_tie_loss(rewards_a, rewards_b, batch.outcomes, model.tie_log_nu)
    elif loss_name == "soft-label":
        result = soft_label_loss(rewards_a, rewards_b, batch.prob_a)
    else:
        raise ValueError(f"unknown loss {loss_name!r}; expected one of {', '.join(LOSS_NAMES[1:])}")
    losses = result.losses
    metrics = dict(result.metrics)
    if loss_name not in ("bradley-terry", "bt-margin", "bt-strength"):
        # Accuracy over decided pairs; ties contribute 0 to "correct" and to "decided".
        margins_a = (rewards_a - rewards_b).detach()
        decided = (batch.outcomes != OUTCOME_TIE).to(margins_a.dtype)
        correct = ((margins_a > 0) == a_wins).to(margins_a.dtype) * decided
        metrics = {key: value for key, value in metrics.items() if key not in ("accuracy",)}
        metrics["correct"], metrics["decided"] = correct, decided
    if centering > 0:
        losses = losses + reward_centering_penalty(rewards_a, rewards_b, centering).losses
    return losses * batch.weights, metrics


class RewardTask:
    """A :class:`~prefkit.train.loop.TrainTask` over examples of one kind."""

    def __init__(
        self,
        store: ItemStore,
        examples: Examples,
        loss_name: str,
        *,
        centering: float = 0.0,
        eval_examples: Examples | None = None,
        eval_store: ItemStore | None = None,
        eval_batch_size: int = 64,
        score_store: Callable[[RewardModel, ItemStore], torch.Tensor] | None = None,
    ):
        """``score_store(model, store)`` gives the (U, K) outputs of every held-out item for
        :meth:`evaluate`; None = ``model.store_outputs`` in this process. Several processes
        pass :func:`~prefkit.rm.train.outputs_over_ranks`, each scoring a share (the loop
        calls ``evaluate`` on every rank, so a collective in it is safe)."""
        self.store = store
        self.examples = examples
        self.loss_name = loss_name
        self.centering = centering
        self.eval_examples = eval_examples
        self.eval_store = eval_store if eval_store is not None else store
        self.eval_batch_size = eval_batch_size
        self.score_store = score_store
        lengths = torch.as_tensor(store.lengths)
        padded = examples.positions.clamp(min=0)
        # A batch is padded to its longest item, so examples are grouped by their longest item.
        self._lengths = (lengths[padded] * (examples.positions >= 0)).amax(dim=1).tolist()

    def example_lengths(self) -> list[int]:
        return self._lengths

    def collate(self, indices: list[int]) -> RewardBatch:
        return make_batch(self.store, self.examples, indices)

    def loss(
        self, model: nn.Module, batch: RewardBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return example_losses(model, batch, self.loss_name, self.centering)  # type: ignore[arg-type]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.eval_examples is None:
            return {}
        if self.score_store is None:
            return evaluate_examples(
                model,
                self.eval_store,
                self.eval_examples,
                self.loss_name,
                batch_size=self.eval_batch_size,
            )
        with torch.inference_mode():
            outputs = self.score_store(model, self.eval_store)
        return examples_metrics(model, outputs, self.eval_examples, self.loss_name)


def make_batch(store: ItemStore, examples: Examples, indices: list[int]) -> RewardBatch:
    positions = examples.positions[indices]  # (B, N)
    unique, local = torch.unique(positions.clamp(min=0), return_inverse=True)
    local = torch.where(positions >= 0, local, torch.full_like(local, -1))
    return RewardBatch(
        items=store.batch(unique.tolist()), positions=local, **_batch_targets(examples, indices)
    )


def _batch_targets(examples: Examples, indices: list[int] | slice) -> dict[str, torch.Tensor]:
    """RewardBatch target fields of the examples at ``indices`` (weights 1 unless pairs carry them)."""
    targets = {name: tensor[indices] for name, tensor in examples.targets.items()}
    count = len(examples.positions[indices])
    if examples.kind == PairwiseRecord.kind:
        targets.setdefault("weights", torch.ones(count))
    else:
        targets["weights"] = torch.ones(count)
    return targets


@torch.inference_mode()
def evaluate_examples(
    model: RewardModel,
    store: ItemStore,
    examples: Examples,
    loss_name: str,
    *,
    batch_size: int = 64,
) -> dict[str, float]:
    """Mean loss and, for pairs, accuracy over decided pairs (ties excluded).

    Scores every item of ``store`` once (see :func:`examples_metrics`).
    """
    return examples_metrics(
        model, model.store_outputs(store, batch_size=batch_size), examples, loss_name
    )


@torch.inference_mode()
def examples_metrics(
    model: RewardModel, outputs: torch.Tensor, examples: Examples, loss_name: str
) -> dict[str, float]:
    """Mean loss and accuracy of ``examples`` from ``outputs`` (U, K), the outputs of every item."""
    batch = RewardBatch(
        items=None, positions=examples.positions, **_batch_targets(examples, slice(None))
    )
    losses, metrics = losses_from_outputs(
        model, outputs.to(examples.positions.device), batch, loss_name
    )
    result = {"loss": float(losses.double().sum()) / max(len(losses), 1)}
    if "correct" in metrics:
        correct, decided = (
            float(metrics["correct"].double().sum()),
            float(metrics["decided"].double().sum()),
        )
    elif "accuracy" in metrics:
        correct, decided = float(metrics["accuracy"].double().sum()), float(len(losses))
    else:
        correct = decided = 0.0
    if decided:
        result["accuracy"] = correct / decided
    return result
