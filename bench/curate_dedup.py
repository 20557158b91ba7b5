"""Near-duplicate removal at scale: ``prefkit curate dedup`` against datatrove's MinHash.

The data: generated pairwise records (canonical JSONL) whose prompts are made of
4 to 6 sentences of Zipf-distributed words from a 20,000-word vocabulary. A third of
the prompts belong to planted groups: an original and one to five variants of it,
each of one kind: an exact copy, two word edits (replace, insert or delete), added
punctuation, changed case, reordered sentences, changed whitespace, or an edit with
changed case. Hard negatives come in threes that must stay apart: a base text, a text
that keeps half of its sentences (the rest new), and its words scrambled (the same
words, other 3-grams). Every other prompt is unique. The ground truth is the group of
each record (every singleton and every hard negative is a group of its own).

Both tools compare the prompt, with the same settings: word 3-grams, 128
permutations, threshold 0.6, and the same LSH bands and rows (prefkit's
``lsh_bands(0.6, 128)``, 32 bands of 4 rows, given to datatrove as ``num_buckets``
and ``hashes_per_bucket``). Both lower-case, drop punctuation and collapse
whitespace before shingling (datatrove: its ``simplify_text`` and a whitespace word
tokenizer, since its English default needs spaCy; prefkit: NFKC, case folding, word
tokens). The departure that matters: datatrove takes every LSH band collision as a
duplicate, prefkit verifies each candidate on the signatures (estimated Jaccard >=
threshold), so at the same bands datatrove finds more pairs, right and wrong.

Each run is one tool in its own subprocess (``--worker``), end to end: read the JSONL,
find duplicates, write the kept records and the cluster of every record (prefkit:
``OUT.clusters.jsonl``; datatrove: ``minhash_cluster_id`` of the kept and the removed
documents). ``seconds`` is the worker's wall time from the first read to the last
write (interpreter start and imports excluded; ``process_seconds`` includes them),
``records_per_second`` is records / seconds, ``peak_rss_mib`` the child's ``ru_maxrss``
from ``os.wait4``. Repeats of the two tools are interleaved; medians are reported.

Recall and precision are pairwise over records: a pair of records is a true duplicate
pair when both are in the same planted group, a found pair when the tool put both in
the same cluster. Recall = true pairs found / true pairs, precision = true pairs found /
pairs found. ``dropped`` (records removed) is given beside the ideal count (records in
groups minus groups).

Setting up the competitor (a venv of its own, never the test environment)::

    python3 -m venv bench/.venv-dedup
    bench/.venv-dedup/bin/pip install -r bench/requirements-dedup.txt -c bench/constraints-torch.txt

Running::

    .venv/bin/python bench/curate_dedup.py --records 1000000 --repeats 3
    .venv/bin/python bench/curate_dedup.py --records 100000 --repeats 3 \\
        --out bench/results/curate_dedup_100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NGRAM = 3
NUM_PERM = 128
THRESHOLD = 0.6
VOCABULARY = 20_000
VARIANT_KINDS = ("copy", "edit", "punctuate", "recase", "reorder", "respace", "edit_recase")
TOOL_PYTHON = {
    "prefkit": ROOT / ".venv" / "bin" / "python",
    "datatrove": ROOT / "bench" / ".venv-dedup" / "bin" / "python",
}


# ------------------------------------------------------------------------ data


class _TextMaker:
    """Sentences of Zipf-distributed words, drawn from one seeded generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]  # 70 syllables
        words = []
        for index in range(len(syllables), len(syllables) + VOCABULARY):  # 2 or 3 syllables
            word = ""
            while index:
                index, digit = divmod(index, len(syllables))
                word += syllables[digit]
            words.append(word)
        self.words = words
        weights = 1.0 / (np.arange(VOCABULARY) + 10.0)
        self.cumulative = np.cumsum(weights / weights.sum())
        self._pool = np.zeros(0, dtype=np.int64)

    def word_ids(self, count: int) -> list[int]:
        if len(self._pool) < count:
            fresh = np.searchsorted(self.cumulative, self.rng.random(1 << 20))
            self._pool = np.concatenate([self._pool, np.minimum(fresh, VOCABULARY - 1)])
        taken, self._pool = self._pool[:count], self._pool[count:]
        return taken.tolist()

    def sentence(self) -> str:
        chosen = [self.words[i] for i in self.word_ids(int(self.rng.integers(8, 15)))]
        return chosen[0].capitalize() + " " + " ".join(chosen[1:]) + "."

    def document(self) -> list[str]:
        return [self.sentence() for _ in range(int(self.rng.integers(4, 7)))]

    def variant(self, sentences: list[str], kind: str) -> str:
        rng = self.rng
        if kind == "copy":
            return " ".join(sentences)
        if kind in ("edit", "edit_recase"):
            tokens = " ".join(sentences).split()
            for _ in range(2):
                where = int(rng.integers(1, len(tokens) - 1))
                action = int(rng.integers(3))
                if action == 0:
                    tokens[where] = self.words[self.word_ids(1)[0]]
                elif action == 1:
                    tokens.insert(where, self.words[self.word_ids(1)[0]])
                else:
                    del tokens[where]
            text = " ".join(tokens)
            return text.upper() if kind == "edit_recase" else text
        if kind == "punctuate":
            out = []
            for text in sentences:
                tokens = text.split()
                tokens[int(rng.integers(len(tokens)))] += ","
                out.append(" ".join(tokens).replace(".", ("!", "...", ";")[int(rng.integers(3))]))
            return " ".join(out)
        if kind == "recase":
            return " ".join(t.upper() if rng.random() < 0.5 else t.lower() for t in sentences)
        if kind == "reorder":
            order = list(range(len(sentences)))
            while order == sorted(order):
                rng.shuffle(order)
            return " ".join(sentences[i] for i in order)
        if kind == "respace":
            return "\n\n  ".join(sentences).replace(" ", "  ")
        raise ValueError(kind)


