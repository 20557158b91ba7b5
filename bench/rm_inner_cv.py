"""Inner cross-validation of embedding mode's head settings on UKPConvArg1Strict.

The protocol of ``bench/rm_ukp_quality.py`` (topics sorted; outer fold k tests on
``topics[k::4]``) is applied once more inside the 24 training topics of outer
fold 0: inner fold j tests on ``inner_topics[j::4]`` (the sorted training topics)
and trains on the other 18. Every setting of the grid trains on each inner fold
with ``train_reward_model`` (embedding mode, the packaged all-MiniLM-L6-v2, the
library's defaults for everything outside the grid) and is scored by its mean
pairwise accuracy over the four inner folds; the outer test topics are never
read while choosing. Afterwards the best setting and the library's default are
trained on all 24 training topics and scored on the outer fold-0 test topics,
for information only. The embeddings are computed once and cached in a
temporary folder, so the grid times only the heads.

Grid (``--grid small`` for a quick check of the script):

- features: response | response,length | response,length,stats
- head: linear | MLP with 64, 256 or 1024 hidden units
- dropout: 0.0 | 0.3 | 0.5
- (epochs, lr): (2, 3e-4) | (4, 1e-4) | (4, 3e-4) | (4, 1e-3) | (8, 3e-4)

Writes bench/results/rm_inner_cv.json.

    .venv/bin/python bench/rm_inner_cv.py [--grid full|small] [--results PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
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
RESULTS = Path(__file__).resolve().parent / "results" / "rm_inner_cv.json"
GRIDS = {
    "full": {
        "features": ["response", "response,length", "response,length,stats"],
        "hidden_size": [0, 64, 256, 1024],  # 0: the linear head
        "dropout": [0.0, 0.3, 0.5],
        "epochs_lr": [(2, 3e-4), (4, 1e-4), (4, 3e-4), (4, 1e-3), (8, 3e-4)],
    },
    "small": {
        "features": ["response", "response,length,stats"],
        "hidden_size": [0, 256],
        "dropout": [0.3],
        "epochs_lr": [(4, 3e-4)],
    },
}


def split(records, k: int):
    """(train, test) of fold k: test topics are sorted_topics[k::4]."""
    topics = sorted({record.category for record in records})
    test_topics = set(topics[k::4])
    train = [r for r in records if r.category not in test_topics]
    test = [r for r in records if r.category in test_topics]
    return train, test


def pairwise_accuracy(model, test) -> float:
    prompts = [render_text(r.prompt) for r in test]
    rewards_a = model.score(prompts, [render_text(r.response_a) for r in test])
    rewards_b = model.score(prompts, [render_text(r.response_b) for r in test])
    return float(np.mean((rewards_a > rewards_b) == np.array([r.outcome == "a" for r in test])))


def settings(grid: dict) -> list[dict]:
    out = []
    for features, hidden, dropout, (epochs, lr) in itertools.product(
        grid["features"], grid["hidden_size"], grid["dropout"], grid["epochs_lr"]
    ):
        out.append(
            {
                "features": features,
                "head": "linear" if hidden == 0 else "mlp",
                "hidden_size": hidden or 256,  # unused by the linear head
                "dropout": dropout,
                "epochs": epochs,
                "lr": lr,
            }
        )
    return out


def describe(setting: dict) -> str:
    head = "linear" if setting["head"] == "linear" else f"mlp {setting['hidden_size']}"
    return (
        f"{setting['features']}; {head}; dropout {setting['dropout']}; "
        f"{setting['epochs']} epochs; lr {setting['lr']:g}"
    )


def fit_and_score(train, test, setting: dict, cache: str, scratch: Path) -> float:
    head = {key: setting[key] for key in ("features", "head", "hidden_size", "dropout")}
    loop = default_train_config(
        "embedding", epochs=setting["epochs"], lr=setting["lr"], progress=False
    )
    config = RMTrainConfig(**head, cache_dir=cache, train=loop)
    with tempfile.TemporaryDirectory(dir=scratch) as out:
        report = train_reward_model(train, config, out, resume=False, log=lambda _: None)
        return pairwise_accuracy(report.model, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    records, _ = load_feedback(DATA)
    outer_train, outer_test = split(records, 0)
    inner = [split(outer_train, j) for j in range(4)]
    defaults = RMTrainConfig()
    default_setting = {
        "features": defaults.features,
        "head": defaults.head,
        "hidden_size": defaults.hidden_size,
        "dropout": defaults.dropout,
        "epochs": defaults.loop.epochs,
        "lr": defaults.loop.lr,
    }
    grid = settings(GRIDS[args.grid])
    results: dict = {
        "data": "UKPConvArg1Strict-CSV; inner folds over the 24 training topics of outer fold 0",
        "protocol": "sorted training topics; inner fold j tests on topics[j::4]; "
        "score = mean pairwise accuracy over the 4 inner folds",
        "grid_name": args.grid,
        "grid": GRIDS[args.grid],
        "library_default": default_setting,
        "inner_fold_sizes": [{"train": len(a), "test": len(b)} for a, b in inner],
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "loadavg_1_5_15_at_start": list(os.getloadavg()),
        "settings": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        cache = str(Path(scratch) / "cache")
        for index, setting in enumerate(grid):
            fold_accuracy = [
                fit_and_score(train, test, setting, cache, Path(scratch)) for train, test in inner
            ]
            entry = {
                **setting,
                "inner_fold_accuracy": fold_accuracy,
                "mean_inner_accuracy": float(np.mean(fold_accuracy)),
                "is_library_default": setting == default_setting,
            }
            results["settings"].append(entry)
            print(
                f"[{index + 1}/{len(grid)}] {entry['mean_inner_accuracy']:.4f}  {describe(setting)}",
                file=sys.stderr,
                flush=True,
            )
        ranked = sorted(results["settings"], key=lambda e: -e["mean_inner_accuracy"])
        best = {key: ranked[0][key] for key in default_setting}
        results["best"] = ranked[0]
        default_entries = [e for e in ranked if e["is_library_default"]]
        results["library_default_rank"] = (
            ranked.index(default_entries[0]) + 1 if default_entries else None
        )
        results["library_default_mean_inner_accuracy"] = (
            default_entries[0]["mean_inner_accuracy"] if default_entries else None
        )
        results["outer_fold0_test_accuracy_for_information"] = {
            "best": fit_and_score(outer_train, outer_test, best, cache, Path(scratch)),
            "library_default": fit_and_score(
                outer_train, outer_test, default_setting, cache, Path(scratch)
            ),
        }
    results["seconds"] = time.perf_counter() - start
    results["loadavg_1_5_15_at_end"] = list(os.getloadavg())
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(f"best:    {ranked[0]['mean_inner_accuracy']:.4f}  {describe(best)}")
    print(
        f"default: rank {results['library_default_rank']} of {len(ranked)}, "
        f"{results['library_default_mean_inner_accuracy']}  {describe(default_setting)}"
    )
    print("outer fold 0 (information):", results["outer_fold0_test_accuracy_for_information"])


if __name__ == "__main__":
    main()
