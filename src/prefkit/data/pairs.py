"""Scored candidate sets -> pairwise records (West-of-N and friends).

A scored candidate set is a :class:`~prefkit.data.records.RankingRecord` with
one reward per response (``prefkit generate --reward``, or the candidates of
``prefkit generate`` joined with the output of ``prefkit rm score`` by
:func:`attach_rewards`). Strategies:

- ``best-worst``: the highest- against the lowest-scored response (West-of-N,
  Pace et al. 2024, "West-of-N: Synthetic Preferences for Self-Improving
  Reward Models", Sec. 3);
- ``best-random``: the highest against a uniformly drawn other one (seeded per set);
- ``all``: every pair of responses, the higher-scored one first.

Selection uses ``s = reward - length_penalty * length`` (length in tokens, from
the generator's ``metadata.responses[i].tokens``, or in characters), the guard
against longer-is-better. The pair's ``margin`` is ``s_chosen - s_rejected``
(``>= 0``; the plain reward difference when there is no penalty), written to the
record's ``margin`` field so a margin Bradley-Terry loss can use it, and with
both rewards, the lengths, the reward model and the generator in ``metadata``.

Filters, in order: identical responses are dropped; a margin below
``tie_margin`` (or exactly 0) makes a tie, dropped with ``drop_ties``; a
non-tie margin below ``min_margin`` is dropped; with ``top_quantile`` Q, only
the non-tie pairs whose P(chosen preferred) = sigmoid(margin) is in the top Q of
all pairs are kept (ties are not ranked by it). Departure from the paper:
West-of-N keeps the top quantile of its own P estimate over the whole pool;
here P is the Bradley-Terry probability of the (penalised) score margin.
Responses without a score (missing or NaN) are left out and counted; a set
with fewer than two scored responses is skipped and counted.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from prefkit.data.records import (
    AnyRecord,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    text_key,
    text_length,
)
from prefkit.errors import UserInputError

__all__ = ["PairsConfig", "PairsStats", "attach_rewards", "build_pairs"]


@dataclass(frozen=True)
class PairsConfig:
    """How scored candidate sets become pairs; validated on construction."""

    strategy: Literal["best-worst", "best-random", "all"] = "best-worst"
    """best-worst: highest vs lowest score (West-of-N); best-random: highest vs a random other; all: every pair."""
    min_margin: float = 0.0
    """Drop non-tie pairs whose score margin is below this."""
    top_quantile: float | None = None
    """Keep only the non-tie pairs whose P(chosen preferred) is in this top fraction (0, 1] of all pairs."""
    tie_margin: float = 0.0
    """Pairs whose margin is below this become ties (a margin of exactly 0 always does)."""
    drop_ties: bool = False
    """Drop ties instead of writing them with outcome 'tie'."""
    length_penalty: float = 0.0
    """Select by reward - L * length (see --length-unit); 0 = by reward alone."""
    length_unit: Literal["tokens", "chars"] = "tokens"
    """Length for --length-penalty: generated tokens (metadata.responses[i].tokens) or characters."""
    seed: int = 0
    """Seed of best-random's draw (one stream per candidate set)."""

    def __post_init__(self) -> None:
        for name in ("min_margin", "tie_margin", "length_penalty"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserInputError(
                    f"{name.replace('_', '-')} must be a number >= 0, got {value!r}"
                )
        if self.top_quantile is not None and not 0 < self.top_quantile <= 1:
            raise UserInputError(f"top-quantile must be in (0, 1], got {self.top_quantile!r}")


@dataclass
class PairsStats:
    """What :func:`build_pairs` did: ``sets_read == sets_used + sum(skipped_sets)``."""

    sets_read: int = 0
    sets_used: int = 0
    """Sets that gave at least one candidate pair."""
    skipped_sets: Counter = field(default_factory=Counter)
    """Sets that gave none, by reason (one_response, fewer_than_two_scored, not_a_candidate_set)."""
    omitted_responses: Counter = field(default_factory=Counter)
    """Responses left out of used sets, by reason (missing_score)."""
    pairs_written: int = 0
    ties_written: int = 0
    dropped_pairs: Counter = field(default_factory=Counter)
    """Candidate pairs not written, by reason (identical_responses, tie, below_min_margin, below_top_quantile)."""

    def summary(self) -> str:
        text = (
            f"read {self.sets_read} candidate sets, used {self.sets_used}, wrote "
            f"{self.pairs_written} pairs ({self.ties_written} ties)"
        )
        for label, counter in (
            ("skipped sets", self.skipped_sets),
            ("omitted responses", self.omitted_responses),
            ("dropped pairs", self.dropped_pairs),
        ):
            if counter:
                text += f"; {label}: " + ", ".join(
                    f"{count} {reason}" for reason, count in counter.most_common()
                )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "sets_read": self.sets_read,
            "sets_used": self.sets_used,
            "skipped_sets": dict(self.skipped_sets),
            "omitted_responses": dict(self.omitted_responses),
            "pairs_written": self.pairs_written,
            "ties_written": self.ties_written,
            "dropped_pairs": dict(self.dropped_pairs),
        }


