"""Candidate decoders for the data reader's hot path, measured on the bench file's records.

Each candidate decodes the same generated pairwise JSONL (``data_inspect.generate``)
and does the work ``prefkit data inspect`` needs per record (the winner's count, a
64-bit hash of the prompt and of the whole content, the text lengths), so that
the numbers compare whole passes, not parsers alone:

- ``json_lines``: the standard library, one ``json.loads`` per line (today's reader
  without the record construction);
- ``orjson_lines``: ``orjson.loads`` per line;
- ``msgspec_struct_lines``: ``msgspec`` typed decoding into a Struct, per line;
- ``msgspec_struct_blocks``: a block of lines decoded as one JSON array into a
  list of Structs, the per-record work done by ``map`` over builtins (no Python
  bytecode per record);
- ``arrow_blocks_*``: ``pyarrow.json.read_json`` on blocks of whole lines with an
  explicit schema (C++, no Python per record), vectorised counts and lengths,
  and three ways to hash the texts: Python's ``hash`` over the column's strings
  (``pyhash``), ``polars`` ``Series.hash`` (``polars``), and a vectorised numpy
  hash over the Arrow buffers (``numpy``).

``orjson`` and ``polars`` are not prefkit dependencies: their candidates are
skipped (and listed as not installed) unless they are installed. Candidates run in turn, interleaved over ``--repeats``; medians are written to
``bench/results/reader_candidates.json`` with the load average.

    python bench/reader_candidates.py [--records 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_inspect import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "reader_candidates.json"
BLOCK_BYTES = 8 << 20


def python_pass(rows) -> tuple[int, int]:
    winners: Counter = Counter()
    hashes = []
    lengths = []
    for row in rows:
        winners[row["winner"]] += 1
        hashes.append(hash((row["prompt"],)))
        hashes.append(hash((row["prompt"], row["response_a"], row["response_b"], row["winner"])))
        lengths.append(len(row["prompt"]))
        lengths.append(len(row["response_a"]))
        lengths.append(len(row["response_b"]))
    return winners["tie"], len(set(hashes[::2]))


def json_lines(path: Path) -> tuple[int, int]:
    with open(path, "rb") as handle:
        return python_pass(json.loads(line) for line in handle)


def orjson_lines(path: Path) -> tuple[int, int]:
    import orjson

    with open(path, "rb") as handle:
        return python_pass(orjson.loads(line) for line in handle)


def msgspec_struct_lines(path: Path) -> tuple[int, int]:
    import msgspec

    class Pair(msgspec.Struct):
        id: str
        prompt: str
        response_a: str
        response_b: str
        winner: str

    decoder = msgspec.json.Decoder(Pair)
    winners: Counter = Counter()
    prompt_hashes = []
    with open(path, "rb") as handle:
        for line in handle:
            pair = decoder.decode(line)
            winners[pair.winner] += 1
            prompt_hashes.append(hash((pair.prompt,)))
            hash((pair.prompt, pair.response_a, pair.response_b, pair.winner))
            len(pair.prompt), len(pair.response_a), len(pair.response_b)
    return winners["tie"], len(set(prompt_hashes))


def msgspec_struct_blocks(path: Path) -> tuple[int, int]:
    """A block of lines decoded as one JSON array of Structs; per-record work in ``map`` (C)."""
    from operator import attrgetter

    import msgspec

    class Pair(msgspec.Struct, forbid_unknown_fields=True):
        id: str
        prompt: str
        response_a: str
        response_b: str
        winner: str

    decoder = msgspec.json.Decoder(list[Pair])
    winners: Counter = Counter()
    prompt_hashes = []
    for block in blocks(path):
        pairs = decoder.decode(b"[" + block.rstrip(b"\n").replace(b"\n", b",") + b"]")
        columns = {
            name: list(map(attrgetter(name), pairs))
            for name in ("prompt", "response_a", "response_b", "winner")
        }
        winners.update(columns["winner"])
        prompt_hashes.extend(map(hash, zip(columns["prompt"])))
        list(map(hash, zip(*columns.values())))
        for name in ("prompt", "response_a", "response_b"):
            list(map(len, columns[name]))
    return winners["tie"], len(set(prompt_hashes))


SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("id", "prompt", "response_a", "response_b", "winner")]
)


def blocks(path: Path):
    with open(path, "rb") as handle:
        rest = b""
        while True:
            chunk = handle.read(BLOCK_BYTES)
            if not chunk:
                break
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest = chunk[cut:]
            yield chunk[:cut]
        if rest:
            yield rest


def read_block(block: bytes) -> pa.Table:
    return pj.read_json(
        io.BytesIO(block),
        read_options=pj.ReadOptions(block_size=len(block) + 1),
        parse_options=pj.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="error"),
    )


def hash_python(column: pa.ChunkedArray) -> np.ndarray:
    return np.fromiter((hash(text) for text in column.to_pylist()), np.int64, len(column))


def hash_polars(column: pa.ChunkedArray) -> np.ndarray:
    import polars as pl

    return pl.from_arrow(column).hash(seed=0).to_numpy()


def hash_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A polynomial hash per string, from prefix sums over the Arrow data buffer."""
    array = column.combine_chunks()
    offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)
    data = np.frombuffer(array.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    offsets = (offsets - offsets[0]).astype(np.int64)
    powers, inverse = _powers(len(data) + 1)
    prefix = np.zeros(len(data) + 1, np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: len(data)], out=prefix[1:])
        starts, ends = offsets[:-1], offsets[1:]
        hashes = (prefix[ends] - prefix[starts]) * inverse[starts]
    return hashes ^ (ends - starts).astype(np.uint64)


