"""Raw rows from files: JSONL (.gz), JSON lists, Parquet, CSV/TSV, folders,
Hugging Face ``save_to_disk`` folders, and Hub names.

A source yields :class:`RawRow` objects: the row's fields as a mapping, with the
file and line (or record index) it came from. A row that cannot even be parsed
(malformed JSON, bytes that are not UTF-8, a CSV line with the wrong number of
columns) is yielded with ``error`` set instead of ``fields``, so that the caller
applies one error policy to every kind of problem.

Large inputs stream: JSONL, CSV and Parquet are read a line or a batch at a
time. A JSON list is parsed whole (use JSONL for data that does not fit memory).
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.data.errors import DataError

FILE_FIELD = "_file"
"""Field added to rows read from a folder: the file's name without extensions (e.g. a topic)."""
PATH_FIELD = "_path"
"""Field added to rows read from a folder: the file's path relative to the folder."""
SPLIT_FIELD = "_split"
"""Field added to rows of a Hugging Face DatasetDict folder: the split's name."""

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
JSON_SUFFIXES = (".json", ".json.gz")
CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
DATA_SUFFIXES = JSONL_SUFFIXES + JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class RawRow:
    """One row as found in the source, before any interpretation."""

    source: str
    """The file it came from (or the data set name)."""
    line: int | None
    """1-based line number (``location == 'line'``) or 0-based record index."""
    fields: dict[str, Any] | None
    """The row's fields; ``None`` when ``error`` is set."""
    location: str = "line"
    """``line`` for line-oriented files, ``record`` for JSON lists, Parquet and Arrow."""
    error: DataError | None = None
    """Set when the row could not be parsed at all."""

    def fail(
        self, field: str | None, message: str, reason: str, hint: str | None = None
    ) -> DataError:
        """A :class:`DataError` located at this row."""
        return DataError(
            source=self.source,
            line=self.line,
            field=field,
            message=message,
            reason=reason,
            hint=hint,
            location=self.location,
            raw=self.fields,
        )


def suffix_of(path: Path) -> str:
    """The data suffix of ``path`` in lower case, including ``.gz`` when present."""
    name = path.name.lower()
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def is_hf_dataset_folder(path: Path) -> bool:
    """True for a folder written by ``datasets.Dataset(Dict).save_to_disk``."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def list_data_files(folder: Path) -> list[Path]:
    """Data files below ``folder``, recursively, in a stable (sorted) order."""
    files = [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and suffix_of(path) in DATA_SUFFIXES
        and not path.name.startswith(".")
        and not path.name.endswith(".rejects.jsonl")
    ]
    return files


def iter_rows(path: str | Path) -> Iterator[RawRow]:
    """Every raw row of a file, folder, Hugging Face folder or Hub name."""
    path = Path(path)
    if path.is_dir():
        if is_hf_dataset_folder(path):
            yield from _iter_hf_folder(path)
            return
        files = list_data_files(path)
        if not files:
            raise DataError(
                str(path),
                None,
                None,
                f"the folder holds no data files ({', '.join(DATA_SUFFIXES)})",
                reason="no_data",
            )
        yield from iter_folder_rows(path, files)
        return
    if path.is_file():
        yield from iter_file_rows(path)
        return
    if _HUB_NAME.match(str(path)):
        yield from _iter_hub(str(path))
        return
    raise DataError(
        str(path),
        None,
        None,
        "no such file or folder",
        reason="not_found",
        hint="Check the path; a Hub name looks like 'org/name'",
    )


def iter_folder_rows(folder: Path, files: Iterable[Path]) -> Iterator[RawRow]:
    """The rows of ``files`` (data files below ``folder``) as the folder's read gives them:
    each tagged with its file's name (:data:`FILE_FIELD`) and path in the folder
    (:data:`PATH_FIELD`). Reading a folder's files in parts gives the rows of the whole."""
    for file in files:
        relative = str(file.relative_to(folder))
        stem = file.name[: len(file.name) - len(suffix_of(file))]
        for row in iter_file_rows(file):
            if row.fields is not None:
                row.fields = {**row.fields, FILE_FIELD: stem, PATH_FIELD: relative}
            yield row


