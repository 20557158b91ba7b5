"""Reading feedback into canonical records, with one error policy for every problem.

>>> from prefkit.data import read_feedback
>>> reader = read_feedback("pairs.jsonl")                     # layout detected
>>> reader = read_feedback("testset-v1.json", mapping={...}, winner_values="a=1,b=2,tie=0")
>>> for record in reader: ...
>>> reader.stats.summary()

The layout is, in order of precedence: ``mapping`` (any layout), ``format`` (a
named layout or collection), or detected from the first readable row (or from
the folder's files for multi-file collections). Every row that yields no record
is either rejected (counted by reason, and written to the rejects file with
``on_error="skip"``) or, for collections, dropped with a stated reason.

A single JSONL, Parquet or CSV/TSV file in the ``prefkit`` layout (canonical records, or
canonical field names) is read block by block; a block of clean flat pairs
takes the fast path (:mod:`prefkit.data.fastpath`), any other block the
row-by-row path, so results and errors are the same either way.
"""

from __future__ import annotations

import functools
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.data.corpora import COLLECTIONS, Collection, detect_collection
from prefkit.data.errors import ON_ERROR_CHOICES, DataError, OnError, Rejects
from prefkit.data.fastpath import (
    PairwiseColumns,
    decode_pairwise_block,
    pairwise_columns_from_arrow,
    pairwise_columns_from_rows,
)
from prefkit.data.layouts import (
    NAMED_LAYOUTS,
    PREFKIT_BY_NAMES,
    WINNER_FIELD,
    Layout,
    LayoutError,
    MappingLayout,
    detect_layout,
)
from prefkit.data.records import AnyRecord, FieldError, Text, text_length
from prefkit.data.sources import (
    CSV_SUFFIXES,
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    RawRow,
    expand_glob,
    is_glob,
    iter_csv_blocks,
    iter_folder_rows,
    iter_jsonl_blocks,
    iter_jsonl_lines,
    iter_parquet_batches,
    iter_rows,
    parquet_batch_rows,
    suffix_of,
)
from prefkit.errors import UserInputError

DEFAULT_MAX_TEXT_CHARS = 1_000_000
"""Longest text (in characters) accepted by default; longer ones are rejected as ``text_too_long``."""


BATCH_RECORDS = 4096
"""Records per batch of :meth:`FeedbackReader.batches` on the validating path."""

_FAST_LAYOUTS = (NAMED_LAYOUTS["prefkit"], PREFKIT_BY_NAMES)


def known_formats() -> list[str]:
    """Names accepted by ``format=`` / ``--format``."""
    return [*NAMED_LAYOUTS, *COLLECTIONS]


@dataclass
class ReadStats:
    """What a read did: rows seen, records made, rejects and drops with reasons."""

    n_rows: int = 0
    """Rows (or collection units) looked at."""
    n_records: int = 0
    """Records produced."""
    n_empty_responses: int = 0
    """Empty responses (no words) in the records produced; kept unless the reader rejects them."""
    kinds: Counter = field(default_factory=Counter)
    """Record kind -> count."""
    rejects: Rejects = field(default_factory=Rejects)
    """Rows that were bad, by reason."""
    dropped: Counter = field(default_factory=Counter)
    """Units a collection skipped on purpose, by reason (not errors)."""

    def summary(self) -> str:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.kinds.items())) or "0"
        text = f"read {self.n_rows} rows -> {self.n_records} records ({kinds})"
        if self.n_empty_responses:
            text += f"; {self.n_empty_responses} empty responses kept"
        text += f"; {self.rejects.summary()}"
        if self.dropped:
            text += "; dropped " + ", ".join(
                f"{count} {why}" for why, count in self.dropped.items()
            )
        return text


