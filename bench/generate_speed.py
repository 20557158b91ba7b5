"""Generation speed on CPU: ``prefkit generate``'s hf engine vs a per-prompt loop and the pipeline.

Model: a random-weight Llama over the synthetic word-level vocabulary of
:mod:`prefkit.align.synthetic` (hidden 256, 4 layers, 4 heads, MLP 1024), float32.
Prompts: 64 distinct prompts of 4 to 60 words (log-uniform lengths, one token per
word), 4 samples each, temperature 1 (no top-k, no top-p), at most 32 new tokens.
Every run loads the model before its clock starts and counts the new tokens it
actually generated (EOS not counted), so tokens/s is comparable across methods.

- ``prefkit``: :func:`prefkit.generate.run.generate_candidates` with the hf engine,
  batches of 32 sequences grouped by prompt length, writing the candidate file;
- ``loop``: one ``model.generate(..., num_return_sequences=4)`` call per prompt
  (the 4 samples of a prompt share a call), texts decoded;
- ``pipeline``: ``pipeline("text-generation")`` over all prompts with
  ``batch_size=8`` prompts (32 sequences per forward, as prefkit), left padding.

Each run is a subprocess (its peak RSS is its own); the three methods are
interleaved ``--repeats`` times and medians reported, with the load average.

Usage: ``python bench/generate_speed.py [--repeats 3] [--threads 1]
[--out bench/results/generate_speed.json]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("prefkit", "loop", "pipeline")
NUM_PROMPTS = 64
NUM_SAMPLES = 4
MAX_NEW_TOKENS = 32
BATCH_SEQUENCES = 32


def build(workdir: Path) -> None:
    """Save the model, its tokenizer and the prompt list into ``workdir``."""
    from prefkit.align.synthetic import WORDS, build_model, build_tokenizer

    vocabulary = [f"w{index}" for index in range(256)]
    tokenizer = build_tokenizer(extra_words=vocabulary)
    model = build_model(tokenizer, hidden_size=256, num_layers=4, num_heads=4, seed=0)
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    rng = random.Random(0)
    with (workdir / "prompts.jsonl").open("w") as handle:
        for index in range(NUM_PROMPTS):
            length = int(math.exp(rng.uniform(math.log(4), math.log(60))))
            words = [rng.choice([*WORDS, *vocabulary]) for _ in range(length)]
            handle.write(json.dumps({"id": str(index), "prompt": " ".join(words) + " :"}) + "\n")


def _new_tokens(rows, eos_id: int, pad_id: int) -> int:
    count = 0
    for row in rows:
        for token in row:
            if token == eos_id:
                break
            count += 1
    return count


def run_one(method: str, workdir: Path, threads: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from prefkit.align.trainer import load_causal_lm

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load_causal_lm(workdir / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(workdir / "model")
    prompts = [json.loads(line)["prompt"] for line in (workdir / "prompts.jsonl").open()]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if method == "prefkit":
        from prefkit.generate.config import SamplingConfig
        from prefkit.generate.engines import HFEngine
        from prefkit.generate.prompts import PromptItem
        from prefkit.generate.run import generate_candidates

        items = [PromptItem(str(index), prompt) for index, prompt in enumerate(prompts)]
        sampling = SamplingConfig(num_samples=NUM_SAMPLES, max_new_tokens=MAX_NEW_TOKENS)
        out = workdir / f"prefkit-{os.getpid()}.jsonl"
        started = time.perf_counter()
        summary = generate_candidates(
            items,
            HFEngine(model, tokenizer, batch_size=BATCH_SEQUENCES),
            tokenizer,
            sampling,
            out,
            generation={"bench": True},
            max_prompt_length=400,
            show_progress=False,
        )
        seconds = time.perf_counter() - started
        out.unlink()
        new_tokens = summary.new_tokens
    elif method == "loop":
        started = time.perf_counter()
        new_tokens = 0
        with torch.inference_mode():
            for prompt in prompts:
                encoded = tokenizer(prompt, return_tensors="pt")
                output = model.generate(
                    **encoded,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    max_new_tokens=MAX_NEW_TOKENS,
                    num_return_sequences=NUM_SAMPLES,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
                generated = output[:, encoded["input_ids"].shape[1] :].tolist()
                tokenizer.batch_decode(generated, skip_special_tokens=True)
                new_tokens += _new_tokens(generated, eos, pad)
        seconds = time.perf_counter() - started
    else:
        from transformers import pipeline

        tokenizer.padding_side = "left"
        generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
        started = time.perf_counter()
        outputs = generator(
            prompts,
            batch_size=BATCH_SEQUENCES // NUM_SAMPLES,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=MAX_NEW_TOKENS,
            num_return_sequences=NUM_SAMPLES,
            return_full_text=False,
            pad_token_id=pad,
        )
        seconds = time.perf_counter() - started
        new_tokens = sum(
            len(tokenizer(sample["generated_text"], add_special_tokens=False)["input_ids"])
            for samples in outputs
            for sample in samples
        )
    return {
        "method": method,
        "seconds": seconds,
        "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/generate_speed.json")
    parser.add_argument("--run", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, Path(args.workdir), args.threads)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        build(workdir)
        for repeat in range(args.repeats):
            for method in METHODS:
                command = [sys.executable, __file__, "--run", method, "--workdir", folder]
                command += ["--threads", str(args.threads)]
                output = subprocess.run(
                    command, capture_output=True, text=True, env=env, check=True
                )
                result = json.loads(output.stdout.strip().splitlines()[-1])
                runs[method].append(result)
                print(
                    f"round {repeat + 1} {method}: {result['tokens_per_s']:.0f} new tokens/s",
                    file=sys.stderr,
                )
    medians = {
        method: {
            key: statistics.median(run[key] for run in results)
            for key in ("seconds", "new_tokens", "tokens_per_s", "peak_rss_mib")
        }
        for method, results in runs.items()
    }
    prefkit_speed = medians["prefkit"]["tokens_per_s"]
    report = {
        "setup": {
            "model": "random-weight Llama, hidden 256, 4 layers, 4 heads, MLP 1024, float32",
            "prompts": NUM_PROMPTS,
            "samples_per_prompt": NUM_SAMPLES,
            "max_new_tokens": MAX_NEW_TOKENS,
            "sequences_per_batch": BATCH_SEQUENCES,
            "threads": args.threads,
            "repeats": args.repeats,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "medians": medians,
        "speedup_vs_loop": prefkit_speed / medians["loop"]["tokens_per_s"],
        "speedup_vs_pipeline": prefkit_speed / medians["pipeline"]["tokens_per_s"],
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: report[k] for k in ("medians", "speedup_vs_loop", "speedup_vs_pipeline")}, indent=2
        )
    )


if __name__ == "__main__":
    main()
