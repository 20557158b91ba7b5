"""The reader's fast path for clean pairwise JSONL, checked against the validating path.

The validating path (every row through the layout and the record classes) is
the reference: the fast path must give the same records, counts, rejects and
error messages (file, line, field), and ``inspect`` the same report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.data import DataError, read_feedback
from prefkit.data.fastpath import PairwiseColumns
from prefkit.data.inspect import inspect_batches, inspect_records, report_dict
from prefkit.data.layouts import PREFKIT_BY_NAMES
from prefkit.data.read import FeedbackReader
from prefkit.data.sources import JSONL_BLOCK_BYTES


def _row(index: int, **overrides: object) -> dict:
    row = {
        "id": str(index),
        "prompt": f"prompt {index % 700}",
        "response_a": f"first answer {index} " + "x" * 900,
        "response_b": f"second answer {index} " + "y" * 900,
        "winner": ("a", "b", "tie")[index % 3],
    }
    row.update(overrides)
    return {key: value for key, value in row.items() if value is not None}


BAD_LINES = {
    # line number (1-based) -> what makes the row bad, or unusual but valid
    6100: {"response_b": "   "},  # empty response: kept and counted (rejected on request)
    6200: {"response_a": "same", "response_b": "same", "winner": "a"},  # identical, not a tie
    6300: {"response_a": "same", "response_b": "same", "winner": "tie"},  # identical tie: kept
    6400: {"winner": "model_a"},  # not a canonical outcome
    6500: {"id": 6500},  # an integer id: kept as "6500"
    6600: {"prompt": [{"role": "user", "content": "hi"}]},  # a conversation prompt: kept
    6700: {"extra": 1},  # an unknown field
    6800: {"strength": -1.0},  # a negative strength
    6900: {"response_a": None},  # a missing response
}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~9,000 lines (several blocks): clean blocks first, then one with bad lines."""
    path = tmp_path_factory.mktemp("fast") / "pairs.jsonl"
    lines = []
    for line in range(1, 9001):
        lines.append(json.dumps(_row(line, **BAD_LINES.get(line, {}))))
    lines[7000] = '{"id": "7001", "prompt": "unterminated'  # malformed JSON on line 7001
    lines[7100] = ""  # a blank line (skipped by both paths)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert path.stat().st_size > 2 * JSONL_BLOCK_BYTES
    return path


def _validating(path: Path, **options: object) -> FeedbackReader:
    """A reader that takes the validating path for every row (the reference)."""
    reader = read_feedback(path, **options)
    reader._fast_shape = lambda: None  # type: ignore[method-assign]
    return reader


def _errors(reader: FeedbackReader) -> list[str]:
    return [str(error) for error in reader.stats.rejects.examples]


def test_fast_path_equals_the_validating_path(pairs_file: Path, tmp_path: Path) -> None:
    fast = read_feedback(pairs_file, on_error="skip", rejects_path=tmp_path / "fast.rejects")
    batches = list(fast.batches())
    assert sum(isinstance(batch, PairwiseColumns) for batch in batches) >= 1
    assert any(isinstance(batch, list) for batch in batches)  # the first block and the bad one
    fast_records = [
        record
        for batch in batches
        for record in (batch.records() if isinstance(batch, PairwiseColumns) else batch)
    ]
    reference = _validating(
        pairs_file, on_error="skip", rejects_path=tmp_path / "validating.rejects"
    )
    reference_records = list(reference)
    assert fast_records == reference_records
    assert list(read_feedback(pairs_file, on_error="skip")) == reference_records
    assert fast.stats.summary().replace("fast.rejects", "validating.rejects") == (
        reference.stats.summary()
    )
    assert fast.stats.rejects.counts == reference.stats.rejects.counts
    assert _errors(fast) == _errors(reference)
    assert (tmp_path / "fast.rejects").read_text() == (tmp_path / "validating.rejects").read_text()
    # What each unusual line became.
    by_id = {record.id: record for record in reference_records}
    assert "6100" in by_id and "6300" in by_id and "6500" in by_id and "6600" in by_id
    assert fast.stats.n_empty_responses == reference.stats.n_empty_responses == 1
    assert fast.stats.rejects.counts == {
        "identical_responses": 1,
        "unknown_value": 1,
        "wrong_type": 2,
        "malformed_json": 1,
        "missing_field": 1,
    }, fast.stats.rejects.counts
    assert fast.layout is PREFKIT_BY_NAMES


@pytest.mark.parametrize(
    ("options", "first_bad_line"), [({}, 6200), ({"reject_empty_responses": True}, 6100)]
)
def test_fast_path_raises_the_validating_error(
    pairs_file: Path, options: dict, first_bad_line: int
) -> None:
    with pytest.raises(DataError) as fast:
        list(read_feedback(pairs_file, **options))
    with pytest.raises(DataError) as reference:
        list(_validating(pairs_file, **options))
    assert str(fast.value) == str(reference.value)
    assert str(fast.value).startswith(f"{pairs_file}:{first_bad_line}: field 'response_b'")