def generate(path: Path, truth_path: Path, count: int, seed: int = 0) -> dict[str, int]:
    """Write ``count`` canonical pairwise records to ``path`` and the planted group of each
    (int64, record order) to ``truth_path``; returns counts of what was planted."""
    maker = _TextMaker(seed)
    texts: list[str] = []
    groups: list[int] = []
    planted = Counter()
    group = 0
    while len(texts) < count:
        unit = maker.rng.random()
        if unit < 0.12:  # a planted group: the original and 1-5 variants
            original = maker.document()
            members = [" ".join(original)]
            for _ in range(int(maker.rng.integers(1, 6))):
                kind = VARIANT_KINDS[int(maker.rng.integers(len(VARIANT_KINDS)))]
                members.append(maker.variant(original, kind))
                planted[kind] += 1
            texts.extend(members)
            groups.extend([group] * len(members))
            planted["groups"] += 1
            group += 1
        elif unit < 0.22:  # hard negatives: a base, half of it, its words scrambled
            base = maker.document()
            half = len(base) // 2
            scrambled = " ".join(base).split()
            maker.rng.shuffle(scrambled)
            for text in (
                " ".join(base),
                " ".join(base[:half] + maker.document()[: len(base) - half]),
                " ".join(scrambled),
            ):
                texts.append(text)
                groups.append(group)
                group += 1
            planted["hard_negative_triples"] += 1
        else:
            texts.append(" ".join(maker.document()))
            groups.append(group)
            group += 1
    texts, groups = texts[:count], groups[:count]
    order = maker.rng.permutation(count)
    with open(path, "w", encoding="utf-8") as handle:
        for position, source in enumerate(order.tolist()):
            record = {
                "schema_version": 1,
                "kind": "pairwise",
                "id": f"r{position}",
                "prompt": texts[source],
                "response_a": maker.sentence(),
                "response_b": maker.sentence(),
                "outcome": "a",
            }
            handle.write(json.dumps(record) + "\n")
    np.save(truth_path, np.asarray(groups, dtype=np.int64)[order])
    return dict(planted)


# ------------------------------------------------------------------------ workers


