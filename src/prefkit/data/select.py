"""Budgeted selection of scored records: sampling without replacement by exp(z / tau).

QuRating (Wettig et al. 2024, "QuRating: Selecting High-Quality Data for
Training Language Models", Sec. 3.3) samples training data without replacement
with probability proportional to ``exp(z / tau)``, ``z`` the z-normalised
quality score: ``tau -> 0`` is top-k by score, a large ``tau`` is uniform. The
draw is done with the Gumbel top-k trick (Kool et al. 2019): the records with
the ``k`` largest ``z / tau + G``, ``G`` standard Gumbel noise, are a sample of
``k`` without replacement from that distribution. ``tau = 0`` sorts by ``z``.

With a record budget the first ``k`` in that order are kept; with a token
budget, records are taken in that order while they fit (the first that does
not fit ends the selection). The selected records are written in input order,
each with ``metadata.selection = {"score", "z", "order"}``.

A record's score: a rating record's ``attribute`` (``reward`` by default, the
best-of-N output), a ranking record's best (``max``) or ``mean`` score, a
pairwise record's ``margin``. Records without a score are skipped and counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from prefkit.data.records import AnyRecord, PairwiseRecord, RankingRecord, RatingRecord
from prefkit.errors import UserInputError

__all__ = ["SelectConfig", "SelectStats", "gumbel_top_k_order", "record_score", "select_records"]


@dataclass(frozen=True)
class SelectConfig:
    """What to keep and how; exactly one budget; validated on construction."""

    budget_records: int | None = None
    """Keep this many records."""
    budget_tokens: int | None = None
    """Keep records while their response tokens (metadata.responses[i].tokens) fit in this budget."""
    temperature: float = 1.0
    """tau of exp(z / tau): 0 = top-k by score, large = uniform."""
    attribute: str = "reward"
    """The rating attribute that scores a rating record."""
    ranking_score: Literal["max", "mean"] = "max"
    """How a ranking record's scores make its score."""
    seed: int = 0
    """Seed of the Gumbel noise."""

    def __post_init__(self) -> None:
        if (self.budget_records is None) == (self.budget_tokens is None):
            raise UserInputError("give exactly one of --budget-records K and --budget-tokens T")
        for name in ("budget_records", "budget_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise UserInputError(f"{name.replace('_', '-')} must be >= 1, got {value!r}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserInputError(f"temperature must be a number >= 0, got {self.temperature!r}")


@dataclass
class SelectStats:
    """Counts: ``read == selected + not_selected + sum(skipped)``."""

    read: int = 0
    selected: int = 0
    not_selected: int = 0
    selected_tokens: int | None = None
    skipped: Counter = field(default_factory=Counter)
    """Records that could not take part, by reason (missing_score)."""

    def summary(self) -> str:
        text = f"read {self.read}, selected {self.selected}, not selected {self.not_selected}"
        if self.selected_tokens is not None:
            text += f" ({self.selected_tokens} tokens selected)"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return text


def record_score(record: AnyRecord, config: SelectConfig) -> float | None:
    """The record's score (see the module docstring), ``None`` when it has none."""
    if isinstance(record, RatingRecord):
        value = record.ratings.get(config.attribute)
    elif isinstance(record, RankingRecord):
        values = [v for v in record.preference_scores() if v is not None]
        if not values:
            return None
        value = max(values) if config.ranking_score == "max" else sum(values) / len(values)
    elif isinstance(record, PairwiseRecord):
        value = record.margin
    else:
        value = None
    return None if value is None or math.isnan(value) else float(value)


def _response_tokens(record: AnyRecord) -> int:
    info = record.metadata.get("responses")
    if not isinstance(info, list) or not all(
        isinstance(item, dict) and isinstance(item.get("tokens"), int) for item in info
    ):
        raise UserInputError(
            f"record {record.id!r}: --budget-tokens needs metadata.responses[i].tokens "
            "(written by prefkit generate); use --budget-records for other data"
        )
    return sum(item["tokens"] for item in info)


def gumbel_top_k_order(scores: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Indices in the order of a draw without replacement with P proportional to exp(z / tau)."""
    std = scores.std()
    z = (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)  # (M,)
    if temperature == 0:
        return np.argsort(-z, kind="stable")
    gumbel = np.random.default_rng(seed).gumbel(size=scores.shape)  # (M,)
    return np.argsort(-(z / temperature + gumbel), kind="stable")


def select_records(
    records: Iterable[AnyRecord], config: SelectConfig
) -> tuple[list[AnyRecord], SelectStats]:
    """The selected records in input order (see the module docstring)."""
    stats = SelectStats()
    pool: list[AnyRecord] = []
    scores: list[float] = []
    for record in records:
        stats.read += 1
        score = record_score(record, config)
        if score is None:
            stats.skipped["missing_score"] += 1
            continue
        pool.append(record)
        scores.append(score)
    values = np.asarray(scores, dtype=np.float64)
    order = gumbel_top_k_order(values, config.temperature, config.seed) if pool else np.array([])
    chosen: list[int] = []
    if config.budget_records is not None:
        chosen = [int(index) for index in order[: config.budget_records]]
    else:
        used = 0
        for index in order:
            tokens = _response_tokens(pool[int(index)])
            if used + tokens > config.budget_tokens:  # type: ignore[operator]
                break
            used += tokens
            chosen.append(int(index))
        stats.selected_tokens = used
    std = values.std() if pool else 0.0
    rank = {index: position for position, index in enumerate(chosen)}
    selected: list[AnyRecord] = []
    for index in sorted(chosen):
        record = pool[index]
        z = float((values[index] - values.mean()) / std) if std > 0 else 0.0
        info: dict[str, Any] = {"score": float(values[index]), "z": z, "order": rank[index]}
        selected.append(replace(record, metadata={**record.metadata, "selection": info}))
    stats.selected = len(selected)
    stats.not_selected = len(pool) - len(selected)
    return selected, stats