def test_inspect_from_columns_equals_inspect_from_records(pairs_file: Path) -> None:
    fast = read_feedback(pairs_file, on_error="skip")
    from_columns = report_dict(inspect_batches(fast.batches()), read_stats=fast.stats)
    reference = _validating(pairs_file, on_error="skip")
    from_records = report_dict(inspect_records(reference), read_stats=reference.stats)
    assert from_columns == from_records
    assert from_columns["n_distinct_prompts"] == 701  # 700 cycling prompts and one conversation


def test_text_policies_hold_on_the_fast_path(pairs_file: Path) -> None:
    """The limit and the empty-response policy are the reader's options, on both paths."""
    for options in ({"max_text_chars": 800}, {"reject_empty_responses": True}):
        fast = read_feedback(pairs_file, on_error="skip", **options)
        reference = _validating(pairs_file, on_error="skip", **options)
        assert list(fast) == list(reference)
        assert fast.stats.rejects.counts == reference.stats.rejects.counts
        assert fast.stats.n_empty_responses == reference.stats.n_empty_responses
    rejecting = read_feedback(pairs_file, on_error="skip", reject_empty_responses=True)
    assert "6100" not in {record.id for record in rejecting}
    assert rejecting.stats.rejects.counts["empty_text"] == 1
    assert rejecting.stats.n_empty_responses == 0
    limited = read_feedback(pairs_file, on_error="skip", max_text_chars=800)
    list(limited)
    assert limited.stats.rejects.counts["text_too_long"] > 8000


def test_canonical_files_take_the_fast_path(tmp_path: Path) -> None:
    """Records written by prefkit (kind, schema_version, nulls, metadata) read back the same."""
    from prefkit.data import write_records

    source = tmp_path / "pairs.jsonl"
    source.write_text(
        "".join(json.dumps(_row(index, category=f"c{index % 4}")) + "\n" for index in range(6000)),
        encoding="utf-8",
    )
    records = list(read_feedback(source))
    written = tmp_path / "canonical.jsonl"
    write_records(records, written)
    reader = read_feedback(written)
    assert any(isinstance(batch, PairwiseColumns) for batch in reader.batches())
    assert reader.format_name == "prefkit" and reader.layout is not PREFKIT_BY_NAMES
    assert list(read_feedback(written)) == records == list(_validating(written))