def run_prefkit(data: Path, out: Path) -> Path:
    """``prefkit curate dedup``; returns the cluster file (one line per cluster)."""
    from prefkit.cli import main

    kept = out / "kept.jsonl"
    code = main(
        [
            "curate",
            "dedup",
            str(data),
            "--out",
            str(kept),
            "--field",
            "prompt",
            "--ngram",
            str(NGRAM),
            "--num-perm",
            str(NUM_PERM),
            "--threshold",
            str(THRESHOLD),
            "--no-progress",
        ]
    )
    if code:
        raise SystemExit(f"prefkit curate dedup exited with {code}")
    return Path(f"{kept}.clusters.jsonl")


def run_datatrove(data: Path, out: Path, bands: int, rows: int) -> None:
    """datatrove's four MinHash stages on one worker, chained as its examples chain them."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceTokenizer(WordTokenizer):
        """Words of ``simplify_text``'s output (already lower-cased, punctuation removed)."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    config = MinhashConfig(n_grams=NGRAM, num_buckets=bands, hashes_per_bucket=rows, seed=0)
    folder = str(data.parent)
    logs = out / "logs"

    def reader() -> JsonlReader:
        return JsonlReader(folder, glob_pattern=data.name, text_key="prompt", id_key="id")

    stages = [
        (
            [reader(), MinhashDedupSignature(str(out / "sigs"), config, WhitespaceTokenizer())],
            1,
        ),
        ([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=config)], bands),
        (
            [
                MinhashDedupCluster(
                    str(out / "buckets"), str(out / "remove"), config=config, save_cluster_id=True
                )
            ],
            1,
        ),
        (
            [
                reader(),
                MinhashDedupFilter(
                    str(out / "remove"),
                    exclusion_writer=JsonlWriter(str(out / "removed"), compression=None),
                    load_cluster_ids=True,
                ),
                JsonlWriter(str(out / "kept"), compression=None),
            ],
            1,
        ),
    ]
    for number, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=1, logging_dir=str(logs / str(number))
        ).run()


