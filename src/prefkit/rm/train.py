"""Training a reward model from feedback records with the shared loop.

Every kind of feedback becomes examples over *items* (unique prompt-response
pairs): a pair is two items, a ranked list N items, a rating one item. The
model scores the items of a batch once and the loss reads the rewards it needs:

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
penalty to pair losses.

Truncation is explicit. Embedding mode embeds prompt and response separately,
each within ``max_length`` tokens (the prompt keeps its end, the response its
start); finetune/LoRA modes join them and, when too long, drop prompt tokens
from the start first. With ``truncation="drop"`` an example with any truncated
text is left out. The counts are printed and saved in config.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from prefkit.data.records import (
    AnyRecord,
    BinaryRecord,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    render_text,
)
from prefkit.losses.reward import (
    OUTCOME_A_WINS,
    OUTCOME_B_WINS,
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
from prefkit.progress import ProgressCounter
from prefkit.rm.encoder import resolve_backbone
from prefkit.rm.heads import parse_feature_spec
from prefkit.rm.model import (
    EmbeddingRewardModel,
    FeatureStore,
    Items,
    ItemStore,
    RewardModel,
    TokenStore,
    TransformerRewardModel,
    backbone_spec,
    tokenize_pair,
)
from prefkit.train.loop import TrainCallback, TrainConfig, TrainResult, train

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
_OUTCOME_CODES = {"a": OUTCOME_A_WINS, "b": OUTCOME_B_WINS, "tie": OUTCOME_TIE}
_VOTE_VALUES = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class RMTrainConfig:
    """Settings of ``prefkit rm train`` / :func:`train_reward_model`."""

    mode: Literal["embedding", "finetune", "lora"] = "embedding"
    """embedding: a small head on cached frozen-encoder embeddings (fast, CPU friendly);
    finetune: train the whole backbone with a scalar head; lora: LoRA adapters plus the head."""
    backbone: str | None = None
    """Local Hugging Face checkpoint folder (encoder or decoder); none = the packaged all-MiniLM-L6-v2."""
    loss: Literal[
        "auto",
        "bradley-terry",
        "bt-margin",
        "bt-strength",
        "davidson",
        "soft-label",
        "plackett-luce",
        "regression",
    ] = "auto"
    """Training loss; auto picks it from the data (pairs: Bradley-Terry, with margins/strengths
    when present; ties: Davidson; votes or soft labels: soft-label; rankings: plackett-luce;
    ratings: regression)."""
    features: str = "response,length,stats"
    """Embedding mode: comma-separated features from response, prompt, product (prompt x
    response), length (log characters and log tokens of the response), stats (surface
    statistics of the response: words, sentences, word length, punctuation, ...)."""
    head: Literal["mlp", "linear"] = "mlp"
    """Embedding mode: the head on the features."""
    hidden_size: int = 256
    """Width of the MLP head's hidden layer."""
    dropout: float = 0.3
    """Dropout in the head (embedding mode)."""
    max_length: int = 256
    """Longest input in tokens (per text in embedding mode; prompt + response otherwise)."""
    truncation: Literal["truncate", "drop"] = "truncate"
    """Inputs over max-length: truncate (the prompt loses its start, the response is kept) or drop
    the example. Counts are printed and saved either way."""
    centering: float = 0.0
    """Reward-centering coefficient c: adds c * (r_a + r_b)^2 to pair losses (0 disables)."""
    epochs: int | None = None
    """Passes over the data; none = 4 in embedding mode, 2 otherwise."""
    batch_size: int = 32
    """Examples per optimizer step."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step (same result, less memory)."""
    lr: float | None = None
    """Peak learning rate; none = 3e-4 in embedding mode, 3e-5 for finetune, 2e-4 for lora."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices."""
    warmup_ratio: float = 0.05
    """Fraction of steps for linear warmup (then linear decay)."""
    seed: int = 0
    """Seed of initialisation, dropout and batch order."""
    early_stopping_patience: int | None = None
    """With --eval data: stop after this many epochs without a lower eval loss and keep the best weights."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA path."""
    cache_dir: str | None = None
    """Embedding cache folder; none = $PREFKIT_CACHE/embeddings or ~/.cache/prefkit/embeddings."""
    embed_batch_size: int = 16
    """Texts per encoder forward pass when embedding."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; auto picks CUDA when available."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.mode not in ("embedding", "finetune", "lora"):
            raise ValueError(
                f"RMTrainConfig: mode must be embedding, finetune or lora, got {self.mode!r}."
            )
        if self.loss not in LOSS_NAMES:
            raise ValueError(
                f"RMTrainConfig: loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}."
            )
        parse_feature_spec(self.features)
        if self.head not in ("mlp", "linear"):
            raise ValueError(f"RMTrainConfig: head must be mlp or linear, got {self.head!r}.")
        if self.hidden_size < 1 or self.max_length < 4 or self.embed_batch_size < 1:
            raise ValueError(
                "RMTrainConfig: hidden_size and embed_batch_size must be >= 1, max_length >= 4."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RMTrainConfig: dropout must be in [0, 1), got {self.dropout}.")
        if self.truncation not in ("truncate", "drop"):
            raise ValueError(
                f"RMTrainConfig: truncation must be truncate or drop, got {self.truncation!r}."
            )
        if not (math.isfinite(self.centering) and self.centering >= 0):
            raise ValueError(f"RMTrainConfig: centering must be >= 0, got {self.centering}.")
        if self.lora_r < 1:
            raise ValueError(f"RMTrainConfig: lora_r must be >= 1, got {self.lora_r}.")
        # The loop's own config validates epochs, batch size, lr, ... when it is built.
        self.train_config()

    @property
    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (4 if self.mode == "embedding" else 2)

    @property
    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"embedding": 3e-4, "finetune": 3e-5, "lora": 2e-4}[self.mode]

    def train_config(
        self, *, has_eval: bool = False, num_examples: int | None = None
    ) -> TrainConfig:
        warmup_ratio = self.warmup_ratio
        if num_examples is not None:
            total_steps = self.resolved_epochs * math.ceil(num_examples / self.batch_size)
            if math.ceil(warmup_ratio * total_steps) >= total_steps:
                warmup_ratio = 0.0  # a run this short has no room for warmup
        return TrainConfig(
            epochs=self.resolved_epochs,
            batch_size=self.batch_size,
            grad_accum_steps=self.grad_accum_steps,
            lr=self.resolved_lr,
            weight_decay=self.weight_decay,
            warmup_ratio=warmup_ratio,
            seed=self.seed,
            early_stopping_patience=self.early_stopping_patience if has_eval else None,
            device=self.device,
            progress=self.progress,
            # Heads on cached features have no length to group by.
            group_by_length=self.mode != "embedding",
        )


@dataclass
class TruncationCounts:
    """What max_length did to the data."""

    max_length: int
    policy: str
    prompts_truncated: int = 0
    """Unique prompts (or prompt parts of sequences) that lost tokens."""
    responses_truncated: int = 0
    """Unique responses that lost tokens."""
    examples_dropped: int = 0
    """Examples left out because a text was too long (policy drop)."""
    examples_kept: int = 0

    def summary(self) -> str:
        text = (
            f"max length {self.max_length}: {self.prompts_truncated} prompts and "
            f"{self.responses_truncated} responses truncated"
        )
        if self.policy == "drop":
            text += f", {self.examples_dropped} examples dropped"
        return text + f"; {self.examples_kept} examples used"


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


@dataclass
class Examples:
    """All examples of one data set as tensors (E = number of examples)."""

    kind: str
    positions: torch.Tensor
    """(E, N) item ids, -1 = padding."""
    targets: dict[str, torch.Tensor]
    """RewardBatch field name -> (E,) or (E, N|K) tensor."""
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def data_kind(records: Sequence[AnyRecord], source: str = "data") -> str:
    kinds = {record.kind for record in records}
    if not records:
        raise ValueError(f"{source}: no records to train on.")
    if len(kinds) > 1:
        raise ValueError(
            f"{source}: mixed record kinds ({', '.join(sorted(kinds))}); train on one kind at a time "
            "(prefkit data convert turns ratings into pairs)."
        )
    kind = kinds.pop()
    if kind == BinaryRecord.kind:
        raise ValueError(
            f"{source}: binary (thumbs) records cannot train a reward model here yet; "
            "convert them to pairs first (prefkit data convert --to pairwise)."
        )
    return kind


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
            raise ValueError(
                f"{source}: {ties} of {len(pairs)} pairs are ties, which --loss {requested} cannot use; "
                "use --loss davidson or soft-label (or auto), or remove the ties."
            )
    if requested == "auto":
        return chosen
    if requested not in allowed:
        raise ValueError(
            f"{source}: --loss {requested} does not fit {kind} records; use one of {', '.join(allowed)}."
        )
    return requested


def rating_attributes(records: Sequence[AnyRecord]) -> list[str] | None:
    ratings = [record for record in records if isinstance(record, RatingRecord)]
    if not ratings:
        return None
    return sorted({name for record in ratings for name in record.ratings})


def record_items(record: AnyRecord) -> list[tuple[str, str]]:
    """(prompt, response) texts of the record's responses, in field order."""
    prompt = render_text(record.prompt)
    return [(prompt, render_text(response)) for _, response in record.named_responses()]