def test_detects_canonical_field_names(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "p", "response_a": "x", "response_b": "y", "winner": "a"},
        {"prompt": "p", "response_a": "x", "response_b": "z", "winner": "model_b"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    reader = read_feedback(path, on_error="skip")
    records = list(reader)
    assert reader.format_name == "prefkit" and reader.detected
    assert [record.id for record in records] == ["pairs.jsonl:1"]
    assert str(reader.stats.rejects.examples[0]) == (
        f"{path}:2: field 'winner': expected 'a', 'b' or 'tie', found str 'model_b'"
    )
    result = subprocess.run(
        [sys.executable, "-m", "prefkit", "data", "inspect", str(path), "--no-progress"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "detected layout: prefkit (prefkit's canonical field names without kind" in result.stderr


def test_named_layouts_keep_their_rows() -> None:
    """Canonical-name detection comes last: rows of named layouts are not taken."""
    from prefkit.data.layouts import detect_layout

    assert detect_layout({"prompt": "p", "chosen": "x", "rejected": "y"}).name == "trl"
    assert detect_layout({"id": 1, "label": "a1", "a1": "x", "a2": "y"}).name == "ukp-convarg"
    assert detect_layout({"prompt": "p", "response_a": "x", "response_b": "y"}) is None
    assert detect_layout({"prompt": "p", "response": "x", "label": True}) is PREFKIT_BY_NAMES


def test_data_commands_start_without_torch(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(_row(1)) + "\n", encoding="utf-8")
    code = (
        "import sys; from prefkit.cli import main;"
        f"main(['data', 'inspect', {str(path)!r}, '--json', '--no-progress']);"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    "override",
    [
        *BAD_LINES.values(),
        {"response_a": "\x1c\u3000"},  # whitespace by Python's definition only
        {"id": ""},
        {"kind": "pairwise"},
        {"margin": 1e400},
        {"soft_label": 1.5},
        {"votes": ["a", "b"]},
        {"category": 3},
        {"response_a": ""},
        {"response_a": "", "response_b": "", "winner": "a"},  # identical: no preference
        {"response_a": "", "response_b": "", "winner": "tie"},
        {"response_a": "", "response_b": " ", "winner": "b"},
    ],
    ids=repr,
)
@pytest.mark.parametrize("reject_empty", [False, True], ids=["keep-empty", "reject-empty"])
def test_each_check_alone(override: dict, reject_empty: bool, tmp_path: Path) -> None:
    """One unusual line in an otherwise clean block: the fast path must notice it alone,
    under either empty-response policy."""
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(_row(line, **(override if line == 500 else {}))) for line in range(1, 901)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = {"on_error": "skip", "reject_empty_responses": reject_empty}
    fast = read_feedback(path, **options)
    reference = _validating(path, **options)
    assert list(fast) == list(reference)
    assert _errors(fast) == _errors(reference)
    assert fast.stats.summary() == reference.stats.summary()
    assert fast.stats.n_empty_responses == reference.stats.n_empty_responses


def test_empty_responses_are_kept_on_the_fast_path(tmp_path: Path) -> None:
    """A clean block with empty responses stays on the fast path and counts them; with
    ``reject_empty_responses`` the block goes to the validating path, which rejects them.
    Both responses empty and not a tie is an ``identical_responses`` reject either way."""
    path = tmp_path / "pairs.jsonl"
    empties = {  # after the first block (read row by row while the layout is detected)
        5010: {"response_a": ""},
        5020: {"response_b": "  \n"},
        5030: {"response_a": "\u3000", "response_b": "", "winner": "b"},
        5040: {"response_a": "", "response_b": "", "winner": "tie"},
        5050: {"response_a": "", "response_b": "", "winner": "a"},
    }
    lines = [json.dumps(_row(line, **empties.get(line, {}))) for line in range(1, 6001)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    kept = read_feedback(path, on_error="skip")
    list(kept)
    reference = _validating(path, on_error="skip")
    assert list(read_feedback(path, on_error="skip")) == list(reference)
    assert kept.stats.summary() == reference.stats.summary()
    assert kept.stats.n_empty_responses == reference.stats.n_empty_responses == 6
    assert dict(kept.stats.rejects.counts) == {"identical_responses": 1}
    assert "6 empty responses kept" in kept.stats.summary()
    # Without the two identical pairs (which send a block to the validating path),
    # the block holding the empties is read on the fast path.
    without_identical = tmp_path / "kept.jsonl"
    without_identical.write_text("\n".join(lines[:5039] + lines[5050:]) + "\n", encoding="utf-8")
    fast = read_feedback(without_identical)
    batches = list(fast.batches())
    assert isinstance(batches[-1], PairwiseColumns) and batches[-1].n_empty_responses == 4
    assert fast.stats.n_empty_responses == 4 and fast.stats.n_records == 5989
    assert list(fast) == list(_validating(without_identical))

    rejecting = read_feedback(path, on_error="skip", reject_empty_responses=True)
    rejected_reference = _validating(path, on_error="skip", reject_empty_responses=True)
    assert list(rejecting) == list(rejected_reference)
    assert _errors(rejecting) == _errors(rejected_reference)
    assert dict(rejecting.stats.rejects.counts) == {"empty_text": 4, "identical_responses": 1}
    assert rejecting.stats.n_empty_responses == 0


@pytest.mark.parametrize("writer", ["prefkit", "plain"])
def test_parquet_fast_path_equals_the_validating_path(writer: str, tmp_path: Path) -> None:
    """Parquet written by prefkit (texts as JSON text) or plainly (canonical names)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prefkit.data import write_records

    rows = [_row(index) for index in range(40_000)]  # three batches of up to 16,384 rows
    path = tmp_path / "pairs.parquet"
    if writer == "prefkit":
        source = tmp_path / "pairs.jsonl"
        source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        write_records(read_feedback(source), path)
    else:
        rows[39_000]["response_b"] = ""  # an empty response in the last batch
        pq.write_table(pa.Table.from_pylist(rows), path)
    for reject_empty in (False, True):
        options = {"on_error": "skip", "reject_empty_responses": reject_empty}
        fast = read_feedback(path, **options)
        batches = list(fast.batches())
        assert any(isinstance(batch, PairwiseColumns) for batch in batches)
        reference = _validating(path, **options)
        assert list(read_feedback(path, **options)) == list(reference)
        assert fast.stats.summary() == reference.stats.summary()
        assert _errors(fast) == _errors(reference)
        assert fast.stats.n_empty_responses == reference.stats.n_empty_responses
        if writer == "plain":
            assert fast.stats.n_empty_responses == (0 if reject_empty else 1)
            assert _errors(fast) == (
                [
                    f"{path} (record 39000): field 'response_b': expected a non-empty response, "
                    "found an empty text. Fix the source, or keep such records by leaving out "
                    "--reject-empty-responses"
                ]
                if reject_empty
                else []
            )


def _row_by_row(path: Path, **options: object) -> FeedbackReader:
    """A reader that reads the whole file through the row-by-row source (``iter_rows``)."""
    reader = read_feedback(path, **options)
    reader._fast_file = lambda suffixes: False  # type: ignore[method-assign]
    return reader


def _csv_text(rows: list[dict], delimiter: str) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(
        out,
        fieldnames=["id", "prompt", "response_a", "response_b", "winner"],
        delimiter=delimiter,
        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
        escapechar=None,
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


CSV_BAD_LINES = {
    # record index -> what makes the row bad, or unusual but valid
    3100: {"response_b": "   "},  # empty response: kept and counted
    3200: {"response_a": "same", "response_b": "same", "winner": "a"},  # identical, not a tie
    3300: {"response_a": "same", "response_b": "same", "winner": "tie"},  # identical tie: kept
    3400: {"winner": "model_a"},  # not a canonical outcome
    3500: {"id": ""},  # an empty id: rejected
}


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_csv_fast_path_equals_the_row_by_row_path(delimiter: str, tmp_path: Path) -> None:
    """Quoted commas, quotes and newlines (records over two lines, some across block ends),
    then bad rows, a wrong column count and bytes that are not UTF-8."""
    rows = []
    for index in range(9000):
        row = _row(index, **CSV_BAD_LINES.get(index, {}))
        if delimiter == "," and index % 3 == 0:
            row["response_a"] = f'say "{index}", then\na new line ' + "z" * 1500
        rows.append(row)
    text = _csv_text(rows, delimiter)
    lines = text.split("\n")
    bad_line = next(i for i, line in enumerate(lines) if line.startswith(f"4601{delimiter}"))
    lines[bad_line] = lines[bad_line] + delimiter + "extra"  # one column too many
    path = tmp_path / ("pairs.csv" if delimiter == "," else "pairs.tsv")
    data = "\n".join(lines).encode("utf-8")
    cut = data.index(b"\n", len(data) - 20_000) + 1
    data = data[:cut] + data[cut:].replace(b"second", b"sec\xffond", 1)
    path.write_bytes(data)
    assert path.stat().st_size > 2 * JSONL_BLOCK_BYTES
    fast = read_feedback(path, on_error="skip", rejects_path=tmp_path / "fast.rejects")
    batches = list(fast.batches())
    assert sum(isinstance(batch, PairwiseColumns) for batch in batches) >= 1
    reference = _row_by_row(path, on_error="skip", rejects_path=tmp_path / "slow.rejects")
    reference_records = list(reference)
    fast_records = [
        record
        for batch in batches
        for record in (batch.records() if isinstance(batch, PairwiseColumns) else batch)
    ]
    assert fast_records == reference_records
    assert fast.stats.summary().replace("fast.rejects", "slow.rejects") == (
        reference.stats.summary()
    )
    assert _errors(fast) == _errors(reference)
    assert (tmp_path / "fast.rejects").read_text() == (tmp_path / "slow.rejects").read_text()
    assert fast.stats.rejects.counts == {
        "empty_text": 1,  # the empty id
        "identical_responses": 1,
        "unknown_value": 1,
        "wrong_columns": 1,
        "bad_encoding": 1,
    }, fast.stats.rejects.counts
    assert fast.stats.n_empty_responses == reference.stats.n_empty_responses == 1
    with pytest.raises(DataError) as fast_error:
        list(read_feedback(path))
    with pytest.raises(DataError) as reference_error:
        list(_row_by_row(path))
    assert str(fast_error.value) == str(reference_error.value)


@pytest.mark.parametrize(
    "damage",
    [
        (b'"', b'x"'),  # a quote inside an unquoted field (text, by the lenient rules)
        (b'"say', b'"say"x'),  # text after a closing quote
        (b"\n", b"\r\n"),  # Windows line ends
        (b"first", b"fi\rrst"),  # a carriage return inside an unquoted field
    ],
    ids=repr,
)
def test_csv_unusual_quoting_reads_as_the_row_by_row_path(damage: tuple, tmp_path: Path) -> None:
    rows = [_row(index) for index in range(3000)]
    for index in range(0, 3000, 2):
        rows[index]["response_a"] = f'say "{index}", then\nmore ' + "z" * 900
    text = _csv_text(rows, ",").encode("utf-8")
    old, new = damage
    at = text.index(old, 100_000)
    path = tmp_path / "pairs.csv"
    path.write_bytes(text[:at] + new + text[at + len(old) :])
    outcomes = []
    for reader in (read_feedback(path, on_error="skip"), _row_by_row(path, on_error="skip")):
        try:
            outcomes.append((list(reader), reader.stats.summary(), _errors(reader)))
        except Exception as error:  # the csv module's own errors, the same on both paths
            outcomes.append((type(error), str(error)))
    assert outcomes[0] == outcomes[1]
