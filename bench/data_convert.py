"""Writing speed: ``prefkit`` ``write_records`` against Hugging Face ``datasets``.

Generates N pairwise records (default 200,000; the generator of
``bench/data_inspect.py``), reads them once into memory, then times writing the
same records, each candidate in its own process, ``--repeats`` times interleaved:

- ``prefkit-jsonl`` / ``prefkit-parquet``: :func:`prefkit.data.write_records`
  (canonical records, lossless; Parquet with texts and metadata as JSON text);
- ``json-dumps-jsonl``: the per-record form the writer used before,
  ``json.dumps(record.to_dict())`` per line;
- ``datasets-jsonl`` / ``datasets-parquet``: ``datasets.Dataset.from_list`` of the
  records' ``to_dict()`` without ``metadata`` (empty here; Parquet cannot store a
  struct with no fields), built before the clock starts, then ``to_json`` /
  ``to_parquet``.

Reports records/s medians and ratios, with the load average before and after;
writes ``bench/results/data_convert.json``.

    python bench/data_convert.py [--records 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_inspect import generate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "data_convert.json"

CHILD = r"""
import json, sys, time
from prefkit.data import load_feedback, write_records
candidate, source, out = sys.argv[1:4]
records, _ = load_feedback(source)
if candidate.startswith("datasets"):
    import datasets
    datasets.disable_progress_bars()
    # Without the (empty) metadata mapping: Parquet cannot store a struct with no fields.
    rows = [record.to_dict() for record in records]
    for row in rows:
        del row["metadata"]
    dataset = datasets.Dataset.from_list(rows)
start = time.perf_counter()
if candidate == "prefkit-jsonl":
    write_records(records, out + ".jsonl")
elif candidate == "prefkit-parquet":
    write_records(records, out + ".parquet")
elif candidate == "json-dumps-jsonl":
    with open(out + ".jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
elif candidate == "datasets-jsonl":
    dataset.to_json(out + ".jsonl", lines=True, force_ascii=False)
elif candidate == "datasets-parquet":
    dataset.to_parquet(out + ".parquet")
print(json.dumps({"seconds": time.perf_counter() - start, "records": len(records)}))
"""

CANDIDATES = (
    "prefkit-jsonl",
    "datasets-jsonl",
    "json-dumps-jsonl",
    "prefkit-parquet",
    "datasets-parquet",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "pairs.jsonl"
        generate(source, args.records)
        for repeat in range(args.repeats):
            for name in CANDIDATES:
                out = Path(tmp) / f"{name}-{repeat}"
                result = subprocess.run(
                    [sys.executable, "-c", CHILD, name, str(source), str(out)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                timing = json.loads(result.stdout.strip().splitlines()[-1])
                runs[name].append(timing["records"] / timing["seconds"])
                print(f"repeat {repeat} {name}: {runs[name][-1]:,.0f} records/s", flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    result = {
        "records": args.records,
        "repeats": args.repeats,
        "records_per_second": runs,
        "median_records_per_second": medians,
        "ratios": {
            "prefkit_jsonl_over_datasets": medians["prefkit-jsonl"] / medians["datasets-jsonl"],
            "prefkit_jsonl_over_json_dumps": medians["prefkit-jsonl"] / medians["json-dumps-jsonl"],
            "prefkit_parquet_over_datasets": medians["prefkit-parquet"]
            / medians["datasets-parquet"],
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["median_records_per_second"], indent=2))
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    main()
