"""DPO training speed: prefkit's align vs TRL's DPOTrainer, same model, data and batch.

Model: a random-weight Llama (hidden 256, 4 layers, 4 heads, MLP 1024, vocabulary
~270 words: about 4.3M parameters), float32 on CPU. Data: synthetic pairs, prompts
of 24-40 words and completions of 16-48 words (word-level tokenizer: one token
per word). Every run trains from the same initial weights with AdamW, lr 1e-5,
batch 8, beta 0.1, no gradient accumulation, one process, one thread pool, float32 without gradient checkpointing for both
(TRL's defaults bf16=True and gradient_checkpointing=True are switched off).

Runs (each in its own subprocess, so peak RSS is per run):

- ``prefkit``: ``align`` with precomputed reference log-probs (disk cache off, so
  the reference pass is timed), one forward pass for chosen and rejected;
- ``prefkit_cached``: the same after the cache is filled (the reference pass is read);
- ``trl_precompute``: DPOTrainer with ``precompute_ref_log_probs=True``;
- ``trl``: DPOTrainer with the reference scored at every step.

Throughput is over the whole ``train`` call (including any reference pass, excluding
model construction and data tokenization): steps/s and completion+prompt tokens/s.
The step-1 loss of every tool is measured separately on one batch of 8 pairs with a
reference that differs from the policy (a second random model), so the value is not
the trivial log 2; the tools must agree to 1e-4.

Usage: ``python bench/align_speed_vs_trl.py [--steps N] [--out bench/results/align_speed.json]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB_WORDS = [f"w{index}" for index in range(256)]
BATCH = 8
LR = 1e-5
BETA = 0.1


def _tokenizer():
    from prefkit.align.synthetic import build_tokenizer

    return build_tokenizer(adds_bos=True, extra_words=VOCAB_WORDS)


def _model(tokenizer, seed):
    from prefkit.align.synthetic import build_model

    return build_model(tokenizer, hidden_size=256, num_layers=4, num_heads=4,
                       intermediate_size=1024, seed=seed)


def _pairs(count, seed=0):
    rng = random.Random(seed)

    def text(low, high):
        return " ".join(rng.choice(VOCAB_WORDS) for _ in range(rng.randint(low, high)))

    return [
        {"prompt": text(24, 40) + " :", "chosen": " " + text(16, 48), "rejected": " " + text(16, 48)}
        for _ in range(count)
    ]


def _records(pairs):
    from prefkit.data.records import PairwiseRecord

    return [
        PairwiseRecord(id=str(i), prompt=p["prompt"], response_a=p["chosen"],
                       response_b=p["rejected"], outcome="a")
        for i, p in enumerate(pairs)
    ]


def _count_tokens(tokenizer, pairs):
    total = 0
    for pair in pairs:
        prompt = len(tokenizer(pair["prompt"])["input_ids"])
        total += 2 * prompt + len(pair["chosen"].split()) + len(pair["rejected"].split()) + 2
    return total


def run_prefkit(steps, cache_dir, with_ref_model):
    import torch

    from prefkit.align.trainer import AlignConfig, align
    from prefkit.train.loop import TrainConfig

    tokenizer = _tokenizer()
    pairs = _pairs(steps * BATCH)
    policy = _model(tokenizer, seed=0)
    ref = _model(tokenizer, seed=1) if with_ref_model else None
    config = AlignConfig(loss="sigmoid", loss_args={"beta": BETA}, max_length=256,
                         max_prompt_length=128, cache_ref=cache_dir is not None,
                         ref_cache_dir=cache_dir, save_model=False, ref_batch_size=BATCH)
    train_config = TrainConfig(batch_size=BATCH, lr=LR, schedule="constant", max_grad_norm=1.0,
                               progress=False, device="cpu", keep_checkpoints=1)
    records = _records(pairs)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = align(records, policy, tokenizer, out, config, train_config, ref_model=ref)
        elapsed = time.perf_counter() - started
        lines = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return {
        "seconds": elapsed, "steps": result.train.global_step,
        "tokens": _count_tokens(tokenizer, pairs), "step1_loss": lines[0]["loss"],
        "ref_cache_hit": result.ref_cache_hit, "threads": torch.get_num_threads(),
    }


def run_trl(steps, precompute, with_ref_model):
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = _tokenizer()
    pairs = _pairs(steps * BATCH)
    policy = _model(tokenizer, seed=0)
    # An in-memory policy has no path TRL could reload a reference from, so pass a copy.
    ref = _model(tokenizer, seed=1) if with_ref_model else copy.deepcopy(policy)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
            lr_scheduler_type="constant", beta=BETA, loss_type=["sigmoid"],
            precompute_ref_log_probs=precompute, precompute_ref_batch_size=BATCH,
            max_length=256, use_cpu=True, report_to="none", logging_steps=1,
            save_strategy="no", max_grad_norm=1.0, seed=0, dataloader_num_workers=0,
            disable_tqdm=True,
            # TRL 1.16 defaults to bf16 autocast and gradient checkpointing; both off here so the
            # two tools do the same float32 computation (bf16 is also far slower on CPU).
            bf16=False, gradient_checkpointing=False,
        )
        trainer = DPOTrainer(model=policy, ref_model=ref, args=args,
                             train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "seconds": elapsed, "steps": steps, "tokens": _count_tokens(tokenizer, pairs),
        "step1_loss": losses[0], "threads": torch.get_num_threads(),
    }


RUNS = {
    "prefkit": lambda steps, cache: run_prefkit(steps, None, False),
    "prefkit_cached": lambda steps, cache: run_prefkit(steps, cache, False),
    "trl_precompute": lambda steps, cache: run_trl(steps, True, False),
    "trl": lambda steps, cache: run_trl(steps, False, False),
    "loss_prefkit": lambda steps, cache: run_prefkit(1, None, True),
    "loss_trl": lambda steps, cache: run_trl(1, False, True),
}


def _one(name, steps, cache):
    result = RUNS[name](steps, cache)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default="bench/results/align_speed.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args.one, args.steps, args.cache)
        return

    import torch
    import transformers
    import trl

    results = {}
    with tempfile.TemporaryDirectory() as cache:
        # Fill the cache first so prefkit_cached reads it.
        order = ["prefkit", "loss_prefkit", "loss_trl", "trl_precompute", "trl", "prefkit_fill",
                 "prefkit_cached"]
        for name in order:
            run_name = "prefkit_cached" if name == "prefkit_fill" else name
            command = [sys.executable, __file__, "--one", run_name, "--steps", str(args.steps),
                       "--cache", cache]
            output = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if output.returncode != 0:
                raise SystemExit(f"{name} failed:\n{output.stderr[-4000:]}")
            result = json.loads(output.stdout.strip().splitlines()[-1])
            if name == "prefkit_fill":
                continue
            result["steps_per_s"] = result["steps"] / result["seconds"]
            result["tokens_per_s"] = result["tokens"] / result["seconds"]
            results[name] = result
            print(name, json.dumps(result), file=sys.stderr)

    speed = {name: results[name]["steps_per_s"] for name in ("prefkit", "trl", "trl_precompute")}
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": " ".join(["python", "bench/align_speed_vs_trl.py", "--steps", str(args.steps)]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__},
        "batch_size": BATCH, "steps": args.steps,
        "runs": {name: results[name] for name in ("prefkit", "prefkit_cached", "trl_precompute", "trl")},
        "step1_loss": {"prefkit": results["loss_prefkit"]["step1_loss"],
                       "trl": results["loss_trl"]["step1_loss"],
                       "abs_difference": abs(results["loss_prefkit"]["step1_loss"]
                                             - results["loss_trl"]["step1_loss"])},
        "speedup_vs_trl": speed["prefkit"] / speed["trl"],
        "speedup_vs_trl_precompute": speed["prefkit"] / speed["trl_precompute"],
        "speedup_cached_vs_trl_precompute": results["prefkit_cached"]["steps_per_s"]
        / speed["trl_precompute"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("step1_loss", "speedup_vs_trl",
                                             "speedup_vs_trl_precompute",
                                             "speedup_cached_vs_trl_precompute")}, indent=2))


if __name__ == "__main__":
    main()