class ItemIndex:
    """Assigns ids to unique (prompt, response) pairs."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}

    def add(self, item: tuple[str, str]) -> int:
        return self.ids.setdefault(item, len(self.ids))

    @property
    def prompts(self) -> list[str]:
        return [prompt for prompt, _ in self.ids]

    @property
    def responses(self) -> list[str]:
        return [response for _, response in self.ids]


def build_examples(
    records: Sequence[AnyRecord], index: ItemIndex, attributes: list[str] | None
) -> Examples:
    """Examples of one kind of record over items registered in ``index``."""
    kind = records[0].kind
    ids = [record.id for record in records]
    if kind == PairwiseRecord.kind:
        positions, outcomes, prob_a, strengths, margins, weights = [], [], [], [], [], []
        for record in records:
            assert isinstance(record, PairwiseRecord)
            positions.append([index.add(item) for item in record_items(record)])
            outcomes.append(_OUTCOME_CODES[record.outcome])
            prob_a.append(_prob_a(record))
            strengths.append(1.0 if record.strength is None else record.strength)
            margins.append(0.0 if record.margin is None else record.margin)
            weights.append(1.0 if record.weight is None else record.weight)
        targets = {
            "outcomes": torch.tensor(outcomes, dtype=torch.long),
            "prob_a": torch.tensor(prob_a),
            "strengths": torch.tensor(strengths),
            "margins": torch.tensor(margins),
            "weights": torch.tensor(weights),
        }
        return Examples(kind, torch.tensor(positions, dtype=torch.long), targets, ids)
    if kind == RankingRecord.kind:
        width = max(len(record.responses) for record in records)  # type: ignore[union-attr]
        positions_t = torch.full((len(records), width), -1, dtype=torch.long)
        human = torch.zeros((len(records), width))
        ranked = torch.zeros((len(records), width), dtype=torch.bool)
        for row, record in enumerate(records):
            assert isinstance(record, RankingRecord)
            for column, (item, score) in enumerate(
                zip(record_items(record), record.preference_scores(), strict=True)
            ):
                positions_t[row, column] = index.add(item)
                if score is not None:
                    human[row, column], ranked[row, column] = score, True
        return Examples(kind, positions_t, {"human_scores": human, "ranked": ranked}, ids)
    assert attributes is not None
    positions_r, values, observed = [], [], []
    for record in records:
        assert isinstance(record, RatingRecord)
        positions_r.append([index.add(record_items(record)[0])])
        row_values = [record.ratings.get(name) for name in attributes]
        values.append([0.0 if value is None else value for value in row_values])
        observed.append([value is not None for value in row_values])
    targets = {
        "ratings": torch.tensor(values),
        "observed": torch.tensor(observed, dtype=torch.bool),
    }
    return Examples(kind, torch.tensor(positions_r, dtype=torch.long), targets, ids)


def _prob_a(record: PairwiseRecord) -> float:
    if record.soft_label is not None:
        return record.soft_label
    votes = [vote for vote in (record.votes or ()) if vote is not None]
    if votes:
        return sum(_VOTE_VALUES[vote] for vote in votes) / len(votes)
    return _VOTE_VALUES[record.outcome]  # type: ignore[index]


def subset_examples(examples: Examples, keep: torch.Tensor) -> Examples:
    """The examples where ``keep`` (E,) is True."""
    return Examples(
        examples.kind,
        examples.positions[keep],
        {name: tensor[keep] for name, tensor in examples.targets.items()},
        [example_id for example_id, kept in zip(examples.ids, keep.tolist(), strict=True) if kept],
    )


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
    ):
        self.store = store
        self.examples = examples
        self.loss_name = loss_name
        self.centering = centering
        self.eval_examples = eval_examples
        self.eval_store = eval_store if eval_store is not None else store
        self.eval_batch_size = eval_batch_size
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
        return evaluate_examples(
            model,
            self.eval_store,
            self.eval_examples,
            self.loss_name,
            batch_size=self.eval_batch_size,
        )


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


def _batch_to(batch: RewardBatch, device: torch.device) -> RewardBatch:
    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(device)
        if dataclasses.is_dataclass(value):
            return type(value)(
                **{f.name: move(getattr(value, f.name)) for f in dataclasses.fields(value)}
            )
        return value

    return move(batch)


# -------------------------------------------------------------------------------------------
# building models and stores


def new_model(config: RMTrainConfig, loss_name: str, attributes: list[str] | None) -> RewardModel:
    """An untrained model for ``config`` (seeded, so its initial weights are reproducible)."""
    backbone_path = resolve_backbone(config.backbone)
    backbone = backbone_spec(backbone_path)
    spec: dict[str, Any] = {
        "mode": config.mode,
        "backbone": backbone,
        "embedding_dim": backbone["hidden_size"],
        "max_length": config.max_length,
        "truncation": config.truncation,
        "loss": loss_name,
        "attributes": attributes,
        "tie_model": "davidson" if loss_name == "davidson" else None,
    }
    torch.manual_seed(config.seed)
    if config.mode == "embedding":
        spec.update(
            {
                "features": ",".join(parse_feature_spec(config.features)),
                "hidden_sizes": [config.hidden_size] if config.head == "mlp" else [],
                "dropout": config.dropout,
            }
        )
        return EmbeddingRewardModel(
            spec, cache_dir=config.cache_dir, embed_batch_size=config.embed_batch_size
        )
    lora = None
    if config.mode == "lora":
        lora = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}
        spec["lora"] = lora
    model = TransformerRewardModel.create(spec, lora)
    torch.manual_seed(config.seed)
    model.head.reset_parameters()
    return model


def build_store(
    model: RewardModel,
    index: ItemIndex,
    config: RMTrainConfig,
    counts: TruncationCounts | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ItemStore, np.ndarray]:
    """Items of ``index`` for ``model`` and a (U,) bool array of items that needed truncation."""
    prompts, responses = index.prompts, index.responses
    if isinstance(model, EmbeddingRewardModel):
        features, prompt_tokens, response_tokens = model.featurize(prompts, responses, progress)
        uses_prompt = any(name in ("prompt", "product") for name in model.features)
        prompt_cut = (prompt_tokens > config.max_length) & uses_prompt
        response_cut = response_tokens > config.max_length
        if counts is not None:
            counts.prompts_truncated += len(
                {p for p, cut in zip(prompts, prompt_cut, strict=True) if cut}
            )
            counts.responses_truncated += len(
                {r for r, cut in zip(responses, response_cut, strict=True) if cut}
            )
        return FeatureStore(torch.from_numpy(features)), prompt_cut | response_cut
    assert isinstance(model, TransformerRewardModel)
    sequences, truncated = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        tokenized = tokenize_pair(model.tokenizer, prompt, response, config.max_length)
        sequences.append(tokenized.input_ids)
        truncated.append(tokenized.prompt_truncated or tokenized.response_truncated)
        if counts is not None:
            counts.prompts_truncated += tokenized.prompt_truncated
            counts.responses_truncated += tokenized.response_truncated
    store = TokenStore(sequences, model.tokenizer.pad_token_id, model.tokenizer.padding_side)
    return store, np.array(truncated, dtype=bool)


def prepare(
    model: RewardModel,
    records: Sequence[AnyRecord],
    config: RMTrainConfig,
    attributes: list[str] | None,
    counts: TruncationCounts,
    progress: Callable[[int], None] | None = None,
) -> tuple[ItemStore, Examples]:
    index = ItemIndex()
    examples = build_examples(records, index, attributes)
    store, truncated = build_store(model, index, config, counts, progress)
    if config.truncation == "drop":
        touched = torch.as_tensor(truncated)[examples.positions.clamp(min=0)] & (
            examples.positions >= 0
        )
        keep = ~touched.any(dim=1)
        counts.examples_dropped += int((~keep).sum())
        examples = subset_examples(examples, keep)
    counts.examples_kept += len(examples)
    return store, examples


def _embedding_progress(config: RMTrainConfig, description: str) -> ProgressCounter:
    """A bar for the embedding pass (it learns its total before the first batch); shown
    in embedding mode only, the other modes' tokenization is quick."""
    return ProgressCounter(
        description, "text", enabled=config.progress and config.mode == "embedding"
    )


