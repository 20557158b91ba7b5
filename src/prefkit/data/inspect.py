"""Summary statistics of a data set, computed in one streaming pass.

>>> reader = read_feedback("testset-v1.json", format="pandalm", on_error="skip")
>>> report = inspect_records(reader)
>>> summary = report_dict(report, format_name=reader.format_name, read_stats=reader.stats)
>>> print(format_report(summary))

Memory stays bounded by a few bytes per record: no text is kept. Distinct
prompts and exact duplicates are counted from 64-bit BLAKE2b hashes (8 bytes a
record; two different texts share a hash with probability about n^2 / 2^65),
and lengths are kept as 32-bit integers for the median and 95th percentile.

Annotator agreement is computed over pairwise records with votes. Annotators
are identified by their position in ``votes`` (``annotator1`` is the first
vote of every record); a missing vote (``None``) is left out.

- Percent agreement: for each pair of annotators, the fraction of the records
  both voted on where their votes are equal; ``percent_agreement`` is the mean
  over annotator pairs.
- Fleiss' kappa over the categories ``a``, ``b``, ``tie`` (Fleiss 1971), over
  records with at least two votes. With n_i votes on record i, n_ij of them in
  category j: P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), P_bar = mean_i P_i,
  p_j = sum_i n_ij / sum_i n_i, P_e = sum_j p_j^2,
  kappa = (P_bar - P_e) / (1 - P_e). With the same number of votes on every
  record this is Fleiss' formula exactly; with varying numbers, each record's
  P_i uses its own n_i. ``None`` when P_e = 1 (every vote in one category).
- Agreement with the majority: per annotator, the fraction of records (with at
  least two votes and a strict plurality) where the annotator's vote equals the
  plurality of all the record's votes, the annotator's own included.
"""

from __future__ import annotations

import itertools
import json
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefkit.data.fastpath import PairwiseColumns
from prefkit.data.read import ReadStats
from prefkit.data.records import (
    OUTCOMES,
    AnyRecord,
    BinaryRecord,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    majority_outcome,
    text_key,
    text_length,
)

TOP_CATEGORIES = 20
"""How many categories (the most frequent) ``report_dict`` lists by name."""


def _hash_parts(*parts: str) -> int:
    """A 64-bit hash of a sequence of strings (tuple hashing keeps boundaries).

    Python's string hash is salted per process, which is fine here: hashes are
    only compared within one inspection. It is several times faster than a
    cryptographic digest, and 64 bits make a collision among a few million
    records very unlikely (about n^2 / 2^65).
    """
    return hash(parts) & 0xFFFF_FFFF_FFFF_FFFF


def _content_parts(record: AnyRecord) -> list[str]:
    """What makes two records the same content: kind, texts and label (not id, category, metadata)."""
    parts = [record.kind, *(text_key(text) for text in record.texts())]
    if isinstance(record, PairwiseRecord):
        parts.append(str(record.outcome))
    elif isinstance(record, BinaryRecord):
        parts.append(str(record.label))
    elif isinstance(record, RatingRecord):
        parts.append(json.dumps(record.ratings, sort_keys=True))
    else:
        parts.append(json.dumps([record.scores, record.ranks]))
    return parts


def _hash_array(hashes: Iterable[int], count: int) -> bytes:
    """Python hashes as the unsigned 64-bit values of :func:`_hash_parts` (raw bytes)."""
    return np.fromiter(hashes, np.int64, count).view(np.uint64).tobytes()


def length_summary(lengths: array) -> dict[str, float] | None:
    """min, median, mean, p95 (linear interpolation) and max; ``None`` when empty."""
    if not lengths:
        return None
    values = np.frombuffer(lengths, dtype=lengths.typecode)
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


