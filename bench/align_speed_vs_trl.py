"""DPO training speed: prefkit's align vs TRL's DPOTrainer, same model, data and batch.

Model: a random-weight Llama (hidden 256, 4 layers, 4 heads, MLP 1024, vocabulary
~270 words: about 4.3M parameters), float32 on CPU. Data: synthetic pairs shaped
like chat preference data, with prompts longer than completions and of varied
length: prompt and completion lengths are log-normal (word-level tokenizer, one
token per word; prompts median 90 words, clipped to 16-200; each completion median
40 words, clipped to 8-100, chosen and rejected drawn independently). Nothing is
truncated (max length 320). Every run trains from the same initial weights with
AdamW, lr 1e-5, batch 8, beta 0.1, no gradient accumulation, one process, the same
torch thread count for both tools, float32 without gradient checkpointing (TRL's
defaults bf16=True and gradient_checkpointing=True are switched off).

Runs, each in its own subprocess (peak RSS is per run); the whole set is repeated
``--repeats`` times with the tools interleaved, and medians are reported:

- ``prefkit``: ``align`` with ``shared_prompt`` (one row per pair: the prompt once,
  chosen and rejected packed after it) and precomputed reference log-probs, the
  reference pass timed (disk cache off), 32 completions per reference forward;
- ``prefkit_plain``: the same with one ``prompt + completion`` row per completion
  (chosen and rejected still in one forward pass);
- ``prefkit_cached``: ``prefkit`` with the reference log-probs read from the cache;
- ``trl_precompute``: DPOTrainer with ``precompute_ref_log_probs=True`` (reference
  batch 8 pairs);
- ``trl_precompute_best``: the same with TRL's length-grouped sampler
  (``train_sampling_strategy="group_by_length"``) and a reference batch of 16 pairs
  (32 completions, as prefkit). TRL 1.16 disables ``padding_free`` and has no
  shared-prompt pass, so this is its fastest equivalent setting;
- ``trl``: DPOTrainer with the reference scored at every step.

Throughput runs from raw pairs to the end of the last optimizer step: for prefkit
from the call of ``align``, for TRL from the construction of ``DPOTrainer`` (which
tokenizes the data and, with ``precompute_ref_log_probs``, runs the whole reference
pass in its ``__init__``; ``setup_seconds`` records that part). Both clocks
therefore include tokenization and any reference pass. prefkit writes a checkpoint after the last step and TRL
(``save_strategy="no"``) does not, so that write is left out. Tokens/s counts the
prompt + completion tokens of every pair as two sequences, the same number for
every run whatever layout the tool uses. The step-1 loss is measured separately on
one batch of 8 pairs with a reference that differs from the policy (a second random
model), so the value is not the trivial log 2; every prefkit layout must agree with
TRL to 1e-4, or the script exits with status 1 before any speed run (``--check-only``
runs this check alone and writes nothing).

Usage: ``python bench/align_speed_vs_trl.py [--steps N] [--repeats N] [--threads N]
[--out bench/results/align_speed.json] [--check-only]``
"""

from __future__ import annotations

import argparse
import copy
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

VOCAB_WORDS = [f"w{index}" for index in range(256)]
BATCH = 8
LR = 1e-5
BETA = 0.1
MAX_LENGTH = 320
PROMPT_WORDS = (90, 16, 200)  # (median, min, max) of a log-normal with sigma 0.5
COMPLETION_WORDS = (40, 8, 100)
REF_BATCH_PAIRS = 16
LOSS_TOLERANCE = 1e-4  # most |step-1 loss of a prefkit layout - TRL's| accepted


def _tokenizer():
    from prefkit.align.synthetic import build_tokenizer

    return build_tokenizer(adds_bos=True, extra_words=VOCAB_WORDS)


def _model(tokenizer, seed):
    from prefkit.align.synthetic import build_model

    return build_model(
        tokenizer, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, seed=seed
    )


def _pairs(count, seed=0):
    rng = random.Random(seed)

    def text(median, low, high):
        words = min(high, max(low, round(rng.lognormvariate(math.log(median), 0.5))))
        return " ".join(rng.choice(VOCAB_WORDS) for _ in range(words))

    return [
        {
            "prompt": text(*PROMPT_WORDS) + " :",
            "chosen": " " + text(*COMPLETION_WORDS),
            "rejected": " " + text(*COMPLETION_WORDS),
        }
        for _ in range(count)
    ]


def _records(pairs):
    from prefkit.data.records import PairwiseRecord

    return [
        PairwiseRecord(
            id=str(i),
            prompt=p["prompt"],
            response_a=p["chosen"],
            response_b=p["rejected"],
            outcome="a",
        )
        for i, p in enumerate(pairs)
    ]


def _count_tokens(tokenizer, pairs):
    total = 0
    for pair in pairs:
        prompt = len(tokenizer(pair["prompt"])["input_ids"])
        total += 2 * prompt + len(pair["chosen"].split()) + len(pair["rejected"].split()) + 2
    return total