@dataclass
class RMTrainReport:
    """What :func:`train_reward_model` did."""

    model: RewardModel
    out_dir: Path
    loss: str
    kind: str
    truncation: TruncationCounts
    eval_truncation: TruncationCounts | None
    train_result: TrainResult
    eval_metrics: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)


def train_reward_model(
    records: Sequence[AnyRecord],
    config: RMTrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    eval_records: Sequence[AnyRecord] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainCallback] = (),
    log: Callable[[str], None] = print,
    source: str = "data",
) -> RMTrainReport:
    """Train a reward model on ``records`` and save it to ``out_dir``.

    ``out_dir`` receives the model folder (see :mod:`prefkit.rm.model`) and
    ``training/`` (metrics.jsonl and checkpoints of the shared loop; rerunning the
    same command resumes from the newest checkpoint).
    """
    out = Path(out_dir)
    kind = data_kind(records, source)
    loss_name = choose_loss(records, config.loss, source)
    if eval_records:
        eval_kind = data_kind(eval_records, "eval data")
        if eval_kind != kind:
            raise ValueError(
                f"eval data holds {eval_kind} records but the training data holds {kind} records."
            )
    attributes = rating_attributes(records)
    model = new_model(config, loss_name, attributes)
    log(
        f"{len(records)} {kind} records; loss: {loss_name}; mode: {config.mode}; "
        f"backbone: {model.spec['backbone']['path']}"
    )

    counts = TruncationCounts(config.max_length, config.truncation)
    with _embedding_progress(config, "embedding") as progress:
        store, examples = prepare(model, records, config, attributes, counts, progress)
    log(counts.summary())
    if len(examples) == 0:
        raise ValueError(
            f"{source}: no examples left after truncation policy '{config.truncation}'."
        )
    eval_counts = eval_examples = eval_store = None
    if eval_records:
        eval_counts = TruncationCounts(config.max_length, config.truncation)
        with _embedding_progress(config, "embedding eval data") as progress:
            eval_store, eval_examples = prepare(
                model, eval_records, config, attributes, eval_counts, progress
            )
        log("eval: " + eval_counts.summary())
    if isinstance(store, FeatureStore):
        model.head.set_standardization(store.features)  # type: ignore[union-attr]

    task = RewardTask(
        store,
        examples,
        loss_name,
        centering=config.centering,
        eval_examples=eval_examples,
        eval_store=eval_store,
    )
    train_config = config.train_config(
        has_eval=eval_examples is not None, num_examples=len(examples)
    )
    result = train(model, task, train_config, out / "training", resume=resume, callbacks=callbacks)
    model.eval()

    # One pass over the training items gives both the training metrics and the reward statistics.
    train_outputs = model.store_outputs(store)  # (U, K)
    train_metrics = examples_metrics(model, train_outputs, examples, loss_name)
    all_rewards = train_outputs.mean(dim=1).numpy()
    eval_metrics = dict(result.last_eval)
    if eval_examples is not None and eval_store is not None:
        eval_metrics = evaluate_examples(model, eval_store, eval_examples, loss_name)
    model.spec.update(
        {
            "reward_mean": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std()) or 1.0,
            "training": {
                "records": len(records),
                "kind": kind,
                "loss": loss_name,
                "config": dataclasses.asdict(config),
                "truncation": dataclasses.asdict(counts),
                "eval_truncation": dataclasses.asdict(eval_counts) if eval_counts else None,
                "train_metrics": train_metrics,
                "eval_metrics": eval_metrics,
                "steps": result.global_step,
            },
        }
    )
    model.save(out)
    return RMTrainReport(
        model, out, loss_name, kind, counts, eval_counts, result, eval_metrics, train_metrics
    )