_BASE = 0x9E3779B97F4A7C15
_TABLES: dict[str, np.ndarray] = {}


def _power_table(base: int, size: int) -> np.ndarray:
    table = np.ones(1, np.uint64)
    with np.errstate(over="ignore"):
        while len(table) < size:
            step = np.uint64(pow(base, len(table), 2**64))
            table = np.concatenate([table, table * step])
    return table[:size]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    if "powers" not in _TABLES or len(_TABLES["powers"]) < n:
        _TABLES["powers"] = _power_table(_BASE, n)
        _TABLES["inverse"] = _power_table(pow(_BASE, -1, 2**64), n)
    return _TABLES["powers"], _TABLES["inverse"]


def arrow_blocks(hasher: Callable[[pa.ChunkedArray], np.ndarray]) -> Callable[[Path], tuple]:
    def run(path: Path) -> tuple[int, int]:
        ties = 0
        prompt_hashes = []
        for block in blocks(path):
            table = read_block(block)
            counts = pc.value_counts(table["winner"]).to_pylist()
            ties += sum(item["counts"] for item in counts if item["values"] == "tie")
            prompt = hasher(table["prompt"])
            prompt_hashes.append(prompt)
            content = prompt.astype(np.uint64)
            for name in ("response_a", "response_b", "winner"):
                with np.errstate(over="ignore"):
                    content = content * np.uint64(0x100000001B3) ^ hasher(table[name]).astype(
                        np.uint64
                    )
            for name in ("prompt", "response_a", "response_b"):
                pc.utf8_length(table[name])
        return ties, int(np.unique(np.concatenate(prompt_hashes)).size)

    return run


CANDIDATES: dict[str, Callable[[Path], tuple[int, int]]] = {
    "json_lines": json_lines,
    "orjson_lines": orjson_lines,
    "msgspec_struct_lines": msgspec_struct_lines,
    "msgspec_struct_blocks": msgspec_struct_blocks,
    "arrow_blocks_pyhash": arrow_blocks(hash_python),
    "arrow_blocks_polars": arrow_blocks(hash_polars),
    "arrow_blocks_numpy": arrow_blocks(hash_numpy),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pa.set_cpu_count(1)  # the prefkit reader is measured single-threaded too
    missing = {
        name: module
        for name, module in (
            ("orjson_lines", "orjson"),
            ("arrow_blocks_polars", "polars"),
        )
        if importlib.util.find_spec(module) is None
    }
    candidates = {name: run for name, run in CANDIDATES.items() if name not in missing}
    times: dict[str, list[float]] = {name: [] for name in candidates}
    answers: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.jsonl"
        generate(path, args.records)
        _powers(2 * BLOCK_BYTES)
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            for name, candidate in candidates.items():
                start = time.perf_counter()
                answers[name] = candidate(path)
                times[name].append(time.perf_counter() - start)
        load_after = os.getloadavg()
    reference = answers["json_lines"]
    results = {
        "records": args.records,
        "repeats": args.repeats,
        "arrow_threads": 1,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "candidates": {
            name: {
                "seconds": values,
                "median_records_per_s": args.records / statistics.median(values),
                "same_answer_as_json_lines": answers[name] == reference,
            }
            for name, values in times.items()
        },
        "not_installed": missing,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