def _worker(args: argparse.Namespace) -> None:
    out = Path(args.work_out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.worker == "prefkit":
        run_prefkit(Path(args.data), out)
    else:
        run_datatrove(Path(args.data), out, args.bands, args.rows)
    seconds = time.perf_counter() - start
    (out / "timing.json").write_text(json.dumps({"seconds": seconds}))


# ------------------------------------------------------------------------ scoring


def clusters_of(tool: str, out: Path, count: int) -> np.ndarray:
    """(N,) cluster label of every record in input order; singletons get labels of their own."""
    labels = np.arange(count, dtype=np.int64) + count  # distinct from every cluster number
    if tool == "prefkit":
        with open(out / "kept.jsonl.clusters.jsonl", encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                row = json.loads(line)
                for member in row.get("members", ()):
                    labels[int(member["id"][1:])] = number
        return labels
    for name in ("kept", "removed"):
        for path in sorted((out / name).glob("*.jsonl")):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    cluster = row["metadata"].get("minhash_cluster_id", -1)
                    if cluster >= 0:
                        labels[int(row["id"][1:])] = cluster
    return labels


def _pairs(sizes: np.ndarray) -> int:
    return int((sizes * (sizes - 1) // 2).sum())


def pairwise_scores(truth: np.ndarray, found: np.ndarray) -> dict[str, Any]:
    """Pairwise recall and precision of the found clusters against the planted groups."""
    _, true_sizes = np.unique(truth, return_counts=True)
    _, found_sizes = np.unique(found, return_counts=True)
    _, both_sizes = np.unique(np.stack([truth, found], axis=1), axis=0, return_counts=True)
    true_pairs, found_pairs, correct = _pairs(true_sizes), _pairs(found_sizes), _pairs(both_sizes)
    return {
        "true_pairs": true_pairs,
        "found_pairs": found_pairs,
        "correct_pairs": correct,
        "recall": correct / true_pairs if true_pairs else 1.0,
        "precision": correct / found_pairs if found_pairs else 1.0,
        "dropped": int(len(found) - len(found_sizes)),
        "ideal_dropped": int(len(truth) - len(true_sizes)),
    }


# ------------------------------------------------------------------------ driver


def run_once(tool: str, data: Path, out: Path, bands: int, rows: int) -> dict[str, Any]:
    """One worker subprocess; its time, peak memory and output folder."""
    command = [
        str(TOOL_PYTHON[tool]),
        str(Path(__file__).resolve()),
        "--worker",
        tool,
        "--data",
        str(data),
        "--work-out",
        str(out),
        "--bands",
        str(bands),
        "--rows",
        str(rows),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}
    log_path = out.parent / f"{out.name}.stderr"
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage: ru_maxrss in KiB
    process_seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{tool} failed ({process.returncode}):\n{tail}")
    return {
        "seconds": json.loads((out / "timing.json").read_text())["seconds"],
        "process_seconds": process_seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tools", nargs="+", default=["datatrove", "prefkit"])
    parser.add_argument("--workdir", default="/tmp/prefkit-bench-curate-dedup")
    parser.add_argument("--out", default="bench/results/curate_dedup.json")
    parser.add_argument("--worker", choices=sorted(TOOL_PYTHON), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work-out", help=argparse.SUPPRESS)
    parser.add_argument("--bands", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    sys.path.insert(0, str(ROOT / "src"))
    from prefkit.curate.dedup import lsh_bands

    bands, rows = lsh_bands(THRESHOLD, NUM_PERM)
    workdir = Path(args.workdir) / str(args.records)
    workdir.mkdir(parents=True, exist_ok=True)
    data, truth_path = workdir / "data.jsonl", workdir / "truth.npy"
    planted_path = workdir / "planted.json"
    if not planted_path.exists():
        start = time.perf_counter()
        planted = generate(data, truth_path, args.records)
        planted_path.write_text(json.dumps(planted))
        print(f"generated {args.records} records in {time.perf_counter() - start:.0f} s")
    planted = json.loads(planted_path.read_text())
    truth = np.load(truth_path)

    runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in args.tools}
    scores: dict[str, dict[str, Any]] = {}
    load = [os.getloadavg()]
    for repeat in range(args.repeats):
        for tool in args.tools if repeat % 2 == 0 else reversed(args.tools):
            out = workdir / f"{tool}-{repeat}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            run = run_once(tool, data, out, bands, rows)
            run["load_average"] = os.getloadavg()
            runs[tool].append(run)
            scores[tool] = pairwise_scores(truth, clusters_of(tool, out, args.records))
            print(f"{tool} repeat {repeat}: {run} {scores[tool]}", flush=True)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    load.append(os.getloadavg())

    summary = {}
    for tool, tool_runs in runs.items():
        seconds = statistics.median(run["seconds"] for run in tool_runs)
        summary[tool] = {
            "median_seconds": seconds,
            "median_process_seconds": statistics.median(r["process_seconds"] for r in tool_runs),
            "records_per_second": args.records / seconds,
            "peak_rss_mib": max(run["peak_rss_mib"] for run in tool_runs),
            **scores[tool],
        }
    result: dict[str, Any] = {
        "records": args.records,
        "repeats": args.repeats,
        "settings": {
            "field": "prompt",
            "ngram": NGRAM,
            "num_perm": NUM_PERM,
            "threshold": THRESHOLD,
            "lsh_bands": bands,
            "lsh_rows": rows,
        },
        "planted": planted,
        "summary": summary,
        "runs": runs,
        "load_average_before_after": load,
        "cpus": os.cpu_count(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "python": platform.python_version(),
    }
    if {"prefkit", "datatrove"} <= set(summary):
        fastest = min(entry["median_seconds"] for entry in summary.values())
        result["prefkit_over_fastest"] = summary["prefkit"]["median_seconds"] / fastest
        result["prefkit_over_datatrove"] = (
            summary["prefkit"]["median_seconds"] / summary["datatrove"]["median_seconds"]
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in result if key != "runs"}, indent=2))


if __name__ == "__main__":
    main()