def attach_rewards(
    records: Iterable[AnyRecord], rows: Mapping[str, Mapping[str, Any]], *, source: str
) -> Iterable[AnyRecord]:
    """Candidate sets with the rewards of ``prefkit rm score`` output rows (by record id).

    A record without a row raises naming the id; see :func:`with_rewards`.
    """
    for record in records:
        row = rows.get(record.id)
        if row is None:
            raise UserInputError(
                f"{source}: no scores for record {record.id!r}; score the same candidate file "
                "with 'prefkit rm score'"
            )
        yield with_rewards(record, row, source=source)


def with_rewards(record: AnyRecord, row: Mapping[str, Any], *, source: str) -> AnyRecord:
    """``record`` with the rewards of one ``prefkit rm score`` row filled in.

    A ranking record takes ``rewards`` as its scores (one per response), a rating
    record a ``reward`` rating; other kinds come back unchanged. A row of the wrong
    length raises naming the id.
    """
    if isinstance(record, RankingRecord):
        rewards = row.get("rewards")
        if not isinstance(rewards, list) or len(rewards) != len(record.responses):
            raise UserInputError(
                f"{source}: record {record.id!r}: expected 'rewards' with "
                f"{len(record.responses)} values, found {rewards!r:.80}"
            )
        return dataclasses.replace(record, scores=tuple(rewards), ranks=None)
    if isinstance(record, RatingRecord):
        if "reward" not in row:
            raise UserInputError(f"{source}: record {record.id!r}: expected a 'reward' value")
        return dataclasses.replace(record, ratings={**record.ratings, "reward": row["reward"]})
    return record


def _lengths(record: RankingRecord, unit: str) -> list[int]:
    if unit == "chars":
        return [text_length(response) for response in record.responses]
    info = record.metadata.get("responses")
    if not isinstance(info, list) or len(info) != len(record.responses):
        raise UserInputError(
            f"record {record.id!r}: --length-unit tokens needs metadata.responses[i].tokens "
            "(written by prefkit generate); use --length-unit chars for other data"
        )
    return [int(item["tokens"]) for item in info]


def _candidate_pairs(
    scores: dict[int, float], strategy: str, rng: random.Random
) -> list[tuple[int, int]]:
    """(higher, lower) index pairs of one set; ``scores`` maps response index -> selection score."""
    indices = list(scores)
    if strategy == "all":
        pairs = []
        for position, first in enumerate(indices):
            for second in indices[position + 1 :]:
                ordered = (first, second) if scores[first] >= scores[second] else (second, first)
                pairs.append(ordered)
        return pairs
    best = max(indices, key=lambda index: scores[index])
    others = [index for index in indices if index != best]
    if strategy == "best-worst":
        return [(best, min(others, key=lambda index: scores[index]))]
    return [(best, rng.choice(others))]


