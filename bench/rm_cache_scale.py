"""The embedding cache at scale: open + look up 1,000 texts in a cache of 2,000,000, and
``prefkit rm train`` in embedding mode on 1,000,000 pairs whose embeddings are cached.

    PYTHONPATH=src python bench/rm_cache_scale.py --work-dir /tmp/prefkit-cache-scale

The cache holds synthetic float32 embeddings (``--dim``, 384 = all-MiniLM-L6-v2) of the
texts ``answer <i> ...`` under the namespace of the packaged MiniLM at ``--max-length``
256 (what ``rm train`` uses by default), written as ``rm train`` writes them, in shards
of ``--shard-size`` texts. The same texts are the responses of the training pairs
(response_a = text 2j, response_b = text 2j + 1), so training reads every embedding from
the cache and never loads the encoder (checked: the shard count does not change).

Lookups, each in a fresh process, interleaved, medians of ``--repeats``, after one
untimed round that brings the files into the page cache:

- ``dict``: the previous reader (every shard loaded into one dict, then the lookups);
- ``index``: this version's reader on the same (sorted) shards;
- ``index_old_shards``: this version's reader on a copy of the cache in the previous
  layout (rows in insertion order, no metadata), which it sorts the keys of when opened;
- ``index_safe_open_rows``: the same search, each row read with safetensors'
  ``safe_open(...).get_slice`` instead of the memory map (the alternative considered).

``--lookups`` other than 1,000 (200,000; 2,000,000 = every text, as training reads them)
are stored as ``lookup_<n>``.

Time = hashing the 1,000 texts + opening + lookups; peak memory = the process's VmHWM
minus its resident size before the cache was opened (imports); the rows read are
checked to be the same for all three. Training runs once (it takes minutes), with the
peak of the trainer process's anonymous and file-backed resident memory sampled every
0.2 s from /proc.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NUM_FEATURE_EXTRAS = 2 + 10  # length (2) + stats (10) beside the response embedding


def text(index: int) -> str:
    return f"answer {index}: the reply number {index} to question {index // 2 % 1000}."


def status_kib(field: str, pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def namespace(max_length: int) -> str:
    from prefkit.rm.encoder import EmbeddingCache, FrozenEncoder, default_backbone

    return EmbeddingCache.namespace(FrozenEncoder(default_backbone(), max_length=max_length))


def build_cache(args: argparse.Namespace, root: Path) -> dict:
    """The synthetic cache (sorted shards) and its copy in the previous layout."""
    from safetensors.torch import load_file, save_file

    from prefkit.rm.encoder import EmbeddingCache, EncodedTexts

    manifest_path = root / "manifest.json"
    manifest = {
        "entries": args.entries,
        "dim": args.dim,
        "shard_size": args.shard_size,
        "max_length": args.max_length,
    }
    if manifest_path.exists() and json.loads(manifest_path.read_text()) == manifest:
        return manifest
    started = time.perf_counter()
    space = namespace(args.max_length)
    cache = EmbeddingCache(root / "cache")
    rng = np.random.default_rng(0)
    for start in range(0, args.entries, args.shard_size):
        indices = range(start, min(start + args.shard_size, args.entries))
        embeddings = rng.standard_normal((len(indices), args.dim), dtype=np.float32)
        embeddings[:, 0] += np.where(np.array(indices) % 2 == 0, 0.5, -0.5)  # text 2j is better
        digests = [cache.text_digest(space, "right", text(i)) for i in indices]
        tokens = np.array([len(text(i).split()) + 2 for i in indices], dtype=np.int64)
        path = cache.store(space, digests, EncodedTexts(embeddings, tokens))
        # The same rows in the previous layout: insertion order, no metadata.
        tensors = load_file(path)
        shuffle = rng.permutation(len(indices))
        old_folder = root / "cache-old" / space
        old_folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {name: tensor[shuffle].contiguous() for name, tensor in tensors.items()},
            str(old_folder / f"shard-{uuid.uuid4().hex}.safetensors"),
        )
        print(f"cache: {indices.stop:,}/{args.entries:,} texts", flush=True)
    manifest_path.write_text(json.dumps(manifest))
    print(f"cache built in {time.perf_counter() - started:.0f} s", flush=True)
    return manifest


def dict_lookup(folder: Path, digests: list[bytes], dim: int) -> np.ndarray:
    """The previous reader: every shard of the namespace into one dict, then the lookups."""
    from safetensors.torch import load_file

    entries: dict[bytes, tuple[np.ndarray, int]] = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        tensors = load_file(shard)
        keys = tensors["keys"].numpy()
        embeddings = tensors["embeddings"].numpy()
        counts = tensors["num_tokens"].numpy()
        for row in range(len(keys)):
            entries[keys[row].tobytes()] = (embeddings[row], int(counts[row]))
    result = np.zeros((len(digests), dim), dtype=np.float32)
    for row, digest in enumerate(digests):
        result[row] = entries[digest][0]
    return result


def safe_open_lookup(cache, space: str, digests: list[bytes], dim: int) -> np.ndarray:
    """The same search, each row read with safetensors' ``safe_open(...).get_slice`` instead
    of a memory map (the alternative the reader could have used)."""
    from safetensors import safe_open

    from prefkit.rm.encoder import _key_prefixes, _keys_array

    queries = _keys_array(digests)
    prefixes = _key_prefixes(queries)
    result = np.zeros((len(digests), dim), dtype=np.float32)
    for shard in cache.shards(space):
        hit, file_rows = shard.find(queries, prefixes)
        if not hit.any():
            continue
        with safe_open(str(shard.path), framework="numpy") as handle:
            embeddings = handle.get_slice("embeddings")
            for query in np.flatnonzero(hit)[np.argsort(file_rows[hit], kind="stable")]:
                result[query] = embeddings[int(file_rows[query]) : int(file_rows[query]) + 1][0]
    return result


def lookup_child(args: argparse.Namespace) -> None:
    """One timed open + lookup, printed as JSON."""
    from prefkit.rm.encoder import EmbeddingCache

    space = namespace(args.max_length)
    texts = [text(int(i)) for i in np.random.default_rng(1).integers(0, args.entries, args.lookups)]
    root = Path(args.work_dir)
    baseline = status_kib("VmRSS")
    started = time.perf_counter()
    digests = [EmbeddingCache.text_digest(space, "right", t) for t in texts]
    if args.child == "dict":
        rows = dict_lookup(root / "cache" / space, digests, args.dim)
        index_bytes = None
    elif args.child == "index_safe_open_rows":
        cache = EmbeddingCache(root / "cache")
        rows = safe_open_lookup(cache, space, digests, args.dim)
        index_bytes = cache.index_bytes(space)
    else:
        cache = EmbeddingCache(root / ("cache" if args.child == "index" else "cache-old"))
        found, encoded = cache.read(space, digests, args.dim)
        assert found.all()
        rows = encoded.embeddings
        index_bytes = cache.index_bytes(space)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": status_kib("VmHWM") / 1024,
                "peak_over_baseline_mb": (status_kib("VmHWM") - baseline) / 1024,
                "index_bytes": index_bytes,
                "checksum": hashlib.sha256(rows.tobytes()).hexdigest(),
            }
        )
    )


def records_child(args: argparse.Namespace) -> None:
    """Resident memory of the training records and their item index alone (no embeddings)."""
    from prefkit.data.read import load_feedback
    from prefkit.rm.examples import ItemIndex, build_examples

    baseline = status_kib("VmRSS")
    records, _ = load_feedback(Path(args.work_dir) / f"pairs-{args.train_pairs}.jsonl")
    index = ItemIndex()
    examples = build_examples(records, index, None)
    print(
        json.dumps(
            {
                "records": len(records),
                "items": len(index.ids),
                "examples": len(examples),
                "rss_over_baseline_mb": (status_kib("VmRSS") - baseline) / 1024,
            }
        )
    )


def run_child(args: argparse.Namespace, kind: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--work-dir", args.work_dir]
    command += ["--entries", str(args.entries), "--dim", str(args.dim)]
    command += ["--lookups", str(args.lookups), "--max-length", str(args.max_length)]
    command += ["--train-pairs", str(args.train_pairs)]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def write_pairs(path: Path, num_pairs: int) -> None:
    rng = np.random.default_rng(2)
    swap = rng.random(num_pairs) < 0.5
    with path.open("w") as handle:
        for j in range(num_pairs):
            better, worse = text(2 * j), text(2 * j + 1)
            a, b, outcome = (worse, better, "b") if swap[j] else (better, worse, "a")
            record = {"id": f"p{j}", "prompt": f"question {j % 1000}?", "response_a": a}
            record.update(response_b=b, outcome=outcome)
            handle.write(json.dumps(record) + "\n")


def train_run(args: argparse.Namespace, root: Path) -> dict:
    """``prefkit rm train`` on the cached pairs; peak anonymous and file-backed memory."""
    data = root / f"pairs-{args.train_pairs}.jsonl"
    if not data.exists():
        write_pairs(data, args.train_pairs)
    shards_before = len(list((root / "cache").rglob("shard-*.safetensors")))
    out = root / f"rm-{args.train_pairs}"
    command = [sys.executable, "-m", "prefkit", "rm", "train", str(data), "--out", str(out)]
    command += ["--cache-dir", str(root / "cache"), "--max-length", str(args.max_length)]
    command += ["--epochs", "1", "--batch-size", str(args.train_batch_size), "--no-progress"]
    command += ["--no-resume"] if not (out / "training").exists() else []
    if out.exists():
        import shutil

        shutil.rmtree(out)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    while process.poll() is None:
        try:
            for field in peaks:
                peaks[field] = max(peaks[field], status_kib(field, str(process.pid)))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.2)
    output = process.communicate()[0]
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"rm train failed:\n{output}")
    shards_after = len(list((root / "cache").rglob("shard-*.safetensors")))
    records_only = run_child(args, "records")
    num_texts = 2 * args.train_pairs
    return {
        "pairs": args.train_pairs,
        "unique_responses": num_texts,
        "seconds": seconds,
        "peak_rss_mb": peaks["VmRSS"] / 1024,
        "peak_rss_anon_mb": peaks["RssAnon"] / 1024,
        "peak_rss_file_mb": peaks["RssFile"] / 1024,
        "encoder_used": shards_after != shards_before,
        "embeddings_mb": num_texts * args.dim * 4 / 2**20,
        "features_mb": num_texts * (args.dim + NUM_FEATURE_EXTRAS) * 4 / 2**20,
        "records_and_item_index_mb": records_only["rss_over_baseline_mb"],
        "log_tail": output.strip().splitlines()[-6:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="/tmp/prefkit-cache-scale")
    parser.add_argument("--entries", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shard-size", type=int, default=100_000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-pairs", type=int, default=1_000_000, help="0: skip training")
    parser.add_argument("--train-batch-size", type=int, default=512)
    parser.add_argument("--skip-lookups", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rm_cache_scale.json"))
    parser.add_argument(
        "--child",
        choices=["dict", "index", "index_old_shards", "index_safe_open_rows", "records"],
    )
    args = parser.parse_args()
    if args.child == "records":
        records_child(args)
        return
    if args.child:
        lookup_child(args)
        return
    if 2 * args.train_pairs > args.entries:
        parser.error("--train-pairs needs 2 x pairs <= --entries cached texts")
    root = Path(args.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = build_cache(args, root)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.update(
        {
            "benchmark": "bench/rm_cache_scale.py",
            "cache": manifest,
            "cache_bytes": {
                "embeddings": args.entries * args.dim * 4,
                "keys": args.entries * 32,
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "note": (
                "Shared, noisy machine (2 cores, other work running); page cache warm (one "
                "untimed round first). Peak memory of a lookup is VmHWM minus the resident size "
                "after imports, file-backed pages of memory-mapped shards included. The previous "
                "reader's embeddings are not read either: safetensors (0.8) load_file maps the "
                "file, so its cost is the dict of one entry per text (Python objects) and the "
                "time to build it. *_mb fields are MiB (2**20 bytes)."
            ),
            "train_memory_bound": (
                "Embedding-mode training holds the features of every unique item, U x (D + 12) x "
                "4 bytes for the default features response,length,stats (U unique responses, "
                "D the embedding size; + U x D x 4 each for prompt or product features), for the "
                "whole run; while they are built the U x D x 4 embeddings read from the cache sit "
                "beside them; plus the records and their item index (Python objects, "
                "records_and_item_index_mb). The cache holds no per-text memory of its own for shards in the current layout (40 bytes a text for shards of the previous one). The three training runs ran one after another; the first two before the prefix search of the final reader (same peak within 1%)."
            ),
        }
    )
    if not args.skip_lookups:
        kinds = ["dict", "index", "index_old_shards", "index_safe_open_rows"]
        for kind in kinds:  # warm-up round, not timed
            run_child(args, kind)
        runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
        for repeat in range(args.repeats):
            for kind in kinds:
                runs[kind].append(run_child(args, kind))
                print(kind, repeat, runs[kind][-1], flush=True)
        checksums = {run["checksum"] for kind in kinds for run in runs[kind]}
        assert len(checksums) == 1, "the readers returned different rows"
        summary = {
            kind: {
                "seconds_median": statistics.median(r["seconds"] for r in runs[kind]),
                "peak_over_baseline_mb_median": statistics.median(
                    r["peak_over_baseline_mb"] for r in runs[kind]
                ),
                "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in runs[kind]),
                "index_bytes": runs[kind][0]["index_bytes"],
                "runs": runs[kind],
            }
            for kind in kinds
        }
        for kind in kinds[1:]:
            summary[kind]["speedup_vs_dict"] = (
                summary["dict"]["seconds_median"] / summary[kind]["seconds_median"]
            )
            summary[kind]["memory_ratio_dict_over_this"] = summary["dict"][
                "peak_over_baseline_mb_median"
            ] / max(summary[kind]["peak_over_baseline_mb_median"], 1e-9)
        key = "lookup" if args.lookups == 1000 else f"lookup_{args.lookups}"
        results[key] = {"texts": args.lookups, "repeats": args.repeats, **summary}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")  # kept if training fails
    if args.train_pairs:
        train = results.setdefault("train", {})
        previous = train.get(str(args.train_pairs), {"runs": []})
        runs = previous.get("runs", [previous])  # earlier files held one run, unwrapped
        runs.append(train_run(args, root))
        train[str(args.train_pairs)] = {
            "runs": runs,
            "seconds_median": statistics.median(run["seconds"] for run in runs),
            "peak_rss_anon_mb_median": statistics.median(run["peak_rss_anon_mb"] for run in runs),
        }
        print(json.dumps(runs[-1], indent=2), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