def run_prefkit(steps, cache_dir, with_ref_model, shared_prompt):
    import torch

    from prefkit.align.trainer import AlignConfig, align
    from prefkit.train.loop import TrainConfig

    tokenizer = _tokenizer()
    pairs = _pairs(steps * BATCH)
    policy = _model(tokenizer, seed=0)
    ref = _model(tokenizer, seed=1) if with_ref_model else None
    config = AlignConfig(
        loss="sigmoid",
        loss_args={"beta": BETA},
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_LENGTH - 2,
        cache_ref=cache_dir is not None,
        ref_cache_dir=cache_dir,
        save_model=False,
        ref_batch_size=2 * REF_BATCH_PAIRS,
        shared_prompt=shared_prompt,
    )
    train_config = TrainConfig(
        batch_size=BATCH,
        lr=LR,
        schedule="constant",
        max_grad_norm=1.0,
        progress=False,
        device="cpu",
        keep_checkpoints=1,
    )
    records = _records(pairs)
    step_times = []

    def on_event(event):
        if event.kind == "step":
            step_times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = align(
            records,
            policy,
            tokenizer,
            out,
            config,
            train_config,
            ref_model=ref,
            callbacks=[on_event],
        )
        lines = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    stats = result.data.tokenize
    if stats.truncated_prompts or stats.truncated_completions:
        raise SystemExit(f"the data must fit max_length untruncated: {result.data.summary()}")
    return {
        "seconds": step_times[-1] - started,
        "steps": result.train.global_step,
        "tokens": _count_tokens(tokenizer, pairs),
        "step1_loss": lines[0]["loss"],
        "ref_cache_hit": result.ref_cache_hit,
        "threads": torch.get_num_threads(),
    }


def run_trl(steps, precompute, with_ref_model, best=False):
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = _tokenizer()
    pairs = _pairs(steps * BATCH)
    policy = _model(tokenizer, seed=0)
    # An in-memory policy has no path TRL could reload a reference from, so pass a copy.
    ref = _model(tokenizer, seed=1) if with_ref_model else copy.deepcopy(policy)
    extra = {}
    if best:
        extra = {"train_sampling_strategy": "group_by_length", "length_column_name": "length"}
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out,
            per_device_train_batch_size=BATCH,
            max_steps=steps,
            learning_rate=LR,
            lr_scheduler_type="constant",
            beta=BETA,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=REF_BATCH_PAIRS if best else BATCH,
            max_length=MAX_LENGTH,
            use_cpu=True,
            report_to="none",
            logging_steps=1,
            save_strategy="no",
            max_grad_norm=1.0,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
            # TRL 1.16 defaults to bf16 autocast and gradient checkpointing; both off here so the
            # two tools do the same float32 computation (bf16 is also far slower on CPU).
            bf16=False,
            gradient_checkpointing=False,
            **extra,
        )
        # The clock starts before the trainer is built: TRL tokenizes the data set and, with
        # precompute_ref_log_probs, runs the whole reference pass inside DPOTrainer.__init__.
        # prefkit's clock likewise starts before its tokenization and reference pass.
        dataset = Dataset.from_list(pairs)  # raw pairs as TRL takes them (prefkit: records)
        started = time.perf_counter()
        trainer = DPOTrainer(
            model=policy,
            ref_model=ref,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        if best:
            # The sampler groups by this column: the longer of the two tokenized sequences.
            tokenized = trainer.train_dataset
            trainer.train_dataset = tokenized.add_column(
                "length",
                [
                    len(prompt) + max(len(chosen), len(rejected))
                    for prompt, chosen, rejected in zip(
                        tokenized["prompt_ids"], tokenized["chosen_ids"], tokenized["rejected_ids"]
                    )
                ],
            )
            # Trainer drops columns the model does not take before it builds the sampler.
            trainer._set_signature_columns_if_needed()
            trainer._signature_columns.append("length")
        setup_seconds = time.perf_counter() - started
        trainer.train()
        elapsed = time.perf_counter() - started
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "seconds": elapsed,
        "setup_seconds": setup_seconds,
        "steps": steps,
        "tokens": _count_tokens(tokenizer, pairs),
        "step1_loss": losses[0],
        "threads": torch.get_num_threads(),
    }


RUNS = {
    "prefkit": lambda steps, cache: run_prefkit(steps, None, False, True),
    "prefkit_plain": lambda steps, cache: run_prefkit(steps, None, False, False),
    "prefkit_cached": lambda steps, cache: run_prefkit(steps, cache, False, True),
    "trl_precompute": lambda steps, cache: run_trl(steps, True, False),
    "trl_precompute_best": lambda steps, cache: run_trl(steps, True, False, best=True),
    "trl": lambda steps, cache: run_trl(steps, False, False),
    "loss_prefkit": lambda steps, cache: run_prefkit(1, None, True, True),
    "loss_prefkit_plain": lambda steps, cache: run_prefkit(1, None, True, False),
    "loss_trl": lambda steps, cache: run_trl(1, False, True),
}
SPEED_RUNS = [
    "prefkit",
    "prefkit_plain",
    "prefkit_cached",
    "trl_precompute",
    "trl_precompute_best",
    "trl",
]
# prefkit and TRL alternate, so a change in machine load hits both tools alike.
ORDER = [
    "prefkit",
    "trl_precompute",
    "prefkit_plain",
    "trl_precompute_best",
    "prefkit_fill",
    "prefkit_cached",
    "trl",
]


