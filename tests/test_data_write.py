"""The batch writers against the plain per-record form (``json.dumps(record.to_dict())``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from prefkit.data import read_feedback, write_records
from prefkit.data.records import BinaryRecord, Message, PairwiseRecord, RatingRecord
from prefkit.data.write import ROW_GROUP_ROWS, WRITE_BATCH


def _pairs(count: int, **metadata: object) -> list[PairwiseRecord]:
    return [
        PairwiseRecord(
            str(index),
            (Message("user", f"q{index}"),) if index % 2 else f"p {index}",
            f"a {index} é",
            f"b {index}",
            ("a", "b", "tie")[index % 3],
            strength=1.5 if index % 5 else None,
            votes=("a", None) if index % 7 == 0 else None,
            metadata={"n": index, **metadata} if index % 4 else {},
        )
        for index in range(count)
    ]


def _plain_lines(records: list) -> list[dict]:
    return [json.loads(json.dumps(record.to_dict(), ensure_ascii=False)) for record in records]


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"score": math.inf},  # msgspec would write null: json writes Infinity
        {"big": 2**70},  # beyond 64 bits
        {"nested": {True: 1}},  # a key that json turns into "true"
        {"nested": {1e16: 1}},  # json spells the key "1e+16", msgspec "1e16"
    ],
    ids=repr,
)
def test_jsonl_lines_mean_what_json_dumps_writes(metadata: dict, tmp_path: Path) -> None:
    records = _pairs(WRITE_BATCH + 10, **metadata)
    path = tmp_path / "pairs.jsonl"
    assert write_records(records, path) == len(records)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == _plain_lines(records)
    assert all(line.startswith('{"schema_version"') for line in lines)
    if not metadata:
        assert list(read_feedback(path)) == records


def test_mixed_kinds_in_one_jsonl_batch(tmp_path: Path) -> None:
    records = [
        *_pairs(3),
        RatingRecord("r", "p", "x", {"overall": 2.0}),
        BinaryRecord("b", "p", "x", label=True, weight=0.5),
    ]
    path = tmp_path / "mixed.jsonl.gz"
    write_records(records, path)
    assert list(read_feedback(path)) == records


def test_parquet_row_groups_and_round_trip(tmp_path: Path) -> None:
    records = _pairs(ROW_GROUP_ROWS + 5000, score=math.nan)
    path = tmp_path / "pairs.parquet"
    assert write_records(records, path) == len(records)
    handle = pq.ParquetFile(path)
    assert [handle.metadata.row_group(i).num_rows for i in range(handle.num_row_groups)] == [
        ROW_GROUP_ROWS,
        5000,
    ]
    back = list(read_feedback(path))
    assert len(back) == len(records)
    # NaN in metadata is kept (json's NaN), so compare the JSON form.
    assert [json.dumps(r.to_dict()) for r in back] == [json.dumps(r.to_dict()) for r in records]


def test_parquet_refuses_a_later_kind_with_other_fields(tmp_path: Path) -> None:
    records = [*_pairs(WRITE_BATCH), RatingRecord("r", "p", "x", {"overall": 2.0})]
    with pytest.raises(ValueError, match="write mixed kinds to JSONL"):
        write_records(records, tmp_path / "mixed.parquet")
    assert not list(tmp_path.iterdir())
