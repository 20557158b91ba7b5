"""Throughput and peak memory of ``prefkit data inspect`` on a large pairwise JSONL.

Generates N pairwise records (default 1,000,000) deterministically, then times
in separate processes, each repeated ``--repeats`` times (interleaved), on the same file:

- ``prefkit data inspect FILE --json`` (streaming; validates every record; the
  layout, canonical field names without ``kind``, is detected);
- the usual alternative, Hugging Face ``datasets.load_dataset("json")`` followed
  by a pass counting ties and distinct prompts (Arrow conversion; no validation).

Peak memory is the child's maximum resident set size (``ru_maxrss``). Reports
medians and the prefkit / datasets ratios; writes ``bench/results/data_inspect.json``.

    python bench/data_inspect.py [--records 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "data_inspect.json"

DATASETS_SNIPPET = """
import sys
from datasets import load_dataset
dataset = load_dataset("json", data_files=sys.argv[1], split="train", cache_dir=sys.argv[2])
ties = 0
prompts = set()
for batch in dataset.iter(batch_size=10_000):
    ties += sum(1 for winner in batch["winner"] if winner == "tie")
    prompts.update(batch["prompt"])
print(len(dataset), ties, len(prompts))
"""


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(5000)]
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(n):
            prompt = " ".join(rng.choices(words, k=rng.randint(5, 30)))
            row = {
                "id": str(index),
                "prompt": prompt,
                "response_a": " ".join(rng.choices(words, k=rng.randint(5, 60))),
                "response_b": " ".join(rng.choices(words, k=rng.randint(5, 60))),
                "winner": rng.choice(("a", "b", "b", "tie")),
            }
            handle.write(json.dumps(row) + "\n")


def measure(command: list[str], repeats: int) -> dict:
    times, peaks, output = [], [], ""
    for _ in range(repeats):
        # ru_maxrss of RUSAGE_CHILDREN is the max over all children so far, so each
        # measurement runs under a fresh intermediate process.
        wrapper = [
            sys.executable,
            "-c",
            "import resource, subprocess, sys, time;"
            "t = time.perf_counter();"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True);"
            "e = time.perf_counter() - t;"
            "m = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
            "print(repr((e, m, p.stdout)))",
            *command,
        ]
        result = subprocess.run(wrapper, capture_output=True, text=True, check=True)
        elapsed, max_rss_kib, output = eval(result.stdout.strip())  # our own repr above
        times.append(elapsed)
        peaks.append(max_rss_kib / 1024)
    return {
        "seconds": times,
        "median_seconds": statistics.median(times),
        "peak_rss_mib": peaks,
        "median_peak_rss_mib": statistics.median(peaks),
        "output": output[-2000:],
    }


def merge(measurements: list[dict]) -> dict:
    """One result from several single-run measurements: all values plus medians."""
    times = [value for m in measurements for value in m["seconds"]]
    peaks = [value for m in measurements for value in m["peak_rss_mib"]]
    return {
        "seconds": times,
        "median_seconds": statistics.median(times),
        "peak_rss_mib": peaks,
        "median_peak_rss_mib": statistics.median(peaks),
        "output": measurements[-1]["output"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "pairs.jsonl"
        generate(data, args.records)
        size_mib = data.stat().st_size / 2**20
        print(f"generated {args.records:,} records ({size_mib:.0f} MiB)", file=sys.stderr)
        prefkit_command = [
            sys.executable,
            "-m",
            "prefkit",
            "data",
            "inspect",
            str(data),
            "--json",
            "--no-progress",
        ]
        try:
            import datasets  # noqa: F401

            has_datasets = True
        except ImportError:
            has_datasets = False
        # Interleave the two tools so that a busy machine affects both alike. Each
        # datasets run gets an empty cache folder: with a warm cache it would read the
        # Arrow file that an earlier run converted, and skip the JSON parse it is timed on.
        runs: dict[str, list[dict]] = {"prefkit": [], "datasets": []}
        load_before = os.getloadavg()
        for repeat in range(args.repeats):
            runs["prefkit"].append(measure(prefkit_command, 1))
            if has_datasets:
                cache = Path(folder) / f"hf-cache-{repeat}"
                reference_command = [sys.executable, "-c", DATASETS_SNIPPET, str(data), str(cache)]
                runs["datasets"].append(measure(reference_command, 1))
        prefkit = merge(runs["prefkit"])
        summary = json.loads(prefkit.pop("output"))
        assert summary["n_records"] == args.records, summary["n_records"]
        prefkit["median_records_per_s"] = args.records / prefkit["median_seconds"]
        results = {
            "records": args.records,
            "file_mib": round(size_mib, 1),
            "repeats": args.repeats,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_1_5_15_before": load_before,
                "load_average_1_5_15_after": os.getloadavg(),
            },
            "prefkit_inspect": prefkit,
        }
        if not has_datasets:
            results["datasets_load_json"] = "not installed"
        else:
            reference = merge(runs["datasets"])
            reference["median_records_per_s"] = args.records / reference["median_seconds"]
            results["datasets_load_json"] = reference
            results["ratio_time_prefkit_over_datasets"] = (
                prefkit["median_seconds"] / reference["median_seconds"]
            )
            results["ratio_peak_rss_prefkit_over_datasets"] = (
                prefkit["median_peak_rss_mib"] / reference["median_peak_rss_mib"]
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({key: value for key, value in results.items()}, indent=2))


if __name__ == "__main__":
    main()