def _one(name, steps, cache, threads):
    import torch

    if threads:
        torch.set_num_threads(threads)
    result = RUNS[name](steps, cache)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _launch(name, args, cache):
    run_name = "prefkit_cached" if name == "prefkit_fill" else name
    command = [
        sys.executable,
        __file__,
        "--one",
        run_name,
        "--steps",
        str(args.steps),
        "--cache",
        cache,
        "--threads",
        str(args.threads),
    ]
    output = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if output.returncode != 0:
        raise SystemExit(f"{name} failed:\n{output.stderr[-4000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    result["steps_per_s"] = result["steps"] / result["seconds"]
    result["tokens_per_s"] = result["tokens"] / result["seconds"]
    return result


def check_step1_losses(losses: dict[str, float]) -> None:
    """Exit with status 1 unless each prefkit layout's step-1 loss is within LOSS_TOLERANCE of TRL's."""
    disagreeing = {
        name: losses[name] - losses["loss_trl"]
        for name in ("loss_prefkit", "loss_prefkit_plain")
        if not abs(losses[name] - losses["loss_trl"]) <= LOSS_TOLERANCE  # NaN disagrees too
    }
    if disagreeing:
        raise SystemExit(
            f"step-1 loss differs from TRL's ({losses['loss_trl']!r}) by more than "
            f"{LOSS_TOLERANCE}: {disagreeing}; the tools do not compute the same DPO loss, so "
            "their speeds are not comparable. No result written."
        )
    print(f"step-1 losses agree with TRL's to {LOSS_TOLERANCE}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in every run; 0 keeps torch's default"
    )
    parser.add_argument("--out", default="bench/results/align_speed.json")
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="only check that every prefkit layout's step-1 loss agrees with TRL's; write nothing",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args.one, args.steps, args.cache, args.threads)
        return

    import torch
    import transformers
    import trl

    losses = {}
    for name in ("loss_prefkit", "loss_prefkit_plain", "loss_trl"):
        losses[name] = _launch(name, args, "")["step1_loss"]
        print(name, losses[name], file=sys.stderr)
    check_step1_losses(losses)
    if args.check_only:
        return
    repeats: dict[str, list[dict]] = {name: [] for name in SPEED_RUNS}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            for name in ORDER:
                result = _launch(name, args, cache)
                if name == "prefkit_fill":
                    continue
                repeats[name].append(result)
                print(repeat, name, f"{result['steps_per_s']:.3f} steps/s", file=sys.stderr)

    def median(name, field):
        return statistics.median(run[field] for run in repeats[name])

    runs = {
        name: {
            "steps_per_s": median(name, "steps_per_s"),
            "tokens_per_s": median(name, "tokens_per_s"),
            "seconds": median(name, "seconds"),
            "peak_rss_mib": median(name, "peak_rss_mib"),
            "steps_per_s_each_repeat": [run["steps_per_s"] for run in repeats[name]],
            "steps": repeats[name][0]["steps"],
            "tokens": repeats[name][0]["tokens"],
            "threads": repeats[name][0]["threads"],
            **(
                {"setup_seconds": median(name, "setup_seconds")}
                if "setup_seconds" in repeats[name][0]
                else {}
            ),
        }
        for name in SPEED_RUNS
    }
    speed = {name: runs[name]["steps_per_s"] for name in SPEED_RUNS}
    ratios = {
        f"{mine}_vs_{theirs}": speed[mine] / speed[theirs]
        for mine in ("prefkit", "prefkit_plain", "prefkit_cached")
        for theirs in ("trl_precompute", "trl_precompute_best", "trl")
    }
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": " ".join(
            [
                "python",
                "bench/align_speed_vs_trl.py",
                "--steps",
                str(args.steps),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ]
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "batch_size": BATCH,
        "steps": args.steps,
        "repeats": args.repeats,
        "runs": runs,
        "step1_loss": {
            "prefkit": losses["loss_prefkit"],
            "prefkit_plain": losses["loss_prefkit_plain"],
            "trl": losses["loss_trl"],
            "abs_difference": abs(losses["loss_prefkit"] - losses["loss_trl"]),
            "abs_difference_plain": abs(losses["loss_prefkit_plain"] - losses["loss_trl"]),
        },
        "speedup_of_medians": ratios,
        "speedup_each_repeat": {
            "prefkit_vs_trl_precompute_best": [
                mine["steps_per_s"] / theirs["steps_per_s"]
                for mine, theirs in zip(
                    repeats["prefkit"], repeats["trl_precompute_best"], strict=True
                )
            ],
        },
        "clock": (
            "from raw pairs to the last optimizer step: prefkit from the call of align, TRL "
            "from the construction of DPOTrainer (tokenization and, with precomputed reference "
            "log-probs, the reference pass happen there: setup_seconds)"
        ),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"step1_loss": report["step1_loss"], "speedup_of_medians": ratios}, indent=2))


if __name__ == "__main__":
    main()