@dataclass
class VoteAgreement:
    """Streaming vote tallies and agreement between annotators (see the module docstring)."""

    n_with_votes: int = 0
    """Pairwise records with at least one non-missing vote."""
    n_votes: int = 0
    """Non-missing votes."""
    n_missing_votes: int = 0
    """Votes that are ``None`` (an annotator who did not vote on that record)."""
    vote_counts: Counter = field(default_factory=Counter)
    """Vote value (``a``, ``b``, ``tie``) -> count."""
    n_annotators: int = 0
    """The longest ``votes`` list seen."""
    n_items_multi: int = 0
    """Records with at least two votes (the ones agreement is computed over)."""
    n_split: int = 0
    """Records with at least two votes and no strict plurality."""
    sum_item_agreement: float = 0.0
    """Sum over records of P_i (Fleiss)."""
    category_totals: Counter = field(default_factory=Counter)
    """Votes per category over records with at least two votes."""
    pair_counts: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    """(annotator k, annotator l) -> [records where they agree, records both voted on]."""
    majority_counts: dict[int, list[int]] = field(default_factory=dict)
    """annotator k -> [records where k voted the plurality, records with a plurality k voted on]."""

    def add(self, votes: tuple[str | None, ...]) -> None:
        self.n_annotators = max(self.n_annotators, len(votes))
        given = [(position, vote) for position, vote in enumerate(votes) if vote is not None]
        self.n_missing_votes += len(votes) - len(given)
        if not given:
            return
        self.n_with_votes += 1
        self.n_votes += len(given)
        counts = Counter(vote for _, vote in given)
        self.vote_counts.update(counts)
        if len(given) < 2:
            return
        n_votes = len(given)
        self.n_items_multi += 1
        self.sum_item_agreement += sum(c * (c - 1) for c in counts.values()) / (
            n_votes * (n_votes - 1)
        )
        self.category_totals.update(counts)
        for (k, vote_k), (m, vote_m) in itertools.combinations(given, 2):
            tally = self.pair_counts.setdefault((k, m), [0, 0])
            tally[0] += vote_k == vote_m
            tally[1] += 1
        majority = majority_outcome(tuple(vote for _, vote in given), split="none")
        if majority is None:
            self.n_split += 1
            return
        for position, vote in given:
            tally = self.majority_counts.setdefault(position, [0, 0])
            tally[0] += vote == majority
            tally[1] += 1

    def fleiss_kappa(self) -> float | None:
        total = sum(self.category_totals.values())
        if not self.n_items_multi or not total:
            return None
        observed = self.sum_item_agreement / self.n_items_multi
        expected = sum((count / total) ** 2 for count in self.category_totals.values())
        if expected >= 1.0:
            return None
        return (observed - expected) / (1.0 - expected)

    def to_dict(self) -> dict[str, Any]:
        pairs = {
            f"annotator{k + 1}/annotator{m + 1}": agree / seen
            for (k, m), (agree, seen) in sorted(self.pair_counts.items())
            if seen
        }
        return {
            "n_with_votes": self.n_with_votes,
            "n_votes": self.n_votes,
            "n_missing_votes": self.n_missing_votes,
            "n_tie_votes": self.vote_counts["tie"],
            "vote_counts": {vote: self.vote_counts[vote] for vote in OUTCOMES},
            "n_annotators": self.n_annotators,
            "n_items_multi": self.n_items_multi,
            "n_split": self.n_split,
            "percent_agreement": sum(pairs.values()) / len(pairs) if pairs else None,
            "pairwise_agreement": pairs,
            "fleiss_kappa": self.fleiss_kappa(),
            "agreement_with_majority": {
                f"annotator{k + 1}": agree / seen
                for k, (agree, seen) in sorted(self.majority_counts.items())
                if seen
            },
        }


@dataclass
class _AttributeTally:
    count: int = 0
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)