def is_glob(path: str | Path) -> bool:
    """True for a pattern (``shards/*.jsonl``, ``data/**/part-*.parquet``), not a path."""
    return glob.has_magic(str(path))


def expand_glob(pattern: str | Path) -> tuple[Path, list[Path]]:
    """The folder a pattern starts from (its leading part without wildcards) and the data
    files it matches, sorted (``**`` matches any depth); read as that folder's files."""
    pattern = str(pattern)
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    files = sorted(
        Path(match)
        for match in glob.glob(pattern, recursive=True)
        if Path(match).is_file()
        and suffix_of(Path(match)) in DATA_SUFFIXES
        and not Path(match).name.startswith(".")
        and not match.endswith(".rejects.jsonl")
    )
    if not files:
        raise DataError(
            pattern,
            None,
            None,
            f"the pattern matches no data files ({', '.join(DATA_SUFFIXES)})",
            reason="no_data",
            hint="Check the pattern; quote it so that the shell does not expand it",
        )
    return base, files


def iter_file_rows(path: Path) -> Iterator[RawRow]:
    suffix = suffix_of(path)
    if suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path)
    elif suffix in JSON_SUFFIXES:
        yield from _iter_json(path)
    elif suffix in PARQUET_SUFFIXES:
        yield from _iter_parquet(path)
    elif suffix in CSV_SUFFIXES:
        yield from _iter_csv(path)
    else:
        raise DataError(
            str(path),
            None,
            None,
            f"unknown file type {suffix!r}; expected one of {', '.join(DATA_SUFFIXES)}",
            reason="unknown_format",
        )


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _decode(
    raw: bytes, source: str, line: int, location: str = "line"
) -> tuple[str | None, DataError | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as error:
        return None, DataError(
            source,
            line,
            None,
            f"bytes that are not valid UTF-8 at byte {error.start} of the line "
            f"({raw[max(0, error.start - 8) : error.start + 8]!r})",
            reason="bad_encoding",
            hint="Re-encode the file as UTF-8",
            location=location,
            raw=raw.decode("utf-8", errors="backslashreplace"),
        )


def _parse_object(text: str, source: str, line: int, location: str = "line") -> RawRow:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return RawRow(
            source,
            line,
            None,
            location,
            DataError(
                source,
                line,
                None,
                f"malformed JSON ({error.msg} at column {error.colno})",
                reason="malformed_json",
                location=location,
                raw=text,
            ),
        )
    if not isinstance(value, dict):
        return RawRow(
            source,
            line,
            None,
            location,
            DataError(
                source,
                line,
                None,
                f"expected a JSON object, found {type(value).__name__}",
                reason="wrong_type",
                location=location,
                raw=value,
            ),
        )
    return RawRow(source, line, value, location)


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    with _open_binary(path) as handle:
        yield from iter_jsonl_lines(handle, str(path))


def iter_jsonl_lines(lines: Iterable[bytes], source: str, first_line: int = 1) -> Iterator[RawRow]:
    """Rows of JSONL ``lines`` (bytes, as a binary file iterates), numbered from ``first_line``."""
    for number, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        text, error = _decode(raw, source, number)
        if error is not None:
            yield RawRow(source, number, None, "line", error)
            continue
        yield _parse_object(text, source, number)  # type: ignore[arg-type]


JSONL_BLOCK_BYTES = 4 << 20
"""Size of the blocks :func:`iter_jsonl_blocks` reads (whole lines, so a little more or less)."""


def iter_jsonl_blocks(
    path: Path, block_bytes: int = JSONL_BLOCK_BYTES
) -> Iterator[tuple[int, int, bytes]]:
    """``(first line's number, number of lines, block)`` over a JSONL file, in blocks of
    whole lines (blank ones included).

    The first block is short (64 KiB), so that a caller can look at the first
    rows before committing to a way of reading the rest.
    """
    with _open_binary(path) as handle:
        first_line, rest, size = 1, b"", min(block_bytes, 1 << 16)
        while True:
            chunk = handle.read(size)
            size = block_bytes
            if not chunk:
                break
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest = chunk
                continue
            block, rest = chunk[:cut], chunk[cut:]
            n_lines = block.count(b"\n")
            yield first_line, n_lines, block
            first_line += n_lines
        if rest:
            yield first_line, 1, rest


def _iter_json(path: Path) -> Iterator[RawRow]:
    source = str(path)
    with _open_binary(path) as handle:
        data = handle.read()
    text, error = _decode(data, source, 1)
    if error is not None:
        raise error
    stripped = text.lstrip("\ufeff \t\r\n")  # type: ignore[union-attr]
    if stripped.startswith("{") and "\n" in stripped.strip():
        # A .json file that is really JSON Lines.
        first_line = stripped.split("\n", 1)[0].strip()
        try:
            json.loads(first_line)
            yield from _iter_jsonl(path)
            return
        except json.JSONDecodeError:
            pass
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError as error:
        raise DataError(
            source,
            error.lineno,
            None,
            f"malformed JSON ({error.msg} at line {error.lineno} column {error.colno})",
            reason="malformed_json",
        ) from None
    if isinstance(value, dict):
        # Either one record, or a column-oriented/dataset wrapper such as {"data": [...]}.
        lists = [
            key
            for key, item in value.items()
            if isinstance(item, list) and item and isinstance(item[0], dict)
        ]
        if len(lists) == 1 and len(value) <= 3:
            value = value[lists[0]]
        else:
            value = [value]
    if not isinstance(value, list):
        raise DataError(
            source,
            None,
            None,
            f"expected a JSON list of objects, found {type(value).__name__}",
            reason="wrong_type",
        )
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            yield RawRow(
                source,
                index,
                None,
                "record",
                DataError(
                    source,
                    index,
                    None,
                    f"expected a JSON object, found {type(item).__name__}",
                    reason="wrong_type",
                    location="record",
                    raw=item,
                ),
            )
            continue
        yield RawRow(source, index, item, "record")


PARQUET_BATCH_ROWS = 16384
"""Rows per batch that :func:`iter_parquet_batches` reads."""


def iter_parquet_batches(path: Path) -> Iterator[tuple[int, Any, list[str]]]:
    """``(index of the batch's first row, pyarrow RecordBatch, JSON text columns)`` over a Parquet file.

    Canonical files written by prefkit keep nested fields (and texts) as JSON
    text; their names are in the file's ``prefkit.json_columns`` metadata.
    """
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    metadata = handle.schema_arrow.metadata or {}
    json_columns = json.loads(metadata.get(b"prefkit.json_columns", b"[]"))
    index = 0
    for batch in handle.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        yield index, batch, json_columns
        index += batch.num_rows


def parquet_batch_rows(
    batch: Any, json_columns: list[str], source: str, first_index: int
) -> Iterator[RawRow]:
    """The rows of one batch of :func:`iter_parquet_batches`, JSON text columns decoded."""
    for index, row in enumerate(batch.to_pylist(), start=first_index):
        for name in json_columns:
            if row.get(name) is not None:
                row[name] = json.loads(row[name])
        yield RawRow(source, index, row, "record")


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    for index, batch, json_columns in iter_parquet_batches(path):
        yield from parquet_batch_rows(batch, json_columns, str(path), index)


def _sniff_delimiter(header: str, suffix: str) -> str:
    if suffix.startswith(".tsv"):
        return "\t"
    return "\t" if header.count("\t") > header.count(",") else ","


@dataclass
class CsvDialect:
    """How a CSV/TSV file is read: its header and the ``csv`` module's settings."""

    header: list[str]
    delimiter: str
    quoting: int


def _read_csv_header(handle: io.BufferedIOBase, path: Path) -> CsvDialect | None:
    """The header line (``None`` for an empty file); a header starting with ``#`` is accepted.

    Tab-separated files are read without quote handling (a ``"`` is text),
    since they rarely quote and an unmatched quote would swallow lines;
    comma-separated files use standard CSV quoting.
    """
    source = str(path)
    raw = handle.readline()
    if not raw:
        return None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    header_line, error = _decode(raw, source, 1)
    if error is not None:
        raise error
    delimiter = _sniff_delimiter(header_line, suffix_of(path))  # type: ignore[arg-type]
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    header = next(csv.reader([header_line], delimiter=delimiter, quoting=quoting))  # type: ignore[list-item]
    if header and header[0].startswith("#"):
        header[0] = header[0].lstrip("#").strip()
    header = [name.strip() for name in header]
    if len(set(header)) != len(header):
        raise DataError(
            source, 1, None, f"duplicate column names in the header {header}", reason="bad_header"
        )
    return CsvDialect(header, delimiter, quoting)


def _csv_rows(
    raw_lines: Iterable[bytes], dialect: CsvDialect, source: str, first_line: int
) -> Iterator[RawRow]:
    """Rows of the CSV records in ``raw_lines`` (lines after the header, as a binary file
    iterates them), the first on line ``first_line``."""
    bad_lines: dict[int, DataError] = {}
    header = dialect.header

    def lines() -> Iterator[str]:
        for number, raw in enumerate(raw_lines, start=first_line):
            text, error = _decode(raw, source, number)
            if error is not None:
                bad_lines[number] = error
                text = raw.decode("utf-8", errors="replace")
            yield text  # type: ignore[misc]

    reader = csv.reader(lines(), delimiter=dialect.delimiter, quoting=dialect.quoting)
    previous_end = first_line - 1
    for values in reader:
        start, end = previous_end + 1, reader.line_num + first_line - 1
        previous_end = end
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        bad = next((bad_lines[n] for n in range(start, end + 1) if n in bad_lines), None)
        if bad is not None:
            yield RawRow(source, bad.line, None, "line", bad)
            continue
        if len(values) != len(header):
            yield RawRow(
                source,
                start,
                None,
                "line",
                DataError(
                    source,
                    start,
                    None,
                    f"expected {len(header)} columns ({', '.join(header)}), found {len(values)}",
                    reason="wrong_columns",
                    raw=dialect.delimiter.join(values),
                ),
            )
            continue
        yield RawRow(source, start, dict(zip(header, values, strict=True)), "line")


def _iter_csv(path: Path) -> Iterator[RawRow]:
    """CSV or TSV with a header line (see :func:`_read_csv_header`)."""
    with _open_binary(path) as handle:
        dialect = _read_csv_header(handle, path)
        if dialect is not None:
            yield from _csv_rows(handle, dialect, str(path), 2)


CsvBlock = tuple[list[str], list[list[str]] | None, Iterator[RawRow]]
"""``(header, values, rows)``: one block of whole records of a CSV/TSV file. ``values``
holds each record's fields (strings, as many as the header has) when every record of
the block is such a clean row, else ``None``; ``rows`` (lazy) are the block's
:class:`RawRow` objects, as :func:`iter_file_rows` gives them."""


def _record_end(block: bytes, quoting: int) -> int:
    """Where the last whole record of ``block`` (whole lines) may end: after the last
    newline preceded by an even number of quotes (0 when there is none). An odd count
    means the newline is inside a quoted field, if the file quotes as CSV does; whether
    it does is checked by parsing the block strictly."""
    if quoting == csv.QUOTE_NONE:
        return len(block)
    import numpy as np

    data = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(data == ord("\n"))
    even = np.flatnonzero(np.cumsum(data == ord('"'))[newlines] % 2 == 0)
    return int(newlines[even[-1]]) + 1 if even.size else 0


def _strict_values(block: bytes, dialect: CsvDialect) -> tuple[bool, list[list[str]] | None]:
    """``(parsed, values)``: whether ``block`` parses as whole records with the ``csv``
    module's strict rules (then it ends where a record ends, and its records are what the
    lenient reader gives), and the records when they are all clean rows."""
    try:
        text, clean = block.decode("utf-8"), True
    except UnicodeDecodeError:
        # Same quotes, delimiters and newlines as the per-line decoding; not clean.
        text, clean = block.decode("utf-8", errors="surrogateescape"), False
    reader = csv.reader(
        io.StringIO(text, newline="\n"),
        delimiter=dialect.delimiter,
        quoting=dialect.quoting,
        strict=True,
    )
    try:
        values = list(reader)
    except csv.Error:
        return False, None
    width = len(dialect.header)
    clean = clean and width > 1 and bool(values) and set(map(len, values)) == {width}
    return True, values if clean else None


def iter_csv_blocks(path: Path, block_bytes: int = JSONL_BLOCK_BYTES) -> Iterator[CsvBlock]:
    """A CSV/TSV file in blocks of whole records (see :data:`CsvBlock`).

    Blocks end where a record ends: at a newline outside quotes, checked by a
    strict parse of the block. The first block is short (64 KiB), as for JSONL.
    Where no such end is found (a block that the strict rules refuse, or no
    record end within four blocks), the rest of the file is one last block,
    read only by the lenient reader.
    """
    source = str(path)
    with _open_binary(path) as handle:
        dialect = _read_csv_header(handle, path)
        if dialect is None:
            return
        first_line, pending, size = 2, b"", min(block_bytes, 1 << 16)
        while True:
            chunk = handle.read(size)
            size = block_bytes
            data = pending + chunk
            if not data:
                return
            cut = (
                _record_end(data[: data.rfind(b"\n") + 1], dialect.quoting) if chunk else len(data)
            )
            if cut == 0 and len(data) <= 4 * block_bytes:
                pending = data
                continue
            block, pending = data[:cut], data[cut:]
            parsed, values = _strict_values(block, dialect) if cut else (False, None)
            if not parsed:
                rest = itertools.chain(io.BytesIO(block + pending + handle.readline()), handle)
                yield dialect.header, None, _csv_rows(rest, dialect, source, first_line)
                return
            yield dialect.header, values, _csv_rows(io.BytesIO(block), dialect, source, first_line)
            first_line += block.count(b"\n") + (not block.endswith(b"\n"))


def _iter_arrow_file(file: Path, source: str) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    with pa.memory_map(str(file), "r") as handle:
        try:
            reader = pa.ipc.open_stream(handle)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(handle)  # type: ignore[assignment]
            for index in range(reader.num_record_batches):  # type: ignore[attr-defined]
                yield from reader.get_batch(index).to_pylist()  # type: ignore[attr-defined]
            return
        for batch in reader:
            yield from batch.to_pylist()


def _iter_hf_split(folder: Path, split: str | None) -> Iterator[RawRow]:
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    files = [folder / entry["filename"] for entry in state.get("_data_files", [])]
    if not files:
        files = sorted(folder.glob("*.arrow"))
    index = 0
    for file in files:
        for row in _iter_arrow_file(file, str(folder)):
            if split is not None:
                row = {**row, SPLIT_FIELD: split}
            yield RawRow(str(file), index, row, "record")
            index += 1


def _iter_hf_folder(folder: Path) -> Iterator[RawRow]:
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        for split in splits:
            yield from _iter_hf_split(folder / split, split)
    else:
        yield from _iter_hf_split(folder, None)


def _iter_hub(name: str) -> Iterator[RawRow]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            name,
            None,
            None,
            "is not a local file or folder, and reading a Hub data set "
            "needs the 'datasets' package",
            reason="not_found",
            hint="pip install 'prefkit[hf]', or pass a local path",
        ) from None
    try:
        loaded = datasets.load_dataset(name, streaming=True)
    except Exception as error:  # the Hub raises many kinds of errors; all mean "not readable"
        raise DataError(
            name,
            None,
            None,
            f"could not be loaded from the Hugging Face Hub ({error})",
            reason="not_found",
            hint="Check the name and the network, or pass a local path",
        ) from None
    splits = loaded.items() if isinstance(loaded, dict) else [(None, loaded)]
    for split, dataset in splits:
        for index, row in enumerate(dataset):
            fields = dict(row) if split is None else {**row, SPLIT_FIELD: split}
            yield RawRow(f"{name}" + (f"[{split}]" if split else ""), index, fields, "record")
