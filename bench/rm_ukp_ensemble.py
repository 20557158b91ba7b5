"""Ensemble vs single embedding head on the UKPConvArg1Strict cross-topic folds.

Same folds as ``bench/rm_ukp_quality.py`` (topics sorted; fold k tests on
topics[k::4]). Per fold: one head (the default embedding config, seed 0) and an
ensemble of E heads (seeds 0..E-1, bootstrap resamples) via ``train_ensemble``.
Reports held-out pairwise accuracy of both and the ensemble's spread (the
members' std of P(a), ``p_a_std`` of ``prefkit rm score``) on the pairs it gets
wrong vs right, with the load average before and after. Writes
bench/results/rm_ukp_ensemble.json.

    .venv/bin/python bench/rm_ukp_ensemble.py [--ensemble 5] [--folds 0,1,2,3] [--train-pairs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from prefkit.data import load_feedback
from prefkit.rm.ensemble import train_ensemble
from prefkit.rm.scoring import score_records
from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model
from rm_ukp_quality import DATA, folds

RESULTS = Path(__file__).resolve().parent / "results" / "rm_ukp_ensemble.json"


def right_and_spread(model, test) -> tuple[np.ndarray, np.ndarray | None]:
    """(N,) bools: margin sign agrees with the label; (N,) p_a_std for an ensemble."""
    rows = score_records(model, test)
    truth = np.array([record.outcome == "a" for record in test])
    right = (np.array([row["margin"] for row in rows]) > 0) == truth
    spread = np.array([row["p_a_std"] for row in rows]) if "p_a_std" in rows[0] else None
    return right, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensemble", type=int, default=5)
    parser.add_argument("--folds", default="0,1,2,3")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--train-pairs", type=int, default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    records, stats = load_feedback(DATA)
    print(stats.summary(), file=sys.stderr)
    wanted = {int(k) for k in args.folds.split(",")}
    config = RMTrainConfig(
        cache_dir=args.cache_dir, train=default_train_config("embedding", progress=False)
    )
    load_before = os.getloadavg()
    per_fold = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for k, train, test in folds(records):
            if k not in wanted:
                continue
            if args.train_pairs is not None and args.train_pairs < len(train):
                train = random.Random(k).sample(train, args.train_pairs)
            quiet = dict(resume=False, log=lambda _: None)
            start = time.perf_counter()
            single = train_reward_model(train, config, root / f"single{k}", **quiet).model
            single_seconds = time.perf_counter() - start
            start = time.perf_counter()
            ensemble = train_ensemble(
                train, config, root / f"ensemble{k}", args.ensemble, **quiet
            ).model
            ensemble_seconds = time.perf_counter() - start
            single_right, _ = right_and_spread(single, test)
            right, spread = right_and_spread(ensemble, test)
            assert spread is not None
            fold = {
                "fold": k,
                "train_pairs": len(train),
                "test_pairs": len(test),
                "single_accuracy": float(single_right.mean()),
                "ensemble_accuracy": float(right.mean()),
                "spread_wrong": float(spread[~right].mean()),
                "spread_right": float(spread[right].mean()),
                "single_seconds": single_seconds,
                "ensemble_seconds": ensemble_seconds,
            }
            per_fold.append(fold)
            print(json.dumps(fold), file=sys.stderr)
    mean = {
        name: float(np.mean([fold[name] for fold in per_fold]))
        for name in ("single_accuracy", "ensemble_accuracy", "spread_wrong", "spread_right")
    }
    results = {
        "data": "UKPConvArg1Strict-CSV",
        "protocol": "folds of bench/rm_ukp_quality.py; single head seed 0 vs ensemble seeds "
        "0..E-1 on bootstrap resamples; spread = members' std of P(a) (p_a_std)",
        "ensemble_size": args.ensemble,
        "config": "RMTrainConfig() defaults: embedding, response,length,stats, MLP 256, 4 epochs",
        "machine": {
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "folds": per_fold,
        "mean": mean,
        "spread_ratio_wrong_over_right": mean["spread_wrong"] / mean["spread_right"],
    }
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({"mean": mean}))


if __name__ == "__main__":
    main()
