"""``prefkit generate``: the local executor against ``--executor ray`` with N actors.

The policy is a small random-weight Llama over the synthetic language of
:mod:`prefkit.align.synthetic` (hidden size 64, 2 layers), saved with its tokenizer; the
prompts are ``--prompts`` distinct 3-word prompts; each prompt gets ``--num-samples``
responses of at most ``--max-new-tokens`` tokens (temperature 1, top-k 20). Both
executors write the same file (checked: byte for byte).

Each timing is one ``prefkit generate`` command in its own process, from start to exit
(model loading, Ray start-up and shut-down included). The executors are interleaved,
their order alternating round by round; medians over ``--repeats``. The fixed cost of
each is measured the same way on 8 prompts (one chunk), and the throughput net of it is
given beside the total. The local executor runs torch on all the machine's cores; each
Ray actor reserves one CPU and runs one thread. Writes bench/results/generate_ray.json.

    .venv/bin/python bench/generate_ray.py [--prompts 200] [--repeats 3] [--workers 2]

On a cluster: a work folder that every node can read (shared storage) and the address:

    python bench/generate_ray.py --workdir /shared/prefkit-bench --prompts 20000 \\
        --workers 32 --ray-address auto
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ray_timing import FIXED_COST_NOTE, shared_machine_note, summarize, time_engines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "generate_ray.json"
SMALL_PROMPTS = 8


def build_policy(folder: Path) -> Path:
    from prefkit.align.synthetic import build_model, build_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_prompts(path: Path, count: int) -> None:
    words = itertools.product("abcdefgh", repeat=3)
    with path.open("w") as handle:
        for index, triple in zip(range(count), words, strict=False):
            handle.write(json.dumps({"id": f"q{index}", "prompt": " ".join(triple) + " :"}) + "\n")


def run_generate(executor: str, policy: Path, prompts: Path, out: Path, args) -> float:
    """One ``prefkit generate`` command: its wall seconds."""
    out.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "prefkit",
        "generate",
        str(prompts),
        "--model",
        str(policy),
        "--out",
        str(out),
        "--num-samples",
        str(args.num_samples),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--top-k",
        "20",
        "--chunk-size",
        str(args.chunk_size),
        "--no-progress",
        "--executor",
        executor,
    ]
    if executor == "ray":
        command += ["--ray-workers", str(args.workers)]
        if args.ray_address:
            command += ["--ray-address", args.ray_address]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "prefkit-bench-generate-ray"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.prompts > 512:
        raise SystemExit("--prompts: at most 512 distinct 3-word prompts")

    args.workdir.mkdir(parents=True, exist_ok=True)
    policy = build_policy(args.workdir / "policy")
    prompts = args.workdir / "prompts.jsonl"
    small = args.workdir / "small.jsonl"
    write_prompts(prompts, args.prompts)
    write_prompts(small, SMALL_PROMPTS)

    def run(executor: str, small_input: bool) -> float:
        if small_input:
            out = args.workdir / f"{executor}-small.jsonl"
            return run_generate(executor, policy, small, out, args)
        return run_generate(executor, policy, prompts, args.workdir / f"{executor}.jsonl", args)

    seconds, small_seconds, load = time_engines(run, args.repeats, f"{SMALL_PROMPTS} prompts")
    local_text = (args.workdir / "local.jsonl").read_text()
    if (args.workdir / "ray.jsonl").read_text() != local_text:
        raise SystemExit("the executors wrote different files")

    timing = summarize(
        "prompts", args.prompts, SMALL_PROMPTS, seconds, small_seconds, f"{SMALL_PROMPTS}_prompts"
    )
    median = timing["median_seconds"]
    import ray

    result = {
        "what": __doc__.split("\n\n")[0] + " " + __doc__.split("\n\n")[1].replace("\n", " "),
        "note": shared_machine_note(load) + FIXED_COST_NOTE.replace("the model", "the policy"),
        "prompts": args.prompts,
        "sequences": args.prompts * args.num_samples,
        "num_samples": args.num_samples,
        "max_new_tokens": args.max_new_tokens,
        "chunk_size": args.chunk_size,
        "ray_workers": args.workers,
        "ray_address": args.ray_address,
        "ray_version": ray.__version__,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average_1min": load,
        **timing,
        "sequences_per_s": {
            name: args.prompts * args.num_samples / median[name] for name in median
        },
        "files_equal": True,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: result[key] for key in ("median_seconds", "prompts_per_s", "ratios")}))


if __name__ == "__main__":
    main()
