"""Pairs whose label is probably wrong: out-of-fold reward models.

The pairs are split into ``folds`` seeded folds; for each fold an embedding
reward model (:func:`prefkit.rm.train.train_reward_model`, Bradley-Terry on
frozen-encoder features: seconds per fold) is trained on the other folds and
scores the held-out pairs, so no pair is judged by a model that saw its label.
``P(label) = sigmoid(r_labelled - r_other)``; a pair is flagged when the model
contradicts its label with probability ``1 - P(label)`` above ``threshold``.
With annotator votes, the share of votes that agree with the label is reported
beside it (``vote_agreement``).

Every scored record carries ``metadata["noise"]``: ``p_label``, ``p_a`` (the
model's probability that ``a`` is better), ``fold``, ``flagged`` and, with
votes, ``vote_agreement``. ``action`` decides what happens to flagged pairs:
``flag`` keeps them as they are, ``drop`` removes them, ``flip`` swaps the
outcome (``a`` <-> ``b``; a soft label becomes ``1 - soft_label``; the votes
stay as cast), ``soften`` sets ``soft_label = w * share_a + (1 - w) * p_a`` with
``share_a`` the vote share for ``a`` (a tie vote counts one half; without votes
the hard label, 1 or 0) and ``w = soften_weight``. Ties are not judged (kept and
counted); records that are not pairs follow ``on_error``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prefkit.curate.stats import CurateStats, RecordProblems
from prefkit.data.errors import OnError
from prefkit.data.records import AnyRecord, PairwiseRecord, render_text
from prefkit.data.write import write_records


@dataclass
class NoiseConfig:
    """Settings of ``prefkit curate noise`` / :func:`score_label_noise`."""

    folds: int = 5
    """Out-of-fold reward models: each scores the pairs it was not trained on."""
    threshold: float = 0.7
    """Flag a pair when the out-of-fold model prefers the other response with probability above this."""
    action: Literal["flag", "drop", "flip", "soften"] = "flag"
    """What to do with flagged pairs: flag (keep, marked), drop, flip the label, or soften it."""
    soften_weight: float = 0.5
    """soften: weight of the vote share (or the hard label) in the soft label; the model gets the rest."""
    backbone: str | None = None
    """Encoder checkpoint folder; none = the packaged all-MiniLM-L6-v2."""
    features: str = "response,length,stats"
    """Features of the embedding reward models (see prefkit rm train --features)."""
    epochs: int | None = None
    """Training passes per fold; none = enough for about 300 optimizer steps, between 4 and 20
    passes (a small fold needs more passes than prefkit rm train's default of 4)."""
    max_length: int = 256
    """Tokens per text embedded."""
    seed: int = 0
    """Seed of the fold split and of each fold's training."""
    cache_dir: str | None = None
    """Embedding cache folder; none = the reward model's default cache."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"NoiseConfig: folds must be >= 2, got {self.folds}")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"NoiseConfig: threshold must be in [0, 1), got {self.threshold}")
        if self.action not in ("flag", "drop", "flip", "soften"):
            raise ValueError(
                f"NoiseConfig: action must be flag, drop, flip or soften, got {self.action!r}"
            )
        if not 0.0 <= self.soften_weight <= 1.0:
            raise ValueError(
                f"NoiseConfig: soften_weight must be in [0, 1], got {self.soften_weight}"
            )


@dataclass
class NoiseReport:
    """What :func:`score_label_noise` did."""

    stats: CurateStats
    scored: int = 0
    """Pairs judged."""
    ties: int = 0
    """Ties (kept, not judged)."""
    flagged_ids: list[str] = field(default_factory=list)
    """Flagged pairs, most confidently contradicted first."""
    examples: list[dict[str, Any]] = field(default_factory=list)
    """The most confidently contradicted pairs (id, p_label, vote agreement, texts cut short)."""
    fold_accuracy: list[float] = field(default_factory=list)
    """Per fold, the share of held-out labels the model agrees with."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.to_dict(),
            "scored": self.scored,
            "ties": self.ties,
            "flagged": len(self.flagged_ids),
            "fold_accuracy": [round(value, 4) for value in self.fold_accuracy],
            "examples": self.examples,
        }


def vote_share_a(record: PairwiseRecord) -> float | None:
    """Share of cast votes for ``a`` (a tie vote counts one half); ``None`` without votes."""
    cast = [vote for vote in record.votes or () if vote is not None]
    if not cast:
        return None
    return sum({"a": 1.0, "b": 0.0, "tie": 0.5}[vote] for vote in cast) / len(cast)


def fold_of(count: int, folds: int, seed: int) -> np.ndarray:
    """(N,) fold of each pair: a seeded permutation dealt round-robin."""
    order = np.random.default_rng(seed).permutation(count)
    assignment = np.empty(count, dtype=np.int64)
    assignment[order] = np.arange(count) % folds
    return assignment


