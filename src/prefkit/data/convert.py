"""Conversions between feedback kinds, with every input record accounted for.

>>> options = ConversionOptions(to="pairwise", attribute="overall", tie_threshold=0.5, drop_ties=True)
>>> conversion = convert_records(read_feedback("ratings.jsonl"), options)
>>> write_records(conversion, "pairs.jsonl")
>>> print(conversion.stats.summary())
read 360, wrote 703, dropped 0; omitted 197 tie_dropped

What each input kind becomes:

=========  ==========  ===========================================================
input      ``to``      result
=========  ==========  ===========================================================
rating     pairwise    responses to the same prompt are paired (``pairs``); the
                       outcome comes from the score difference (``tie_threshold``)
rating     ranking     one ranking per prompt, the scores as its scores
rating     binary      one record per response: good when score >= ``binary_threshold``
ranking    pairwise    pairs of the ranking's responses (``pairs``), as for ratings
ranking    binary      one record per scored response, by ``binary_threshold``
pairwise   pairwise    unchanged, or re-labelled from its votes (``votes``)
pairwise   binary      KTO style: chosen -> good, rejected -> bad; ties are dropped
any kind   same kind   unchanged (counted as passed through)
=========  ==========  ===========================================================

Any other combination (binary -> pairwise, for example) raises ``ValueError``
naming the kinds.

The score of a rating record is one attribute (``attribute``) or a weighted sum
of attributes (``weights``); a missing value makes the score missing. The score
of a ranking's response is its :meth:`RankingRecord.preference_scores` entry
(the score, or minus the rank).

Accounting: every record read is either *used* (it went into at least one
written record, or was written unchanged) or *dropped*, counted by reason, so
``n_read == n_used + sum(dropped.values())``. Parts of a used record that were
left out (a ranking's response with no score, a candidate pair dropped as a
tie) are counted in ``omitted``.

Streaming: pairwise, ranking and binary records are converted one at a time.
Rating records must be grouped by prompt before they can be paired or ranked,
so they are buffered (per prompt) and their outputs are written after every
other record, groups in the order their prompts first appeared.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prefkit.data.records import (
    AnyRecord,
    BinaryRecord,
    FieldError,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    Text,
    majority_outcome,
    text_key,
)
from prefkit.errors import UserInputError

TARGETS = ("pairwise", "binary", "ranking", "rating")
PAIR_STRATEGIES = ("all", "best-vs-worst", "best-vs-random")
VOTE_MODES = ("majority", "soft")
TIE_POLICIES = ("tie", "drop")

CONVERSIONS = {
    ("rating", "pairwise"),
    ("rating", "ranking"),
    ("rating", "binary"),
    ("ranking", "pairwise"),
    ("ranking", "binary"),
    ("pairwise", "pairwise"),
    ("pairwise", "binary"),
    ("ranking", "ranking"),
    ("binary", "binary"),
    ("rating", "rating"),
}
"""(input kind, target kind) pairs that :func:`convert_records` supports."""


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserInputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class ConversionOptions:
    """How :func:`convert_records` converts; validated on construction."""

    to: str = "pairwise"
    """Target kind: ``pairwise``, ``binary``, ``ranking`` or ``rating``."""
    pairs: str = "all"
    """Which pairs a prompt's rated responses (or a ranking's responses) give:
    ``all`` (every pair, n(n-1)/2), ``best-vs-worst`` (one pair: the highest
    score against the lowest) or ``best-vs-random`` (one pair: the highest score
    against another response drawn at random). Equal scores pick the response
    read first. Only for ``to="pairwise"``."""
    attribute: str | None = None
    """The rating attribute that scores a rating record (``overall``, ``helpfulness``).
    Converting rating records needs exactly one of ``attribute`` and ``weights``."""
    weights: dict[str, float] | None = None
    """Score a rating record by the weighted sum of these attributes; a missing
    value of any of them makes the score missing."""
    tie_threshold: float = 0.0
    """A pair whose |score difference| is at most this is a tie. Ties are kept as
    ties (outcome ``tie``), not dropped, unless ``drop_ties``. Only for
    ``to="pairwise"``."""
    drop_ties: bool = False
    """Leave out pairs whose outcome is a tie (counted). Only for ``to="pairwise"``."""
    votes: str | None = None
    """What to make of pairwise records' annotator votes: ``None`` keeps records
    as they are; ``majority`` sets the outcome to the plurality vote (a vote for
    ``tie`` counts like any other; an even split follows ``tie_policy``);
    ``soft`` keeps the outcome and sets ``soft_label`` to the fraction of
    non-missing votes preferring ``a``, where a ``tie`` vote counts as half a
    vote for each side: (n_a + n_tie / 2) / (n_a + n_b + n_tie). Records with no
    votes pass through unchanged."""
    tie_policy: str = "tie"
    """With ``votes="majority"``, an even split (``[a, b]``, ``[a, b, tie]``)
    becomes a ``tie`` or is dropped (``drop``, counted as ``split_votes``).
    A plurality of ``tie`` votes is a real tie, not a split."""
    binary_threshold: float | None = None
    """Rating or ranking -> binary: a response whose score is >= this is good.
    For a ranking given as ranks the score is minus the rank (threshold -2
    makes ranks 1 and 2 good). Only for ``to="binary"``."""
    seed: int = 0
    """Seed of ``best-vs-random``. Each prompt (or ranking) draws from its own
    generator seeded with the seed and the prompt, so the draw does not depend
    on the order of the records."""

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            raise UserInputError(f"to must be one of {', '.join(TARGETS)}, got {self.to!r}")
        if self.pairs not in PAIR_STRATEGIES:
            raise UserInputError(
                f"pairs must be one of {', '.join(PAIR_STRATEGIES)}, got {self.pairs!r}"
            )
        if self.pairs != "all" and self.to != "pairwise":
            raise UserInputError(
                f"pairs={self.pairs!r} applies to to='pairwise', not to={self.to!r}"
            )
        if self.attribute is not None and self.weights is not None:
            raise UserInputError("give either attribute or weights to score ratings, not both")
        if self.attribute is not None and (
            not isinstance(self.attribute, str) or not self.attribute
        ):
            raise UserInputError(
                f"attribute must be a non-empty attribute name, got {self.attribute!r}"
            )
        if self.weights is not None:
            if not isinstance(self.weights, dict) or not self.weights:
                raise UserInputError(
                    f"weights must be a non-empty mapping attribute -> weight, got {self.weights!r}"
                )
            self.weights = {
                str(name): _finite(weight, f"weights[{name!r}]")
                for name, weight in self.weights.items()
            }
        if self.to == "rating" and (self.attribute is not None or self.weights is not None):
            raise UserInputError(
                "attribute and weights score ratings for another kind; to='rating' keeps ratings as they are"
            )
        self.tie_threshold = _finite(self.tie_threshold, "tie_threshold")
        if self.tie_threshold < 0:
            raise UserInputError(f"tie_threshold must be >= 0, got {self.tie_threshold}")
        if not isinstance(self.drop_ties, bool):
            raise UserInputError(f"drop_ties must be true or false, got {self.drop_ties!r}")
        if self.to != "pairwise" and (self.tie_threshold != 0 or self.drop_ties):
            raise UserInputError(
                f"tie_threshold and drop_ties apply to to='pairwise', not to={self.to!r}"
                + (" (ties are always dropped from binary data)" if self.to == "binary" else "")
            )
        if self.votes is not None and self.votes not in VOTE_MODES:
            raise UserInputError(
                f"votes must be one of {', '.join(VOTE_MODES)} or None, got {self.votes!r}"
            )
        if self.votes == "soft" and self.to != "pairwise":
            raise UserInputError(
                f"votes='soft' sets pairwise soft labels; it does not apply to to={self.to!r}"
            )
        if self.votes == "majority" and self.to not in ("pairwise", "binary"):
            raise UserInputError(
                f"votes='majority' applies to pairwise or binary output, not to={self.to!r}"
            )
        if self.tie_policy not in TIE_POLICIES:
            raise UserInputError(
                f"tie_policy must be one of {', '.join(TIE_POLICIES)}, got {self.tie_policy!r}"
            )
        if self.tie_policy != "tie" and self.votes != "majority":
            raise UserInputError(
                "tie_policy decides split votes under votes='majority'; set votes='majority'"
            )
        if self.binary_threshold is not None:
            self.binary_threshold = _finite(self.binary_threshold, "binary_threshold")
            if self.to != "binary":
                raise UserInputError(f"binary_threshold applies to to='binary', not to={self.to!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UserInputError(f"seed must be an integer, got {self.seed!r}")
        if self.seed != 0 and self.pairs != "best-vs-random":
            raise UserInputError("seed is used only by pairs='best-vs-random'")


@dataclass
class ConversionStats:
    """What a conversion did. ``n_read == n_used + sum(dropped.values())``."""

    n_read: int = 0
    """Input records seen."""
    n_written: int = 0
    """Output records produced."""
    n_used: int = 0
    """Input records that went into at least one output (passed-through ones included)."""
    n_passed_through: int = 0
    """Input records written unchanged (already of the target kind)."""
    dropped: Counter = field(default_factory=Counter)
    """Input records that produced nothing, by reason."""
    omitted: Counter = field(default_factory=Counter)
    """Parts of used records left out, by reason: responses with no score,
    candidate pairs dropped as ties or with identical responses."""

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """``read N, wrote M, dropped K: 3 missing_score, ...`` (plus pass-through and omissions)."""
        text = f"read {self.n_read}, wrote {self.n_written}, dropped {self.n_dropped}"
        if self.dropped:
            text += ": " + ", ".join(
                f"{count} {reason}" for reason, count in self.dropped.most_common()
            )
        if self.n_passed_through:
            text += f"; {self.n_passed_through} passed through unchanged"
        if self.omitted:
            text += "; omitted " + ", ".join(
                f"{count} {reason}" for reason, count in self.omitted.most_common()
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_read": self.n_read,
            "n_written": self.n_written,
            "n_used": self.n_used,
            "n_passed_through": self.n_passed_through,
            "n_dropped": self.n_dropped,
            "dropped": dict(self.dropped),
            "omitted": dict(self.omitted),
        }


@dataclass
class _Scored:
    """One response of a group to be paired or ranked, with its score."""

    text: Text
    score: float
    index: int
    """Position in the group (rating groups) or in the ranking (rankings)."""


class Conversion:
    """The converted records of one pass over ``records``; iterate it once.

    ``stats`` is complete when the iteration ends.
    """

    def __init__(self, records: Iterable[AnyRecord], options: ConversionOptions):
        self.records = records
        self.options = options
        self.stats = ConversionStats()
        self._started = False

    def __iter__(self) -> Iterator[AnyRecord]:
        # A second pass would add to the same counts (and the input may be a one-shot generator).
        if self._started:
            raise RuntimeError(
                "a Conversion can be iterated once; call convert_records again for another pass"
            )
        self._started = True
        return self._convert()

    def _convert(self) -> Iterator[AnyRecord]:
        groups: dict[tuple[str | None, str], list[RatingRecord]] = {}
        for record in self.records:
            self.stats.n_read += 1
            target = self.options.to
            if (record.kind, target) not in CONVERSIONS:
                supported = ", ".join(f"{a} -> {b}" for a, b in sorted(CONVERSIONS) if a != b)
                raise UserInputError(
                    f"cannot convert {record.kind} records to {target} (record {record.id!r}); "
                    f"supported conversions: {supported}, and any kind to itself"
                )
            if isinstance(record, RatingRecord) and target in ("pairwise", "ranking"):
                groups.setdefault(_group_key(record), []).append(record)
                continue
            outputs = self._convert_one(record)
            self.stats.n_written += len(outputs)
            yield from outputs
        for key, group in groups.items():
            outputs = self._convert_group(key, group)
            self.stats.n_written += len(outputs)
            yield from outputs

    # ------------------------------------------------------------------ one record at a time

    def _convert_one(self, record: AnyRecord) -> list[AnyRecord]:
        target = self.options.to
        if isinstance(record, PairwiseRecord) and (
            target == "binary" or self.options.votes or self.options.drop_ties
        ):
            resolved = self._resolve_votes(record)
            if resolved is None:
                return []
            if target == "binary":
                return self._pair_to_binary(resolved)
            self._use(passed_through=resolved is record)
            return [resolved]
        if isinstance(record, RankingRecord) and target == "pairwise":
            return self._ranking_to_pairs(record)
        if isinstance(record, RankingRecord) and target == "binary":
            return self._ranking_to_binary(record)
        if isinstance(record, RatingRecord) and target == "binary":
            return self._rating_to_binary(record)
        self._use(passed_through=True)
        return [record]

    def _resolve_votes(self, record: PairwiseRecord) -> PairwiseRecord | None:
        """Apply ``votes`` and ``drop_ties``; ``None`` when the record is dropped (counted)."""
        votes = [vote for vote in record.votes or () if vote is not None]
        resolved = record
        try:
            if votes and self.options.votes == "majority":
                outcome = majority_outcome(tuple(votes), split="none")
                if outcome is None:
                    if self.options.tie_policy == "drop":
                        self._drop("split_votes")
                        return None
                    outcome = "tie"
                resolved = dataclasses.replace(record, outcome=outcome)
            elif votes and self.options.votes == "soft":
                counts = Counter(votes)
                soft = (counts["a"] + 0.5 * counts["tie"]) / len(votes)
                resolved = dataclasses.replace(record, soft_label=soft)
        except FieldError as error:
            self._drop(error.reason)
            return None
        if resolved.is_tie and self.options.drop_ties:
            self._drop("tie")
            return None
        return resolved

    def _pair_to_binary(self, record: PairwiseRecord) -> list[AnyRecord]:
        if record.is_tie:
            self._drop("tie")
            return []
        self._use()
        metadata = {**record.metadata, "source_id": record.id}
        return [
            BinaryRecord(
                id=f"{record.id}/{role}",
                prompt=record.prompt,
                response=response,
                label=label,
                weight=record.weight,
                category=record.category,
                metadata=metadata,
            )
            for role, response, label in (
                ("chosen", record.chosen, True),
                ("rejected", record.rejected, False),
            )
        ]

    def _ranking_to_pairs(self, record: RankingRecord) -> list[AnyRecord]:
        scored = self._scored_responses(record)
        if len(scored) < 2:
            self._drop("fewer_than_two_scores")
            return []
        rng = self._rng(record.id)
        outputs: list[AnyRecord] = []
        for first, second in _choose_pairs(scored, self.options.pairs, rng):
            metadata = {
                **record.metadata,
                "source_id": record.id,
                "response_indices": [first.index, second.index],
                "scores": [first.score, second.score],
            }
            if record.response_ids is not None:
                metadata["response_ids"] = [
                    record.response_ids[first.index],
                    record.response_ids[second.index],
                ]
            pair = self._make_pair(
                f"{record.id}/{first.index}-vs-{second.index}",
                record.prompt,
                first,
                second,
                record.category,
                metadata,
            )
            if pair is not None:
                outputs.append(pair)
        if outputs:
            self._use()
        else:
            self._drop("all_pairs_omitted")
        return outputs

    def _ranking_to_binary(self, record: RankingRecord) -> list[AnyRecord]:
        threshold = self._require_binary_threshold("ranking")
        scored = self._scored_responses(record)
        if not scored:
            self._drop("no_scores")
            return []
        self._use()
        outputs: list[AnyRecord] = []
        for item in scored:
            metadata = {
                **record.metadata,
                "source_id": record.id,
                "response_index": item.index,
                "score": item.score,
            }
            if record.response_ids is not None:
                metadata["response_id"] = record.response_ids[item.index]
            outputs.append(
                BinaryRecord(
                    id=f"{record.id}/{item.index}",
                    prompt=record.prompt,
                    response=item.text,
                    label=item.score >= threshold,
                    category=record.category,
                    metadata=metadata,
                )
            )
        return outputs

    def _rating_to_binary(self, record: RatingRecord) -> list[AnyRecord]:
        threshold = self._require_binary_threshold("rating")
        score = self._rating_score(record)
        if score is None:
            self._drop("missing_score")
            return []
        self._use()
        return [
            BinaryRecord(
                id=record.id,
                prompt=record.prompt,
                response=record.response,
                label=score >= threshold,
                category=record.category,
                metadata={**record.metadata, "ratings": dict(record.ratings), "score": score},
            )
        ]

    # ------------------------------------------------------------------ grouped ratings

    def _convert_group(
        self, key: tuple[str | None, str], group: list[RatingRecord]
    ) -> list[AnyRecord]:
        scored: list[_Scored] = []
        for index, record in enumerate(group):
            score = self._rating_score(record)
            if score is None:
                self._drop("missing_score")
            else:
                scored.append(_Scored(record.response, score, index))
        if len(scored) < 2:
            self._drop("single_response", len(scored))
            return []
        if self.options.to == "ranking":
            return [self._group_to_ranking(key, group, scored)]
        outputs: list[AnyRecord] = []
        in_pairs: set[int] = set()
        used: set[int] = set()
        for first, second in _choose_pairs(
            scored, self.options.pairs, self._rng(f"{key[0]}\x1f{key[1]}")
        ):
            record_a, record_b = group[first.index], group[second.index]
            in_pairs.update((first.index, second.index))
            metadata = {
                **_shared_metadata([record_a, record_b]),
                "source_ids": [record_a.id, record_b.id],
                "scores": [first.score, second.score],
            }
            if record_a.category != record_b.category:
                metadata["categories"] = [record_a.category, record_b.category]
            pair = self._make_pair(
                f"{record_a.id}-vs-{record_b.id}",
                record_a.prompt,
                first,
                second,
                _shared_category([record_a, record_b]),
                metadata,
            )
            if pair is not None:
                outputs.append(pair)
                used.update((first.index, second.index))
        for item in scored:
            if item.index in used:
                self._use()
            else:
                self._drop("all_pairs_omitted" if item.index in in_pairs else "not_selected")
        return outputs

    def _group_to_ranking(
        self, key: tuple[str | None, str], group: list[RatingRecord], scored: list[_Scored]
    ) -> RankingRecord:
        members = [group[item.index] for item in scored]
        for _ in members:
            self._use()
        return RankingRecord(
            id=key[0] if key[0] is not None else members[0].id,
            prompt=members[0].prompt,
            responses=tuple(item.text for item in scored),
            scores=tuple(item.score for item in scored),
            response_ids=tuple(member.id for member in members),
            category=_shared_category(members),
            metadata=_shared_metadata(members),
        )

    # ------------------------------------------------------------------ helpers

    def _make_pair(
        self,
        pair_id: str,
        prompt: Text,
        first: _Scored,
        second: _Scored,
        category: str | None,
        metadata: dict[str, Any],
    ) -> PairwiseRecord | None:
        """The pair ``first`` (as a) vs ``second`` (as b), or ``None`` when it is omitted (counted).

        The margin is the absolute score difference: the gap by which the
        chosen response's score exceeds the rejected one's (for a tie, the gap
        that was within the threshold).
        """
        difference = first.score - second.score
        outcome = (
            "tie"
            if abs(difference) <= self.options.tie_threshold
            else ("a" if difference > 0 else "b")
        )
        if outcome == "tie" and self.options.drop_ties:
            self.stats.omitted["tie_dropped"] += 1
            return None
        if text_key(first.text) == text_key(second.text):
            self.stats.omitted["identical_responses"] += 1
            return None
        return PairwiseRecord(
            id=pair_id,
            prompt=prompt,
            response_a=first.text,
            response_b=second.text,
            outcome=outcome,
            margin=abs(difference),
            category=category,
            metadata=metadata,
        )

    def _scored_responses(self, record: RankingRecord) -> list[_Scored]:
        scored = []
        for index, (text, score) in enumerate(zip(record.responses, record.preference_scores())):
            if score is None:
                self.stats.omitted["missing_score"] += 1
            else:
                scored.append(_Scored(text, score, index))
        return scored

    def _rating_score(self, record: RatingRecord) -> float | None:
        if self.options.attribute is not None:
            return record.ratings.get(self.options.attribute)
        if self.options.weights is None:
            raise UserInputError(
                f"converting rating records to {self.options.to} needs a score: attribute=NAME or "
                f"weights={{NAME: WEIGHT, ...}}; record {record.id!r} has the attributes "
                f"{', '.join(record.ratings)}"
            )
        total = 0.0
        for name, weight in self.options.weights.items():
            value = record.ratings.get(name)
            if value is None:
                return None
            total += weight * value
        return total

    def _require_binary_threshold(self, kind: str) -> float:
        if self.options.binary_threshold is None:
            raise UserInputError(
                f"converting {kind} records to binary needs binary_threshold: "
                "a response whose score is >= the threshold is good"
            )
        return self.options.binary_threshold

    def _rng(self, key: str) -> random.Random:
        # A string seed is hashed with SHA-512, so the draw is the same in every process.
        return random.Random(f"{self.options.seed}\x1f{key}")

    def _use(self, *, passed_through: bool = False) -> None:
        self.stats.n_used += 1
        self.stats.n_passed_through += passed_through

    def _drop(self, reason: str, count: int = 1) -> None:
        if count:
            self.stats.dropped[reason] += count


def _group_key(record: RatingRecord) -> tuple[str | None, str]:
    """Ratings of the same prompt: the same ``metadata["prompt_id"]`` (when given) and prompt text."""
    prompt_id = record.metadata.get("prompt_id")
    return (None if prompt_id is None else str(prompt_id), text_key(record.prompt))


def _choose_pairs(
    scored: list[_Scored], strategy: str, rng: random.Random
) -> list[tuple[_Scored, _Scored]]:
    """Candidate pairs, each in the order the responses were read (a first)."""
    if strategy == "all":
        return list(itertools.combinations(scored, 2))
    best = max(scored, key=lambda item: item.score)  # the first of equal maxima
    others = [item for item in scored if item is not best]
    if strategy == "best-vs-worst":
        other = min(others, key=lambda item: item.score)  # the first of equal minima
    else:
        other = rng.choice(others)
    return [(best, other) if best.index < other.index else (other, best)]


def _shared_category(records: list[RatingRecord]) -> str | None:
    categories = {record.category for record in records}
    return categories.pop() if len(categories) == 1 else None


def _shared_metadata(records: list[RatingRecord]) -> dict[str, Any]:
    """The metadata entries that every record has with the same value."""
    first, rest = records[0].metadata, records[1:]
    return {
        key: value
        for key, value in first.items()
        if all(key in other.metadata and other.metadata[key] == value for other in rest)
    }


def convert_records(records: Iterable[AnyRecord], options: ConversionOptions) -> Conversion:
    """Convert ``records`` as ``options`` say; iterate the result, then read its ``stats``."""
    return Conversion(records, options)