@dataclass
class InspectReport:
    """The statistics of one pass over a data set; :func:`report_dict` renders them as JSON."""

    n_records: int = 0
    """Records seen."""
    kinds: Counter = field(default_factory=Counter)
    """Record kind -> count."""
    outcomes: Counter = field(default_factory=Counter)
    """Pairwise outcome (``a``, ``b``, ``tie``) -> count."""
    votes: VoteAgreement = field(default_factory=VoteAgreement)
    """Vote tallies and annotator agreement of pairwise records."""
    categories: Counter = field(default_factory=Counter)
    """Category -> count (records with no category are counted in ``n_no_category``)."""
    n_no_category: int = 0
    """Records whose category is ``None``."""
    prompt_hashes: array = field(default_factory=lambda: array("Q"))
    """64-bit hash of each record's prompt."""
    content_hashes: array = field(default_factory=lambda: array("Q"))
    """64-bit hash of each record's content (kind, texts, label)."""
    prompt_lengths: array = field(default_factory=lambda: array("i"))
    """Characters of each record's prompt."""
    response_lengths: array = field(default_factory=lambda: array("i"))
    """Characters of every response of every record."""
    attributes: dict[str, _AttributeTally] = field(default_factory=dict)
    """Rating attribute -> running count, sum, min and max of its non-missing values."""
    responses_per_ranking: array = field(default_factory=lambda: array("i"))
    """Number of responses of each ranking."""
    n_ranking_missing_scores: int = 0
    """Responses of rankings with no score (or rank)."""
    n_rankings_by_ranks: int = 0
    """Rankings given as ranks (the others are given as scores)."""
    n_rankings_with_ties: int = 0
    """Rankings where two scored responses share a score (or rank)."""
    n_good: int = 0
    """Binary records labelled good."""

    def add(self, record: AnyRecord) -> None:
        self.n_records += 1
        self.kinds[record.kind] += 1
        if record.category is None:
            self.n_no_category += 1
        else:
            self.categories[record.category] += 1
        self.prompt_hashes.append(_hash_parts(text_key(record.prompt)))
        self.content_hashes.append(_hash_parts(*_content_parts(record)))
        self.prompt_lengths.append(text_length(record.prompt))
        for _, response in record.named_responses():
            self.response_lengths.append(text_length(response))
        if isinstance(record, PairwiseRecord):
            self.outcomes[record.outcome] += 1
            if record.votes:
                self.votes.add(record.votes)
        elif isinstance(record, RatingRecord):
            for name, value in record.ratings.items():
                tally = self.attributes.setdefault(name, _AttributeTally())
                if value is not None:
                    tally.add(value)
        elif isinstance(record, RankingRecord):
            self.responses_per_ranking.append(len(record.responses))
            scores = [score for score in record.preference_scores() if score is not None]
            self.n_ranking_missing_scores += len(record.responses) - len(scores)
            self.n_rankings_by_ranks += record.ranks is not None
            self.n_rankings_with_ties += len(set(scores)) < len(scores)
        else:
            self.n_good += record.label

    def add_columns(self, columns: PairwiseColumns) -> None:
        """Add a block of pairwise records given column by column; the same tallies as
        :meth:`add` on each record, computed with ``map`` over builtins."""
        count = len(columns)
        self.n_records += count
        self.kinds["pairwise"] += count
        categories = Counter(columns.categories)
        self.n_no_category += categories.pop(None, 0)
        self.categories.update(categories)
        self.prompt_hashes.frombytes(_hash_array(map(hash, zip(columns.prompts)), count))
        content = zip(
            itertools.repeat("pairwise"),
            columns.prompts,
            columns.responses_a,
            columns.responses_b,
            columns.outcomes,
        )
        self.content_hashes.frombytes(_hash_array(map(hash, content), count))
        self.prompt_lengths.frombytes(columns.prompt_lengths.tobytes())
        self.response_lengths.frombytes(columns.response_a_lengths.tobytes())
        self.response_lengths.frombytes(columns.response_b_lengths.tobytes())
        self.outcomes.update(columns.outcomes)

    def add_batch(self, batch: list[AnyRecord] | PairwiseColumns) -> None:
        """Add one batch of :meth:`FeedbackReader.batches`."""
        if isinstance(batch, PairwiseColumns):
            self.add_columns(batch)
        else:
            for record in batch:
                self.add(record)

    @property
    def n_ties(self) -> int:
        return self.outcomes["tie"]

    @property
    def n_distinct_prompts(self) -> int:
        return (
            int(np.unique(np.frombuffer(self.prompt_hashes, dtype="Q")).size)
            if self.prompt_hashes
            else 0
        )

    @property
    def n_exact_duplicates(self) -> int:
        """Records whose content repeats an earlier record's (the first occurrence is not counted)."""
        if not self.content_hashes:
            return 0
        return self.n_records - int(np.unique(np.frombuffer(self.content_hashes, dtype="Q")).size)


