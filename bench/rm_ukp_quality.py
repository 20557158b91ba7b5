"""Cross-topic pairwise accuracy on UKPConvArg1Strict (the reward-model quality bar).

Protocol: topics are the 32 file names (record category), sorted; fold k
(k = 0..3) tests on ``topics[k::4]`` and trains on the other topics; the score
is the mean pairwise accuracy over the four folds. Baseline: "the longer
argument wins" (characters). Writes bench/results/rm_ukp_quality.json.

``--train-pairs N`` trains each fold on a seeded random sample of N of its
training pairs (the test topics and pairs are unchanged); fine-tuning on every
training pair takes about an hour per fold on a 2-core CPU.

    .venv/bin/python bench/rm_ukp_quality.py [--modes embedding,finetune,lora] [--out-dir DIR]
        [--train-pairs N] [--results PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prefkit.data import load_feedback
from prefkit.data.records import render_text
from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

DATA = Path(__file__).resolve().parents[1] / "../shared/data/ukpconvarg1/UKPConvArg1Strict-CSV"
RESULTS = Path(__file__).resolve().parent / "results" / "rm_ukp_quality.json"


def folds(records):
    topics = sorted({record.category for record in records})
    for k in range(4):
        test_topics = set(topics[k::4])
        train = [r for r in records if r.category not in test_topics]
        test = [r for r in records if r.category in test_topics]
        yield k, train, test


def longer_wins(test) -> float:
    correct = [
        (len(render_text(r.response_a)) > len(render_text(r.response_b))) == (r.outcome == "a")
        for r in test
    ]
    return float(np.mean(correct))


def pairwise_accuracy(model, test) -> float:
    prompts = [render_text(r.prompt) for r in test]
    rewards_a = model.score(prompts, [render_text(r.response_a) for r in test])
    rewards_b = model.score(prompts, [render_text(r.response_b) for r in test])
    return float(np.mean((rewards_a > rewards_b) == np.array([r.outcome == "a" for r in test])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="embedding")
    parser.add_argument(
        "--out-dir", default=None, help="where to put the fold models (default: a temp folder)"
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument(
        "--train-pairs",
        type=int,
        default=None,
        help="train each fold on a seeded sample of this many training pairs",
    )
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    records, stats = load_feedback(DATA)
    print(stats.summary(), file=sys.stderr)
    wanted_folds = {int(k) for k in args.folds.split(",")}
    results: dict = {
        "data": "UKPConvArg1Strict-CSV",
        "pairs": len(records),
        "protocol": "topics sorted; fold k tests on topics[k::4], trains on the rest; mean over folds",
        "machine": {
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "train_pairs_per_fold": args.train_pairs or "all",
        "methods": {},
    }
    per_fold = {"longer-wins": []}
    for k, _, test in folds(records):
        if k in wanted_folds:
            per_fold["longer-wins"].append(longer_wins(test))
    results["methods"]["longer-wins"] = {
        "fold_accuracy": per_fold["longer-wins"],
        "mean_accuracy": float(np.mean(per_fold["longer-wins"])),
    }
    configs = {
        "embedding": RMTrainConfig(
            cache_dir=args.cache_dir, train=default_train_config("embedding", progress=False)
        ),
        "embedding-linear-bt-response-only": RMTrainConfig(
            head="linear",
            features="response",
            cache_dir=args.cache_dir,
            train=default_train_config("embedding", progress=False),
        ),
        "finetune": RMTrainConfig(
            mode="finetune",
            max_length=128,
            train=default_train_config("finetune", epochs=1, progress=False),
        ),
        "lora": RMTrainConfig(
            mode="lora",
            max_length=128,
            train=default_train_config("lora", epochs=1, progress=False),
        ),
    }
    modes = args.modes.split(",")
    if "embedding" in modes:
        modes.insert(modes.index("embedding") + 1, "embedding-linear-bt-response-only")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.out_dir) if args.out_dir else Path(scratch)
        for name in modes:
            config = configs[name]
            accuracies, seconds = [], []
            for k, train, test in folds(records):
                if k not in wanted_folds:
                    continue
                if args.train_pairs is not None and args.train_pairs < len(train):
                    train = random.Random(k).sample(train, args.train_pairs)
                start = time.perf_counter()
                report = train_reward_model(
                    train,
                    config,
                    root / f"{name}-fold{k}",
                    resume=False,
                    log=lambda line: print(line, file=sys.stderr),
                )
                accuracy = pairwise_accuracy(report.model, test)
                seconds.append(time.perf_counter() - start)
                accuracies.append(accuracy)
                print(
                    f"{name} fold {k}: accuracy {accuracy:.4f} ({seconds[-1]:.1f} s)",
                    file=sys.stderr,
                )
            results["methods"][name] = {
                "config": {key: value for key, value in vars(config).items() if key != "cache_dir"},
                "fold_accuracy": accuracies,
                "mean_accuracy": float(np.mean(accuracies)),
                "seconds_per_fold": seconds,
                "train_pairs_per_fold": args.train_pairs or "all",
            }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    for name, method in results["methods"].items():
        print(
            f"{name:40s} mean accuracy {method['mean_accuracy']:.4f}  folds {np.round(method['fold_accuracy'], 4).tolist()}"
        )


if __name__ == "__main__":
    main()
