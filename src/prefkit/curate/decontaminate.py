"""Training records that copy evaluation items: token n-gram overlap.

The rule of open-instruct's decontamination scripts: an evaluation text counts
as contaminated in a training text when at least ``min_overlap`` (one half) of
the evaluation text's distinct word ``ngram``-grams (default 8) occur in the
training text. ``ngram=13`` is the n-gram of GPT-3's rule; GPT-3 flagged a text
on any one shared 13-gram, which a ``min_overlap`` close to 0 reproduces.
Tokens are the normalised words of :func:`prefkit.curate.text.words`, so case,
punctuation and whitespace do not hide a copy.

The evaluation sets are indexed once (n-gram -> evaluation texts); each
training text is then looked up n-gram by n-gram, so memory holds the index of
the evaluation sets, not the training data. An evaluation text with fewer than
``ngram`` tokens cannot be checked by this rule: it is counted per set as
``too_short``. The index is keyed by the n-grams themselves (their words joined
by spaces), not by Python's ``hash``, which is salted per process: the same index
then means the same in every process it is sent to (``--engine ray`` builds it
once and shares it with its actors), and no two n-grams can collide.

The work is split in two: :func:`find_matches` (a record's matches; pure, so
it can run anywhere) and :class:`Decontamination` (the counts, the per-set table
and the flagged file, kept in training order in the process that writes).

Departure from open-instruct: their scripts compare against the evaluation
prompts; ``fields`` chooses prompts, responses or both, on both sides.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.curate.stats import CurateStats
from prefkit.curate.text import words
from prefkit.data.records import AnyRecord, render_text
from prefkit.data.write import write_records
from prefkit.progress import progress_iter

FIELD_NAMES = ("prompt", "response")


@dataclass
class DecontaminateConfig:
    """Settings of ``prefkit curate decontaminate`` / :func:`decontaminate_records`."""

    ngram: int = 8
    """Words per n-gram (8: open-instruct's default; 13: GPT-3's)."""
    min_overlap: float = 0.5
    """Share of an evaluation text's n-grams that must occur in a training text to flag it."""
    fields: str = "prompt,response"
    """Comma-separated texts compared, on both sides: prompt, response (every response)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"DecontaminateConfig: ngram must be >= 1, got {self.ngram}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(
                f"DecontaminateConfig: min_overlap must be in (0, 1], got {self.min_overlap}"
            )
        names = self.field_names
        if not names or set(names) - set(FIELD_NAMES):
            raise ValueError(
                f"DecontaminateConfig: fields must name prompt and/or response, got {self.fields!r}"
            )

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.fields.split(",") if name.strip())


@dataclass
class EvalSetTable:
    """One evaluation set's row of the contamination table."""

    name: str
    items: int = 0
    """Evaluation texts in the set."""
    too_short: int = 0
    """Texts shorter than one n-gram (not checked)."""
    items_hit: int = 0
    """Texts found in at least one training record."""
    train_records_removed: int = 0
    """Training records flagged because of this set."""


@dataclass
class DecontaminationReport:
    """What :func:`decontaminate_records` did."""

    stats: CurateStats
    tables: list[EvalSetTable] = field(default_factory=list)
    flagged: int = 0
    """Rows written to the flagged file (one per training text and evaluation text matched)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats.to_dict(),
            "flagged_matches": self.flagged,
            "eval_sets": [vars(table) for table in self.tables],
        }

    def table_text(self) -> str:
        lines = [
            f"{'evaluation set':<32} {'texts':>7} {'short':>6} {'hit':>6} {'train removed':>14}"
        ]
        for table in self.tables:
            lines.append(
                f"{table.name[:32]:<32} {table.items:>7} {table.too_short:>6} "
                f"{table.items_hit:>6} {table.train_records_removed:>14}"
            )
        return "\n".join(lines)


def record_texts(record: AnyRecord, field_names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(field name, plain text) of the record's texts under ``field_names``."""
    texts = []
    if "prompt" in field_names:
        texts.append(("prompt", render_text(record.prompt)))
    if "response" in field_names:
        texts.extend((name, render_text(text)) for name, text in record.named_responses())
    return texts


def ngram_set(text: str, ngram: int) -> set[str]:
    """The distinct word ``ngram``-grams of ``text``, each its words joined by spaces."""
    tokens = words(text)
    return {" ".join(tokens[i : i + ngram]) for i in range(len(tokens) - ngram + 1)}


@dataclass
class _EvalText:
    set_index: int
    record_id: str
    field: str
    num_ngrams: int


class EvalIndex:
    """The n-grams of the evaluation texts: n-gram -> the texts that hold it."""

    def __init__(self, config: DecontaminateConfig):
        self.config = config
        self.texts: list[_EvalText] = []
        self.postings: dict[str, list[int]] = defaultdict(list)
        self.tables: list[EvalSetTable] = []

    def add_set(self, name: str, records: Iterable[AnyRecord]) -> None:
        table = EvalSetTable(name)
        set_index = len(self.tables)
        self.tables.append(table)
        for record in records:
            for field_name, text in record_texts(record, self.config.field_names):
                table.items += 1
                grams = ngram_set(text, self.config.ngram)
                if not grams:
                    table.too_short += 1
                    continue
                position = len(self.texts)
                self.texts.append(_EvalText(set_index, record.id, field_name, len(grams)))
                for gram in grams:
                    self.postings[gram].append(position)

    def matches(self, text: str) -> list[tuple[int, int]]:
        """(evaluation text, shared n-grams) for every text whose share reaches ``min_overlap``."""
        hits: Counter[int] = Counter()
        for gram in ngram_set(text, self.config.ngram):
            for position in self.postings.get(gram, ()):
                hits[position] += 1
        return sorted(
            (position, shared)
            for position, shared in hits.items()
            if shared / self.texts[position].num_ngrams >= self.config.min_overlap
        )