def inspect_records(records: Iterable[AnyRecord]) -> InspectReport:
    """One streaming pass over ``records``; see the module docstring for what is measured."""
    report = InspectReport()
    for record in records:
        report.add(record)
    return report


def inspect_batches(batches: Iterable[list[AnyRecord] | PairwiseColumns]) -> InspectReport:
    """:func:`inspect_records` over :meth:`FeedbackReader.batches` (columns stay columns)."""
    report = InspectReport()
    for batch in batches:
        report.add_batch(batch)
    return report


def report_dict(
    report: InspectReport, *, format_name: str | None = None, read_stats: ReadStats | None = None
) -> dict[str, Any]:
    """The report as a JSON-ready mapping, with the read's rejects and drops when ``read_stats`` is given.

    Every key is always present; a section that does not apply (no ranking
    records, no votes) holds ``None`` or zeros.
    """
    n_pairwise = report.kinds["pairwise"]
    n_rating = report.kinds["rating"]
    n_ranking = report.kinds["ranking"]
    n_binary = report.kinds["binary"]
    rankings = None
    if n_ranking:
        sizes = report.responses_per_ranking
        size_summary = length_summary(sizes)
        assert size_summary is not None
        rankings = {
            "n_rankings": n_ranking,
            "responses_per_ranking": {
                key: size_summary[key] for key in ("min", "median", "mean", "max")
            },
            "n_responses": int(sum(sizes)),
            "n_missing_scores": report.n_ranking_missing_scores,
            "n_by_ranks": report.n_rankings_by_ranks,
            "n_with_tied_scores": report.n_rankings_with_ties,
        }
    top_categories = report.categories.most_common(TOP_CATEGORIES)
    return {
        "format": format_name,
        "n_rows": read_stats.n_rows if read_stats is not None else None,
        "n_records": report.n_records,
        "kinds": dict(sorted(report.kinds.items())),
        "n_rejected": read_stats.rejects.total if read_stats is not None else None,
        "rejected_by_reason": dict(read_stats.rejects.counts.most_common())
        if read_stats is not None
        else None,
        "dropped": dict(read_stats.dropped) if read_stats is not None else None,
        "n_empty_responses": read_stats.n_empty_responses if read_stats is not None else None,
        "n_distinct_prompts": report.n_distinct_prompts,
        "n_exact_duplicates": report.n_exact_duplicates,
        "n_ties": report.n_ties,
        "tie_rate": report.n_ties / n_pairwise if n_pairwise else None,
        "outcomes": {outcome: report.outcomes[outcome] for outcome in OUTCOMES},
        "votes": report.votes.to_dict(),
        "categories": {
            "n_distinct": len(report.categories),
            "n_missing": report.n_no_category,
            "top": dict(top_categories),
        },
        "lengths": {
            "prompt": length_summary(report.prompt_lengths),
            "response": length_summary(report.response_lengths),
        },
        "rating_attributes": {
            name: {
                "count": tally.count,
                "missing": n_rating - tally.count,
                "mean": tally.total / tally.count if tally.count else None,
                "min": tally.low if tally.count else None,
                "max": tally.high if tally.count else None,
            }
            for name, tally in report.attributes.items()
        },
        "ranking": rankings,
        "binary": {
            "n_good": report.n_good,
            "n_bad": n_binary - report.n_good,
            "good_rate": report.n_good / n_binary,
        }
        if n_binary
        else None,
    }


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def format_report(summary: dict[str, Any]) -> str:
    """A compact, aligned text rendering of :func:`report_dict`'s mapping."""
    lines: list[tuple[str, str]] = []

    def line(label: str, text: str) -> None:
        lines.append((label, text))

    n_records = summary["n_records"]
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in summary["kinds"].items())
    line("format", str(summary["format"] or "unknown"))
    line("records", f"{n_records:,}" + (f" ({kinds})" if kinds else ""))
    if summary["n_rejected"] is not None:
        reasons = ", ".join(
            f"{reason} {count:,}" for reason, count in summary["rejected_by_reason"].items()
        )
        line("rejected", f"{summary['n_rejected']:,}" + (f" ({reasons})" if reasons else ""))
    if summary["n_empty_responses"]:
        line("empty", f"{summary['n_empty_responses']:,} empty responses (kept)")
    if summary["dropped"]:
        line(
            "dropped",
            ", ".join(f"{reason} {count:,}" for reason, count in summary["dropped"].items()),
        )
    line(
        "prompts",
        f"{summary['n_distinct_prompts']:,} distinct; "
        f"{summary['n_exact_duplicates']:,} exact duplicate records",
    )
    categories = summary["categories"]
    if categories["n_distinct"]:
        shown = ", ".join(
            f"{name} {count:,}" for name, count in list(categories["top"].items())[:3]
        )
        more = ", ..." if categories["n_distinct"] > 3 else ""
        line("categories", f"{categories['n_distinct']:,} ({shown}{more})")
    n_pairwise = summary["kinds"].get("pairwise", 0)
    if n_pairwise:
        outcomes = summary["outcomes"]
        line(
            "outcomes",
            "  ".join(
                f"{outcome} {outcomes[outcome]:,} ({_percent(outcomes[outcome], n_pairwise)})"
                for outcome in OUTCOMES
            ),
        )
    votes = summary["votes"]
    if votes["n_with_votes"]:
        line(
            "votes",
            f"{votes['n_with_votes']:,} records, {votes['n_votes']:,} votes "
            f"({votes['n_tie_votes']:,} tie, {votes['n_missing_votes']:,} missing), "
            f"{votes['n_annotators']} annotators",
        )
        line(
            "agreement",
            f"percent {_number(votes['percent_agreement'])}  "
            f"Fleiss kappa {_number(votes['fleiss_kappa'])}  "
            f"split votes {votes['n_split']:,}",
        )
        if votes["agreement_with_majority"]:
            line(
                "",
                "with majority: "
                + "  ".join(
                    f"{name} {_number(rate)}"
                    for name, rate in votes["agreement_with_majority"].items()
                ),
            )
    for name in ("prompt", "response"):
        stats = summary["lengths"][name]
        if stats is not None:
            line(
                "lengths" if name == "prompt" else "",
                f"{name:<9}"
                + "  ".join(
                    f"{key} {_number(stats[key], 1)}"
                    for key in ("min", "median", "mean", "p95", "max")
                ),
            )
    attributes = summary["rating_attributes"]
    if attributes:
        width = max(len(name) for name in attributes)
        line(
            "ratings",
            f"{'attribute':<{width}}  {'count':>7} {'missing':>7} {'mean':>8} {'min':>8} {'max':>8}",
        )
        for name, stats in attributes.items():
            line(
                "",
                f"{name:<{width}}  {stats['count']:>7,} {stats['missing']:>7,} {_number(stats['mean']):>8} "
                f"{_number(stats['min']):>8} {_number(stats['max']):>8}",
            )
    ranking = summary["ranking"]
    if ranking is not None:
        sizes = ranking["responses_per_ranking"]
        line(
            "rankings",
            f"{ranking['n_rankings']:,} ({ranking['n_by_ranks']:,} by ranks), responses per ranking "
            + " ".join(
                f"{key} {_number(sizes[key], 1)}" for key in ("min", "median", "mean", "max")
            ),
        )
        line(
            "",
            f"{ranking['n_missing_scores']:,} missing scores; "
            f"{ranking['n_with_tied_scores']:,} rankings with tied scores",
        )
    binary = summary["binary"]
    if binary is not None:
        line(
            "labels",
            f"good {binary['n_good']:,}  bad {binary['n_bad']:,}  "
            f"(good rate {_percent(binary['n_good'], binary['n_good'] + binary['n_bad'])})",
        )
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {text}".rstrip() for label, text in lines)