class FeedbackReader:
    """Iterate canonical records from a path; see the module docstring.

    Args:
        path: file, folder, Hugging Face ``save_to_disk`` folder or Hub name.
        format: a named layout or collection (see :func:`known_formats`); ``None`` detects.
        mapping: canonical key -> source field(s); overrides ``format``.
        winner_values: meaning of winner/vote values for ``mapping``, e.g. ``"a=1,b=2,tie=0"``.
        on_error: ``"raise"`` stops at the first bad row; ``"skip"`` counts it and goes on.
        rejects_path: where ``"skip"`` writes bad rows (JSONL); ``None`` keeps only counts.
        max_text_chars: longest text accepted; a longer one is a ``text_too_long`` reject.
        reject_empty_responses: reject records with an empty response as ``empty_text``.
            By default they are kept and counted (``stats.n_empty_responses``): saying
            nothing can be the judged answer (HH-RLHF harmless, a model's empty output).
        files: read only these data files of the folder ``path``, as the folder's read
            gives them (rows tagged with the file's name and path in the folder): one shard
            of a folder read in parts. A glob pattern as ``path`` (``shards/*.jsonl``,
            quoted) reads its matches this way, as files of the folder the pattern starts from.
        layout: the layout already settled for the whole read that this reader is a part
            of (the first shard's, :mod:`prefkit.engines`): used as it is, not detected.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: str | None = None,
        mapping: dict[str, str] | None = None,
        winner_values: str | dict[str, str] | None = None,
        on_error: OnError = "raise",
        rejects_path: str | Path | None = None,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
        reject_empty_responses: bool = False,
        files: Sequence[str | Path] | None = None,
        layout: Layout | MappingLayout | None = None,
    ):
        if on_error not in ON_ERROR_CHOICES:
            raise UserInputError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        if max_text_chars < 1:
            raise UserInputError(f"max_text_chars must be >= 1, got {max_text_chars}")
        self.path = Path(path)
        self.files = None if files is None else [Path(file) for file in files]
        if self.files is None and not self.path.exists() and is_glob(path):
            self.path, self.files = expand_glob(path)
        self.on_error = on_error
        self.max_text_chars = max_text_chars
        self.reject_empty_responses = reject_empty_responses
        self.stats = ReadStats(rejects=Rejects(Path(rejects_path) if rejects_path else None))
        self.layout: Layout | MappingLayout | Collection | None = None
        self.detected = False
        self._detected_fields: frozenset[str] = frozenset()
        if layout is not None:
            self.layout = layout
        elif mapping:
            self.layout = MappingLayout(mapping, winner_values)
        elif format is not None:
            if format in COLLECTIONS:
                self.layout = COLLECTIONS[format]
            elif format in NAMED_LAYOUTS:
                self.layout = NAMED_LAYOUTS[format]
            else:
                raise LayoutError(
                    f"unknown format {format!r}; known formats: {', '.join(known_formats())}"
                )
            if winner_values is not None:
                raise LayoutError(
                    "winner_values applies to a mapping (--map); the named format fixes its own values"
                )
        elif winner_values is not None:
            raise LayoutError("winner_values needs a mapping (--map KEY=FIELD ...)")
        else:
            collection = (
                detect_collection(self.path) if self.path.exists() and self.files is None else None
            )
            if collection is not None:
                self.layout, self.detected = collection, True

    @property
    def format_name(self) -> str:
        return getattr(self.layout, "name", "unknown")

    def __iter__(self) -> Iterator[AnyRecord]:
        for item in self._stream():
            if isinstance(item, PairwiseColumns):
                yield from item.records()
            else:
                yield item

    def batches(self, size: int = BATCH_RECORDS) -> Iterator[list[AnyRecord] | PairwiseColumns]:
        """The same records as iterating the reader, in batches.

        A batch is a list of up to ``size`` records, or a block of pairwise
        records kept column by column (:class:`~prefkit.data.fastpath.PairwiseColumns`,
        from the fast path for clean JSONL; ``records()`` turns it into records).
        Consumers that can work on columns (``inspect``) skip building the objects.
        """
        pending: list[AnyRecord] = []
        for item in self._stream():
            if isinstance(item, PairwiseColumns):
                if pending:
                    yield pending
                    pending = []
                yield item
            else:
                pending.append(item)
                if len(pending) >= size:
                    yield pending
                    pending = []
        if pending:
            yield pending

    def _stream(self) -> Iterator[AnyRecord | PairwiseColumns]:
        try:
            if self.files is not None:
                if isinstance(self.layout, Collection):
                    raise UserInputError(
                        f"{self.path}: the {self.layout.name} collection reads a whole folder; "
                        "give the folder, not a pattern or a part of it"
                    )
                yield from self._read_rows(iter_folder_rows(self.path, self.files))
            elif isinstance(self.layout, Collection):
                yield from self._read_collection(self.layout)
            elif self._fast_file(JSONL_SUFFIXES):
                yield from self._read_jsonl_blocks()
            elif self._fast_file(PARQUET_SUFFIXES):
                yield from self._read_parquet_batches()
            elif self._fast_file(CSV_SUFFIXES):
                yield from self._read_csv_blocks()
            else:
                yield from self._read_rows(iter_rows(self.path))
        finally:
            self.stats.rejects.close()

    def _fast_file(self, suffixes: tuple[str, ...]) -> bool:
        """A single file of one of ``suffixes`` whose layout may take the fast path."""
        return (
            self.path.is_file()
            and suffix_of(self.path) in suffixes
            and (self.layout is None or self.layout in _FAST_LAYOUTS)
        )

    def _read_jsonl_blocks(self) -> Iterator[AnyRecord | PairwiseColumns]:
        """A JSONL file block by block: the fast path where it applies, else row by row."""
        source = str(self.path)
        yield from self._read_blocks(
            (
                functools.partial(decode_pairwise_block, block, n_lines),
                functools.partial(iter_jsonl_lines, io.BytesIO(block), source, first_line),
            )
            for first_line, n_lines, block in iter_jsonl_blocks(self.path)
        )

    def _read_parquet_batches(self) -> Iterator[AnyRecord | PairwiseColumns]:
        """A Parquet file batch by batch: the fast path where it applies, else row by row."""
        source = str(self.path)
        yield from self._read_blocks(
            (
                functools.partial(pairwise_columns_from_arrow, batch, json_columns),
                functools.partial(parquet_batch_rows, batch, json_columns, source, first_index),
            )
            for first_index, batch, json_columns in iter_parquet_batches(self.path)
        )

    def _read_csv_blocks(self) -> Iterator[AnyRecord | PairwiseColumns]:
        """A CSV/TSV file block by block: the fast path where it applies, else row by row."""
        yield from self._read_blocks(
            (
                None
                if values is None
                else functools.partial(pairwise_columns_from_rows, header, values),
                functools.partial(iter, rows),
            )
            for header, values, rows in iter_csv_blocks(self.path)
        )

    def _read_blocks(
        self,
        blocks: Iterable[
            tuple[Callable[..., PairwiseColumns | None] | None, Callable[[], Iterable[RawRow]]]
        ],
    ) -> Iterator[AnyRecord | PairwiseColumns]:
        """Each block as checked columns when the fast path takes it (``decode`` gives None
        when it does not), else its rows through the validating path. The shape is looked up
        per block: the layout may only be known after the first block's rows."""
        for decode, rows in blocks:
            shape = self._fast_shape()
            columns = (
                None
                if shape is None or decode is None
                else decode(
                    shape=shape,
                    max_text_chars=self.max_text_chars,
                    reject_empty_responses=self.reject_empty_responses,
                )
            )
            if columns is None:
                yield from self._read_rows(rows())
                continue
            self._count_columns(columns)
            yield columns

    def _count_columns(self, columns: PairwiseColumns) -> None:
        self.stats.n_rows += len(columns)
        self.stats.n_records += len(columns)
        self.stats.kinds["pairwise"] += len(columns)
        self.stats.n_empty_responses += columns.n_empty_responses

    def _fast_shape(self) -> str | None:
        """Which line shape the fast path expects, once the layout is known."""
        if self.layout is NAMED_LAYOUTS["prefkit"]:
            return "prefkit"
        if self.layout is PREFKIT_BY_NAMES:
            return "names-winner" if WINNER_FIELD in self._detected_fields else "names-outcome"
        return None

    def _read_collection(self, collection: Collection) -> Iterator[AnyRecord]:
        for record in collection.read(self.path, self.stats.dropped):
            self.stats.n_rows += 1
            error = self._check_texts(
                record, RawRow(str(self.path), self.stats.n_rows - 1, None, "record")
            )
            if error is not None:
                self._reject(error)
                continue
            self._count(record)
            yield record

    def _read_rows(self, rows: Iterable[RawRow]) -> Iterator[AnyRecord]:
        for row in rows:
            self.stats.n_rows += 1
            if row.error is not None:
                self._reject(row.error)
                continue
            if self.layout is None:
                self.layout = detect_layout(row.fields)  # type: ignore[arg-type]
                self.detected = True
                self._detected_fields = frozenset(row.fields)  # type: ignore[arg-type]
                if self.layout is None:
                    raise DataError(
                        row.source,
                        row.line,
                        None,
                        f"cannot detect the layout from the fields {sorted(row.fields)[:12]}",  # type: ignore[arg-type]
                        reason="unknown_layout",
                        location=row.location,
                        hint=f"pass --format NAME ({', '.join(known_formats())}) or --map KEY=FIELD",
                    )
            try:
                records = self.layout.convert(row)  # type: ignore[union-attr]
            except FieldError as error:
                self._reject(
                    row.fail(
                        error.field, f"expected {error.expected}, found {error.found}", error.reason
                    )
                )
                continue
            for record in records:
                error = self._check_texts(record, row)
                if error is not None:
                    self._reject(error)
                    continue
                self._count(record)
                yield record

    def _check_texts(self, record: AnyRecord, row: RawRow) -> DataError | None:
        """Apply the reader's text policies: the size limit and empty responses.

        A record that passes adds its empty responses to ``stats.n_empty_responses``.
        """
        n_empty = 0
        for name, text in [("prompt", record.prompt), *record.named_responses()]:
            length = text_length(text)
            if length > self.max_text_chars:
                return row.fail(
                    name,
                    f"expected a text of at most {self.max_text_chars:,} characters, "
                    f"found {length:,}",
                    "text_too_long",
                    hint="Raise the limit (--max-text-chars) if this is intended",
                )
            if name != "prompt" and not _content(text).strip():
                if self.reject_empty_responses:
                    return row.fail(
                        name,
                        "expected a non-empty response, found an empty text",
                        "empty_text",
                        hint="Fix the source, or keep such records by leaving out "
                        "--reject-empty-responses",
                    )
                n_empty += 1
        self.stats.n_empty_responses += n_empty
        return None

    def _count(self, record: AnyRecord) -> None:
        self.stats.n_records += 1
        self.stats.kinds[record.kind] += 1

    def _reject(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.stats.rejects.add(error)


def _content(text: Text) -> str:
    """The text's words without role labels (a conversation of empty turns is empty)."""
    return text if isinstance(text, str) else "".join(message.content for message in text)


def read_feedback(path: str | Path, **options: Any) -> FeedbackReader:
    """A :class:`FeedbackReader` over ``path``; iterate it for records."""
    return FeedbackReader(path, **options)


def load_feedback(path: str | Path, **options: Any) -> tuple[list[AnyRecord], ReadStats]:
    """Read every record into a list; returns the records and the read's stats."""
    reader = FeedbackReader(path, **options)
    records = list(reader)
    return records, reader.stats