def build_index(
    eval_sets: Mapping[str, Iterable[AnyRecord]], config: DecontaminateConfig
) -> EvalIndex:
    """The index of every evaluation set, in the order given."""
    index = EvalIndex(config)
    for name, records in eval_sets.items():
        index.add_set(name, records)
    # A plain dict: what reaches another process is the postings, not a default factory.
    index.postings = dict(index.postings)
    return index


Match = tuple[str, int, int]
"""(training field, evaluation text's position in the index, shared n-grams)."""


def find_matches(index: EvalIndex, record: AnyRecord) -> list[Match]:
    """Every evaluation text that ``record`` copies, field by field (in
    :func:`record_texts` order), each field's matches by position in the index."""
    return [
        (field_name, position, shared)
        for field_name, text in record_texts(record, index.config.field_names)
        for position, shared in index.matches(text)
    ]


class Decontamination:
    """What happens to each training record and its matches, in training order: the counts,
    the per-evaluation-set table and the flagged file (``flagged_path``, JSONL).

    :meth:`keep` is called once per record, in input order, wherever its matches were
    found (:func:`find_matches`, here or on a Ray actor); :meth:`finish` closes the
    flagged file and gives the report.
    """

    def __init__(self, index: EvalIndex, flagged_path: str | os.PathLike[str] | None = None):
        self.index = index
        self.report = DecontaminationReport(CurateStats("decontaminate"), index.tables)
        self._hit_texts: set[int] = set()
        # Opened with the first record, so that a run that fails before any (a cluster
        # that does not start, say) leaves no flagged file behind.
        self._flagged_path = flagged_path
        self._handle: Any = None

    def _open(self) -> None:
        """Open the flagged file the first time only (closed, it stays closed)."""
        if self._flagged_path is not None:
            self._handle = open(self._flagged_path, "w", encoding="utf-8")
            self._flagged_path = None

    def keep(self, record: AnyRecord, matches: list[Match]) -> bool:
        """Count ``record``; False when it copies an evaluation text (it is dropped)."""
        self._open()
        stats, index = self.report.stats, self.index
        stats.n_read += 1
        sets_hit: set[int] = set()
        for field_name, position, shared in matches:
            item = index.texts[position]
            self._hit_texts.add(position)
            sets_hit.add(item.set_index)
            self.report.flagged += 1
            if self._handle is not None:
                row = {
                    "id": record.id,
                    "field": field_name,
                    "eval_set": index.tables[item.set_index].name,
                    "eval_id": item.record_id,
                    "eval_field": item.field,
                    "shared_ngrams": shared,
                    "eval_ngrams": item.num_ngrams,
                    "overlap": round(shared / item.num_ngrams, 4),
                }
                self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if sets_hit:
            stats.dropped["contaminated"] += 1
            for set_index in sets_hit:
                index.tables[set_index].train_records_removed += 1
            return False
        stats.n_kept += 1
        return True

    def close(self) -> None:
        """Close the flagged file (also after an error); :meth:`finish` calls it."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def finish(self) -> DecontaminationReport:
        """The report, once every record was counted (an input of no records gets an
        empty flagged file)."""
        self._open()
        self.close()
        for table in self.index.tables:
            table.items_hit = 0
        for position in self._hit_texts:
            self.index.tables[self.index.texts[position].set_index].items_hit += 1
        return self.report


def decontaminate_records(
    train: Iterable[AnyRecord],
    eval_sets: Mapping[str, Iterable[AnyRecord]],
    out_path: str | os.PathLike[str],
    config: DecontaminateConfig | None = None,
    *,
    flagged_path: str | os.PathLike[str] | None = None,
) -> DecontaminationReport:
    """Write the training records that copy no evaluation text to ``out_path``, in input
    order.

    ``flagged_path`` (JSONL) receives one row per training text and evaluation
    text matched: the training id and field, the evaluation set, id and field,
    the shared n-grams and the overlap (their share of the evaluation text's).
    """
    config = config or DecontaminateConfig()
    index = build_index(eval_sets, config)
    run = Decontamination(index, flagged_path)

    def clean() -> Iterator[AnyRecord]:
        for record in progress_iter(
            train, description="decontaminate", unit="rec", enabled=config.progress
        ):
            if run.keep(record, find_matches(index, record)):
                yield record

    try:
        write_records(clean(), out_path)
    finally:
        run.close()
    return run.finish()


def write_table(report: DecontaminationReport, path: str | os.PathLike[str]) -> None:
    """The per-evaluation-set table and the counts as JSON."""
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