def build_pairs(
    records: Iterable[AnyRecord],
    config: PairsConfig,
    *,
    reward_model: str | None = None,
) -> tuple[list[PairwiseRecord], PairsStats]:
    """Pairs from scored candidate sets (see the module docstring); records in input order."""
    stats = PairsStats()
    candidates: list[dict[str, Any]] = []
    for record in records:
        stats.sets_read += 1
        if isinstance(record, PairwiseRecord):
            stats.skipped_sets["not_a_candidate_set"] += 1
            continue
        if not isinstance(record, RankingRecord):
            stats.skipped_sets["one_response"] += 1
            continue
        rewards = record.preference_scores()
        scored = {
            index: float(value)
            for index, value in enumerate(rewards)
            if value is not None and not math.isnan(value)
        }
        if len(scored) < 2:
            stats.skipped_sets["fewer_than_two_scored"] += 1
            continue
        stats.omitted_responses["missing_score"] += len(rewards) - len(scored)
        lengths = _lengths(record, config.length_unit) if config.length_penalty else None
        selection = {
            index: reward - (config.length_penalty * lengths[index] if lengths else 0.0)
            for index, reward in scored.items()
        }
        rng = random.Random(f"{config.seed}\0{record.id}")
        stats.sets_used += 1
        for high, low in _candidate_pairs(selection, config.strategy, rng):
            candidates.append(
                {
                    "record": record,
                    "high": high,
                    "low": low,
                    "margin": selection[high] - selection[low],
                    "rewards": (scored[high], scored[low]),
                    "lengths": None if lengths is None else (lengths[high], lengths[low]),
                }
            )
    if not stats.omitted_responses["missing_score"]:
        del stats.omitted_responses["missing_score"]

    kept: list[dict[str, Any]] = []
    for candidate in candidates:
        record = candidate["record"]
        if text_key(record.responses[candidate["high"]]) == text_key(
            record.responses[candidate["low"]]
        ):
            stats.dropped_pairs["identical_responses"] += 1
            continue
        margin = candidate["margin"]
        candidate["tie"] = margin == 0 or margin < config.tie_margin
        if candidate["tie"] and config.drop_ties:
            stats.dropped_pairs["tie"] += 1
            continue
        if not candidate["tie"] and margin < config.min_margin:
            stats.dropped_pairs["below_min_margin"] += 1
            continue
        kept.append(candidate)
    if config.top_quantile is not None:
        margins = sorted(candidate["margin"] for candidate in kept if not candidate["tie"])
        if margins:
            keep_count = max(1, math.ceil(config.top_quantile * len(margins)))
            threshold = margins[len(margins) - keep_count]  # P = sigmoid(margin) is monotone
            before = len(kept)
            kept = [c for c in kept if c["tie"] or c["margin"] >= threshold]
            if before - len(kept):
                stats.dropped_pairs["below_top_quantile"] += before - len(kept)

    pairs = []
    for candidate in kept:
        record, high, low = candidate["record"], candidate["high"], candidate["low"]
        ids = record.response_ids or tuple(str(index) for index in range(len(record.responses)))
        metadata: dict[str, Any] = {
            "source_id": record.id,
            "strategy": config.strategy,
            "response_ids": [ids[high], ids[low]],
            "scores": list(candidate["rewards"]),
            "margin": candidate["margin"],
            "p_chosen": 1.0 / (1.0 + math.exp(-candidate["margin"])),
            "reward_model": reward_model
            if reward_model is not None
            else record.metadata.get("scoring", {}).get("reward_model")
            or record.metadata.get("generation", {}).get("reward_model"),
        }
        if candidate["lengths"] is not None:
            metadata["length_penalty"] = {
                "coefficient": config.length_penalty,
                "unit": config.length_unit,
                "lengths": list(candidate["lengths"]),
            }
        if "generation" in record.metadata:
            metadata["generation"] = record.metadata["generation"]
        pairs.append(
            PairwiseRecord(
                id=f"{record.id}/{high}-{low}",
                prompt=record.prompt,
                response_a=record.responses[high],
                response_b=record.responses[low],
                outcome="tie" if candidate["tie"] else "a",
                margin=None if candidate["tie"] else candidate["margin"],
                category=record.category,
                metadata=metadata,
            )
        )
    stats.pairs_written = len(pairs)
    stats.ties_written = sum(pair.outcome == "tie" for pair in pairs)
    return pairs, stats
