"""Writing canonical records: JSONL (optionally .gz) or Parquet.

Both round-trip losslessly through :func:`prefkit.data.read_feedback`. Parquet
stores every field in a column; fields that are not flat strings or numbers
(conversations, vote lists, ratings, metadata) are stored as JSON text, listed
in the file's ``prefkit.json_columns`` schema metadata.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefkit.data.records import AnyRecord
from prefkit.errors import UserInputError

PARQUET_BATCH = 4096
JSON_COLUMNS_KEY = b"prefkit.json_columns"


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


def _write_jsonl(records: Iterable[AnyRecord], partial: Path, final: Path) -> int:
    opener = gzip.open if final.name.lower().endswith(".gz") else open
    count = 0
    with opener(partial, "wt", encoding="utf-8") as handle:  # type: ignore[operator]
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    return count


def _write_parquet(records: Iterable[AnyRecord], partial: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    json_columns: set[str] = {
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
    writer = None
    count = 0
    columns: list[str] = []

    def flush() -> None:
        nonlocal writer, columns
        if not rows:
            return
        if writer is None:
            columns = sorted({key for row in rows for key in row})
            schema = pa.schema(
                [
                    (
                        name,
                        pa.string()
                        if name in json_columns or name in ("id", "kind", "category", "outcome")
                        else _arrow_type(name),
                    )
                    for name in columns
                ],
                metadata={
                    JSON_COLUMNS_KEY: json.dumps(sorted(json_columns & set(columns))).encode()
                },
            )
            writer = pq.ParquetWriter(partial, schema)
        table = pa.Table.from_pylist(
            [
                {name: _encode(name, row.get(name), json_columns) for name in columns}
                for row in rows
            ],
            schema=writer.schema,
        )
        writer.write_table(table)
        rows.clear()

    for record in records:
        data = record.to_dict()
        if writer is not None and set(data) - set(columns):
            raise UserInputError(
                "a Parquet file holds one record kind's fields; write mixed kinds to JSONL"
            )
        rows.append(data)
        count += 1
        if len(rows) >= PARQUET_BATCH:
            flush()
    flush()
    if writer is None:
        pq.write_table(pa.table({"kind": pa.array([], pa.string())}), partial)
    else:
        writer.close()
    return count


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    if name == "label":
        return pa.bool_()
    if name == "schema_version":
        return pa.int64()
    return pa.float64()


def _encode(name: str, value: Any, json_columns: set[str]) -> Any:
    if name in json_columns:
        return None if value is None else json.dumps(value, ensure_ascii=False)
    return value
