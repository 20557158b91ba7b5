"""Writing canonical records: JSONL (optionally .gz) or Parquet.

Both round-trip losslessly through :func:`prefkit.data.read_feedback`. Parquet
stores every field in a column; fields that are not flat strings or numbers
(conversations, vote lists, ratings, metadata) are stored as JSON text, listed
in the file's ``prefkit.json_columns`` schema metadata.

Both writers stream: records are taken :data:`WRITE_BATCH` at a time and each
batch is encoded in C (``msgspec`` encodes the record dataclasses directly;
Parquet columns are built from the records' attributes with ``map``), so no
per-record Python runs on the hot path. Parquet row groups hold up to
:data:`ROW_GROUP_ROWS` records or :data:`ROW_GROUP_BYTES` of column data,
whichever comes first. A batch whose ``metadata`` ``msgspec`` would encode to
something that means other than the standard ``json`` module's text (a NaN or
an infinity, a key that is not a string) is encoded record by record with
``json``, as before, so the output means the same either way.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import operator
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from prefkit.data.records import SCHEMA_VERSION, AnyRecord
from prefkit.errors import UserInputError

WRITE_BATCH = 4096
"""Records encoded at a time."""
ROW_GROUP_ROWS = 65536
"""Most records in one Parquet row group."""
ROW_GROUP_BYTES = 64 << 20
"""Most column bytes (uncompressed, in memory) buffered for one Parquet row group."""
JSON_COLUMNS_KEY = b"prefkit.json_columns"

JSON_COLUMNS = frozenset(
    {
        "prompt",
        "response",
        "response_a",
        "response_b",
        "responses",
        "scores",
        "ranks",
        "votes",
        "ratings",
        "metadata",
        "response_ids",
    }
)
"""Fields stored in Parquet as JSON text."""
_STRING_COLUMNS = frozenset({"id", "kind", "category", "outcome"})
_ENCODER = msgspec.json.Encoder()
_METADATA = operator.attrgetter("metadata")


def output_kind(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    raise UserInputError(
        f"cannot tell the output format of {path}: use a .jsonl, .jsonl.gz or .parquet name"
    )


def write_records(records: Iterable[AnyRecord], path: str | Path) -> int:
    """Write records to ``path`` (format from the suffix); returns how many were written.

    The file is written to a temporary name and renamed at the end, so an
    interrupted write never leaves a truncated output under the final name.
    """
    path = Path(path)
    kind = output_kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        count = (
            _write_jsonl(records, partial, path)
            if kind == "jsonl"
            else _write_parquet(records, partial)
        )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return count


def _batches(records: Iterable[AnyRecord]) -> Iterator[list[AnyRecord]]:
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, WRITE_BATCH)):
        yield batch


def _msgspec_safe(batch: list[AnyRecord]) -> bool:
    """Whether ``msgspec``'s JSON for ``batch`` means what ``json``'s does.

    Every field but ``metadata`` is validated by the record classes (finite
    numbers, string keys); ``metadata`` is free, so the batch's metadata is
    encoded both ways and decoded again, in C, and must come back equal (NaN,
    which ``msgspec`` writes as null, never compares equal, so it is left to
    ``json``; so are keys that ``json`` spells differently, such as ``1e16``).
    """
    metadata = [value for value in map(_METADATA, batch) if value]
    if not metadata:
        return True
    try:
        return msgspec.json.decode(_ENCODER.encode(metadata)) == json.loads(json.dumps(metadata))
    except (TypeError, ValueError, OverflowError):
        return False


def _prefix(kind: str) -> bytes:
    return b'{"schema_version":%d,"kind":"%s",' % (SCHEMA_VERSION, kind.encode())


def _jsonl_batch(batch: list[AnyRecord]) -> bytes:
    """The batch as JSON lines, each ``schema_version`` and ``kind`` first, as ``to_dict`` orders it."""
    if _msgspec_safe(batch):
        try:
            kinds = set(map(type, batch))
            if len(kinds) == 1:
                # Every line opens with the record's first field, ``id``; a newline
                # never occurs inside encoded JSON, so each line start is found exactly.
                lines = b"\n" + _ENCODER.encode_lines(batch)
                return lines.replace(b'\n{"id":', b"\n" + _prefix(kinds.pop().kind) + b'"id":')[1:]
            return b"".join(
                _prefix(record.kind) + _ENCODER.encode(record)[1:] + b"\n" for record in batch
            )
        except (TypeError, ValueError, OverflowError):
            pass
    return "".join(
        json.dumps(record.to_dict(), ensure_ascii=False) + "\n" for record in batch
    ).encode("utf-8")


def _write_jsonl(records: Iterable[AnyRecord], partial: Path, final: Path) -> int:
    opener = gzip.open if final.name.lower().endswith(".gz") else open
    count = 0
    with opener(partial, "wb") as handle:  # type: ignore[operator]
        for batch in _batches(records):
            handle.write(_jsonl_batch(batch))
            count += len(batch)
    return count


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    if name in JSON_COLUMNS or name in _STRING_COLUMNS:
        return pa.string()
    if name == "label":
        return pa.bool_()
    if name == "schema_version":
        return pa.int64()
    return pa.float64()


def _record_fields(record_type: type) -> list[str]:
    return ["schema_version", "kind", *(item.name for item in dataclasses.fields(record_type))]


def _json_texts(values: list[Any], safe: bool) -> Any:
    """JSON text of each value (``None`` stays null), as a pyarrow string array."""
    import pyarrow as pa

    if safe:
        try:
            encoded = pa.array(list(map(_ENCODER.encode, values)), pa.binary()).cast(pa.string())
            if None in values:
                import pyarrow.compute as pc

                missing = pa.array([value is None for value in values], pa.bool_())
                encoded = pc.if_else(missing, pa.scalar(None, pa.string()), encoded)
            return encoded
        except (TypeError, ValueError, OverflowError):
            pass
    return pa.array(
        [
            None if value is None else json.dumps(_plain(value), ensure_ascii=False)
            for value in values
        ],
        pa.string(),
    )


def _plain(value: Any) -> Any:
    """A field's value as ``to_dict`` gives it (texts and tuples as JSON-ready lists)."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _arrow_batch(batch: list[AnyRecord], schema: Any) -> Any:
    import pyarrow as pa

    safe = _msgspec_safe(batch)
    arrays = []
    for name in schema.names:
        if name == "schema_version":
            arrays.append(pa.array([SCHEMA_VERSION] * len(batch), pa.int64()))
            continue
        values = list(map(getattr, batch, itertools.repeat(name), itertools.repeat(None)))
        if name in JSON_COLUMNS:
            arrays.append(_json_texts(values, safe))
        else:
            arrays.append(pa.array(values, schema.field(name).type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _write_parquet(records: Iterable[AnyRecord], partial: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    columns: set[str] = set()
    pending: list[Any] = []
    pending_rows = pending_bytes = count = 0

    def flush() -> None:
        nonlocal pending_rows, pending_bytes
        if pending:
            table = pa.Table.from_batches(pending)
            writer.write_table(table, row_group_size=table.num_rows)  # type: ignore[union-attr]
            pending.clear()
            pending_rows = pending_bytes = 0

    for batch in _batches(records):
        kinds = set(map(type, batch))
        fields = {name for record_type in kinds for name in _record_fields(record_type)}
        if writer is None:
            # Columns: every field of the kinds in the first batch (a kind's
            # missing fields are null), in name order.
            columns = fields
            schema = pa.schema(
                [(name, _arrow_type(name)) for name in sorted(columns)],
                metadata={JSON_COLUMNS_KEY: json.dumps(sorted(JSON_COLUMNS & columns)).encode()},
            )
            writer = pq.ParquetWriter(partial, schema)
        elif fields - columns:
            raise UserInputError(
                "a Parquet file holds one record kind's fields; write mixed kinds to JSONL"
            )
        arrow_batch = _arrow_batch(batch, writer.schema)
        pending.append(arrow_batch)
        pending_rows += arrow_batch.num_rows
        pending_bytes += arrow_batch.nbytes
        count += len(batch)
        if pending_rows >= ROW_GROUP_ROWS or pending_bytes >= ROW_GROUP_BYTES:
            flush()
    if writer is None:
        pq.write_table(pa.table({"kind": pa.array([], pa.string())}), partial)
    else:
        flush()
        writer.close()
    return count
