"""The reader's fast path: a block of JSONL lines (or a Parquet batch, or a block of CSV
records) of flat pairwise records, decoded and checked in C, kept column by column.

The validating path (:mod:`prefkit.data.layouts` and the record classes) runs
Python for every row. Most large files are clean canonical pairs, so a block of
whole lines is first decoded in one call by ``msgspec`` into typed structs
(string texts, ``a``/``b``/``tie`` outcomes, non-negative strengths, no unknown
fields), and the reader's policies are checked with ``map`` over builtins (no
Python bytecode per record): non-empty ids, the text size limit, empty
responses, identical responses. The block is accepted only if every row passes
every check; otherwise the caller reads it again through the validating path,
which produces the exact record-by-record result, errors (file, line, field)
included. The fast path never decides what is an error: it only recognises
blocks that have none.

Accepted shapes (anything else takes the validating path): one JSON object per
line, no blank lines; ``id`` a string or integer; ``prompt``, ``response_a``,
``response_b`` strings; the outcome under ``outcome`` (the ``prefkit`` layout,
with ``kind`` = ``pairwise`` and ``schema_version`` = 1) or under ``winner``
(canonical field names without ``kind``); optional ``strength``, ``margin``,
``soft_label``, ``weight`` numbers, ``category`` string, ``metadata`` object,
and ``votes`` only as null.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from prefkit.data.records import PairwiseRecord

_MAX_FLOAT = sys.float_info.max
_Finite = Annotated[float, msgspec.Meta(ge=-_MAX_FLOAT, le=_MAX_FLOAT)]
_NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=_MAX_FLOAT)]
_Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

_COMMON_FIELDS: list[tuple[str, Any] | tuple[str, Any, Any]] = [
    ("id", str | int),
    ("prompt", str),
    ("response_a", str),
    ("response_b", str),
    ("outcome", Literal["a", "b", "tie"]),
    ("strength", _NonNegative | None, None),
    ("votes", None, None),
    ("margin", _Finite | None, None),
    ("soft_label", _Probability | None, None),
    ("weight", _NonNegative | None, None),
    ("category", str | None, None),
    ("metadata", dict[str, Any], msgspec.field(default_factory=dict)),
]

_DECODERS = {
    "prefkit": msgspec.json.Decoder(
        list[  # type: ignore[misc]
            msgspec.defstruct(
                "CanonicalPair",
                [("schema_version", Literal[1]), ("kind", Literal["pairwise"]), *_COMMON_FIELDS],
                forbid_unknown_fields=True,
            )
        ]
    ),
    "names-winner": msgspec.json.Decoder(
        list[  # type: ignore[misc]
            msgspec.defstruct(
                "NamedPair",
                _COMMON_FIELDS,
                forbid_unknown_fields=True,
                rename={"outcome": "winner"},
            )
        ]
    ),
    "names-outcome": msgspec.json.Decoder(
        list[msgspec.defstruct("NamedPair", _COMMON_FIELDS, forbid_unknown_fields=True)]  # type: ignore[misc]
    ),
}
_REQUIRED_NAMES = frozenset(
    {"schema_version", "kind", "id", "prompt", "response_a", "response_b", "outcome", "winner"}
)
SHAPES = tuple(_DECODERS)
_COMMON_TYPES = {item[0]: item[1] for item in _COMMON_FIELDS}
_FIELD_TYPES: dict[str, dict[str, Any]] = {
    "prefkit": {"schema_version": Literal[1], "kind": Literal["pairwise"], **_COMMON_TYPES},
    "names-winner": {
        ("winner" if name == "outcome" else name): kind for name, kind in _COMMON_TYPES.items()
    },
    "names-outcome": _COMMON_TYPES,
}
_REQUIRED = {
    shape: {name for name in types if name in _REQUIRED_NAMES}
    for shape, types in _FIELD_TYPES.items()
}
_RENAMES: dict[str, dict[str, str]] = {
    "prefkit": {},
    "names-winner": {"winner": "outcome"},
    "names-outcome": {},
}
"""The line shapes the fast path reads: ``prefkit`` (with ``kind`` and ``schema_version``),
``names-winner`` and ``names-outcome`` (canonical names without them, the outcome
under ``winner`` or ``outcome``)."""

_COLUMNS = (
    "prompt",
    "response_a",
    "response_b",
    "outcome",
    "strength",
    "margin",
    "soft_label",
    "weight",
    "category",
    "metadata",
)


@dataclass
class PairwiseColumns:
    """Validated pairwise records of one block, column by column (equal-length lists)."""

    ids: list[str]
    prompts: list[str]
    responses_a: list[str]
    responses_b: list[str]
    outcomes: list[str]
    strengths: list[float | None]
    margins: list[float | None]
    soft_labels: list[float | None]
    weights: list[float | None]
    categories: list[str | None]
    metadata: list[dict[str, Any]]
    prompt_lengths: np.ndarray
    """(N,) int32: characters of each prompt; the same for the two responses below."""
    response_a_lengths: np.ndarray
    response_b_lengths: np.ndarray
    n_empty_responses: int
    """Responses in the block that are empty or only whitespace (kept by the reader's policy)."""

    def __len__(self) -> int:
        return len(self.ids)

    def records(self) -> Iterator[PairwiseRecord]:
        """The block as :class:`PairwiseRecord` objects (built without re-validation)."""
        return map(
            PairwiseRecord.trusted,
            self.ids,
            self.prompts,
            self.responses_a,
            self.responses_b,
            self.outcomes,
            self.strengths,
            self.margins,
            self.soft_labels,
            self.weights,
            self.categories,
            self.metadata,
        )


def decode_pairwise_block(
    block: bytes, n_lines: int, *, shape: str, max_text_chars: int, reject_empty_responses: bool
) -> PairwiseColumns | None:
    """The block's records as columns, or ``None`` when any line needs the validating path.

    ``block`` holds ``n_lines`` whole lines (each ending with a newline, the last
    one maybe not); ``shape`` is one of :data:`SHAPES`.
    """
    body = block.rstrip(b"\n")
    if not body:
        return None
    try:
        structs = _DECODERS[shape].decode(b"[" + body.replace(b"\n", b",") + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(structs) != n_lines:  # a blank line, or a line with more than one object
        return None
    columns = {name: list(map(operator.attrgetter(name), structs)) for name in ("id", *_COLUMNS)}
    return _checked(columns, max_text_chars, reject_empty_responses)


def pairwise_columns_from_arrow(
    batch: Any,
    json_columns: Iterable[str],
    *,
    shape: str,
    max_text_chars: int,
    reject_empty_responses: bool,
) -> PairwiseColumns | None:
    """A pyarrow ``RecordBatch`` (a Parquet file's rows) as columns, or ``None`` when any
    row needs the validating path. ``json_columns`` hold JSON text (prefkit's Parquet
    files store texts and mappings so); each column is checked against the field's
    type with ``msgspec.convert``, as the JSONL decoder checks each line."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = list(batch.schema.names)
    if not _fits(names, shape):
        return None
    decoded = set(json_columns)
    values: dict[str, list[Any]] = {}
    try:
        for name in names:
            column = batch.column(name)
            if name in decoded:
                # A null stays null, as on the validating path.
                text = pc.fill_null(column.cast(pa.string()), "null").to_pylist()
                values[name] = msgspec.json.decode("[" + ",".join(text) + "]")
            else:
                values[name] = column.to_pylist()
    except (msgspec.DecodeError, TypeError):
        return None
    return _typed_columns(values, batch.num_rows, shape, max_text_chars, reject_empty_responses)


def pairwise_columns_from_rows(
    header: list[str],
    rows: list[list[str]],
    *,
    shape: str,
    max_text_chars: int,
    reject_empty_responses: bool,
) -> PairwiseColumns | None:
    """CSV records (``rows``: one string per ``header`` name) as columns, or ``None`` when
    any row needs the validating path. Every value is a string, so only string fields
    (ids, texts, the outcome, the category) can be accepted; each column is checked
    against the field's type with ``msgspec.convert``, as for Parquet."""
    if not rows or not _fits(header, shape):
        return None
    values = {name: list(column) for name, column in zip(header, zip(*rows), strict=True)}
    return _typed_columns(values, len(rows), shape, max_text_chars, reject_empty_responses)


def _fits(names: list[str], shape: str) -> bool:
    """Whether a block with the fields ``names`` can be of ``shape``."""
    types = _FIELD_TYPES[shape]
    return not set(names) - set(types) and _REQUIRED[shape] <= set(names)


def _typed_columns(
    values: dict[str, list[Any]],
    n_rows: int,
    shape: str,
    max_text_chars: int,
    reject_empty_responses: bool,
) -> PairwiseColumns | None:
    """Decoded field values, type-checked and renamed to canonical names, then
    :func:`_checked`; ``None`` if any value does not fit its field."""
    types = _FIELD_TYPES[shape]
    columns: dict[str, list[Any]] = {}
    try:
        for name, column in values.items():
            columns[_RENAMES[shape].get(name, name)] = msgspec.convert(column, list[types[name]])  # type: ignore[valid-type]
    except (msgspec.ValidationError, TypeError):
        return None
    for name in ("strength", "margin", "soft_label", "weight", "category"):
        columns.setdefault(name, [None] * n_rows)
    if "metadata" not in columns:
        columns["metadata"] = [{} for _ in range(n_rows)]
    return _checked(columns, max_text_chars, reject_empty_responses)


def _checked(
    columns: dict[str, list[Any]], max_text_chars: int, reject_empty_responses: bool
) -> PairwiseColumns | None:
    """The reader's policies over decoded, type-checked columns; ``None`` if any row fails."""
    ids = list(map(str, columns["id"]))
    texts = (columns["prompt"], columns["response_a"], columns["response_b"])
    if not ids or "" in ids:
        return None
    lengths = [np.fromiter(map(len, column), np.int32, len(ids)) for column in texts]
    if any(int(column.max()) > max_text_chars for column in lengths):
        return None
    # An empty response has no characters or only whitespace (``not text.strip()``).
    n_empty_responses = sum(
        column.count("") + sum(map(str.isspace, column)) for column in texts[1:]
    )
    if n_empty_responses and reject_empty_responses:
        return None
    # Identical responses are an error unless the outcome is a tie; let the
    # validating path decide for the (rare) blocks that have any.
    if any(map(operator.eq, columns["response_a"], columns["response_b"])):
        return None
    return PairwiseColumns(
        ids=ids,
        prompts=columns["prompt"],
        responses_a=columns["response_a"],
        responses_b=columns["response_b"],
        outcomes=columns["outcome"],
        strengths=columns["strength"],
        margins=columns["margin"],
        soft_labels=columns["soft_label"],
        weights=columns["weight"],
        categories=columns["category"],
        metadata=columns["metadata"],
        prompt_lengths=lengths[0],
        response_a_lengths=lengths[1],
        response_b_lengths=lengths[2],
        n_empty_responses=n_empty_responses,
    )