def out_of_fold_p_a(
    pairs: list[PairwiseRecord], config: NoiseConfig
) -> tuple[np.ndarray, list[float]]:
    """(N,) out-of-fold P(a better) of every pair and each fold's held-out accuracy."""
    from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

    folds = fold_of(len(pairs), config.folds, config.seed)
    p_a = np.zeros(len(pairs), dtype=np.float64)
    accuracy = []
    batch_size = 32
    steps_per_epoch = math.ceil(len(pairs) * (config.folds - 1) / config.folds / batch_size)
    epochs = config.epochs or min(20, max(4, math.ceil(300 / steps_per_epoch)))
    train_config = RMTrainConfig(
        mode="embedding",
        backbone=config.backbone,
        loss="bradley-terry",
        features=config.features,
        max_length=config.max_length,
        cache_dir=config.cache_dir,
        train=default_train_config(
            "embedding",
            epochs=epochs,
            batch_size=batch_size,
            seed=config.seed,
            progress=config.progress,
        ),
    )
    with tempfile.TemporaryDirectory(prefix="prefkit-noise-") as scratch:
        for fold in range(config.folds):
            held_out = np.flatnonzero(folds == fold)
            training = [pairs[i] for i in np.flatnonzero(folds != fold)]
            trained = train_reward_model(
                training,
                train_config,
                Path(scratch) / f"fold-{fold}",
                resume=False,
                log=lambda _: None,
            )
            prompts = [render_text(pairs[i].prompt) for i in held_out]
            rewards_a = trained.model.score(
                prompts, [render_text(pairs[i].response_a) for i in held_out]
            )
            rewards_b = trained.model.score(
                prompts, [render_text(pairs[i].response_b) for i in held_out]
            )
            margin = (rewards_a - rewards_b).astype(np.float64)
            fold_p_a = 0.5 * (1.0 + np.tanh(0.5 * margin))  # sigmoid, without overflow
            p_a[held_out] = fold_p_a
            labels_a = np.array([pairs[i].outcome == "a" for i in held_out])
            accuracy.append(float(np.mean((fold_p_a > 0.5) == labels_a)))
    return p_a, accuracy


def score_label_noise(
    records: Iterable[AnyRecord],
    out_path: str | os.PathLike[str],
    config: NoiseConfig | None = None,
    *,
    on_error: OnError = "raise",
    rejects_path: str | os.PathLike[str] | None = None,
    num_examples: int = 10,
) -> NoiseReport:
    """Score every pair out of fold, apply ``action`` and write the records; see the module docstring."""
    config = config or NoiseConfig()
    stats = CurateStats("noise")
    problems = RecordProblems("noise", on_error, Path(rejects_path) if rejects_path else None)
    report = NoiseReport(stats)
    kept: list[AnyRecord | None] = []
    try:
        for record in records:
            stats.n_read += 1
            if not isinstance(record, PairwiseRecord):
                problems.reject(
                    record,
                    None,
                    f"expected a pairwise record, found a {record.kind} record",
                    "not_a_pair",
                    hint="Convert to pairs first (prefkit data convert --to pairwise)",
                )
                stats.dropped["rejected_not_a_pair"] += 1
                continue
            kept.append(record)
    finally:
        problems.close()
    judged = [i for i, record in enumerate(kept) if record.outcome != "tie"]
    pairs: list[PairwiseRecord] = [kept[i] for i in judged]  # type: ignore[misc]
    if len(pairs) < config.folds:
        raise ValueError(
            f"noise: {len(pairs)} pairs with a label; need at least {config.folds} (one per fold)"
        )
    p_a, report.fold_accuracy = out_of_fold_p_a(pairs, config)
    report.scored = len(pairs)
    report.ties = len(kept) - len(pairs)
    folds = fold_of(len(pairs), config.folds, config.seed)
    contradicted: list[tuple[float, int]] = []  # (P(label), index into pairs)
    for index, (position, record) in enumerate(zip(judged, pairs, strict=True)):
        probability = float(p_a[index])
        p_label = probability if record.outcome == "a" else 1.0 - probability
        share = vote_share_a(record)
        noise: dict[str, Any] = {
            "p_label": round(p_label, 6),
            "p_a": round(probability, 6),
            "fold": int(folds[index]),
            "flagged": 1.0 - p_label > config.threshold,
        }
        if share is not None:
            noise["vote_agreement"] = round(share if record.outcome == "a" else 1.0 - share, 6)
        kept[position] = _act(record, noise, probability, share, config, stats)
        if noise["flagged"]:
            contradicted.append((p_label, index))
    contradicted.sort()
    report.flagged_ids = [pairs[index].id for _, index in contradicted]
    for p_label, index in contradicted[:num_examples]:
        original = pairs[index]
        share = vote_share_a(original)
        report.examples.append(
            {
                "id": original.id,
                "outcome": original.outcome,
                "p_label": round(p_label, 4),
                "vote_agreement": None
                if share is None
                else round(share if original.outcome == "a" else 1.0 - share, 4),
                "prompt": render_text(original.prompt)[:160],
                "response_a": render_text(original.response_a)[:160],
                "response_b": render_text(original.response_b)[:160],
            }
        )
    written = [record for record in kept if record is not None]
    stats.n_kept = write_records(written, out_path)
    return report


def _act(
    record: PairwiseRecord,
    noise: dict[str, Any],
    p_a: float,
    share_a: float | None,
    config: NoiseConfig,
    stats: CurateStats,
) -> PairwiseRecord | None:
    """``record`` with the noise metadata and, when flagged, the action applied."""
    metadata = {**record.metadata, "noise": noise}
    if not noise["flagged"] or config.action == "flag":
        if noise["flagged"]:
            stats.changed["flagged"] += 1
        return dataclasses.replace(record, metadata=metadata)
    if config.action == "drop":
        stats.dropped["label_noise"] += 1
        return None
    if config.action == "flip":
        stats.changed["flipped"] += 1
        noise["flipped_from"] = record.outcome
        soft = None if record.soft_label is None else 1.0 - record.soft_label
        return dataclasses.replace(
            record,
            outcome="b" if record.outcome == "a" else "a",
            soft_label=soft,
            metadata=metadata,
        )
    stats.changed["softened"] += 1
    observed = share_a if share_a is not None else (1.0 if record.outcome == "a" else 0.0)
    soft_label = config.soften_weight * observed + (1.0 - config.soften_weight) * p_a
    noise["soft_label_from"] = {
        "vote_share_a" if share_a is not None else "label": observed,
        "p_a": round(p_a, 6),
    }
    return dataclasses.replace(record, soft_label=min(1.0, max(0.0, soft_label)), metadata=metadata)
