"""Embedding-mode reward models with and without ``--length-debias``: accuracy and
reward-length Spearman on the UKPConvArg1Strict folds and on a length-biased PandaLM split.

UKP: the four cross-topic folds of ``bench/rm_ukp_quality.py`` (each fold trained on a
seeded sample of ``--train-pairs`` of its training pairs). PandaLM: decided majority
pairs of testset-v1 (ties left out); train on the pairs whose chosen response is the
longer one, test on those whose chosen response is the shorter one, so length helps in
training and misleads at test time. Spearman is between reward and response characters
over every test response. Runs alternate without/with (each weight) per split; the load average is
recorded before each run. Writes bench/results/rm_length_debias.json.

    .venv/bin/python bench/rm_length_debias.py [--train-pairs N] [--weights W1,W2] [--cache-dir DIR]
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
from prefkit.data.records import render_text
from prefkit.eval.metrics import spearman
from prefkit.rm.length_debias import DEFAULT_LENGTH_DEBIAS
from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

ROOT = Path(__file__).resolve().parents[1] / "../shared/data"
UKP = ROOT / "ukpconvarg1/UKPConvArg1Strict-CSV"
PANDALM = ROOT / "pandalm-testset/testset-v1.json"
RESULTS = Path(__file__).resolve().parent / "results" / "rm_length_debias.json"


def ukp_folds(records):
    topics = sorted({record.category for record in records})
    for k in range(4):
        test_topics = set(topics[k::4])
        yield (
            f"ukp-fold{k}",
            [r for r in records if r.category not in test_topics],
            [r for r in records if r.category in test_topics],
        )


def chosen_is_longer(record) -> bool:
    return len(render_text(record.chosen)) > len(render_text(record.rejected))


def pandalm_split(records):
    decided = [r for r in records if r.outcome in ("a", "b")]
    equal = [r for r in decided if len(render_text(r.chosen)) == len(render_text(r.rejected))]
    train = [r for r in decided if chosen_is_longer(r)]
    test = [r for r in decided if r not in equal and not chosen_is_longer(r)]
    return "pandalm-chosen-shorter", train, test


def measure(model, test) -> dict[str, float]:
    prompts = [render_text(r.prompt) for r in test]
    texts_a = [render_text(r.response_a) for r in test]
    texts_b = [render_text(r.response_b) for r in test]
    rewards_a, rewards_b = model.score(prompts, texts_a), model.score(prompts, texts_b)
    a_won = np.array([r.outcome == "a" for r in test])
    lengths = [len(text) for text in texts_a + texts_b]
    return {
        "accuracy": float(np.mean((rewards_a > rewards_b) == a_won)),
        "reward_length_spearman": spearman(np.concatenate([rewards_a, rewards_b]), lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-pairs", type=int, default=2000)
    parser.add_argument(
        "--weights", default=f"0.1,{DEFAULT_LENGTH_DEBIAS}", help="penalty weights, comma-separated"
    )
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    weights = [float(text) for text in args.weights.split(",")]
    labels = ["plain", *(f"debiased-{weight:g}" for weight in weights)]
    ukp, _ = load_feedback(UKP)
    pandalm, _ = load_feedback(PANDALM, format="pandalm", on_error="skip")
    splits = [*ukp_folds(ukp), pandalm_split(pandalm)]
    results: dict = {
        "protocol": __doc__.split("\n\n")[1],
        "weights": weights,
        "train_pairs_per_ukp_fold": args.train_pairs,
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "splits": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        for name, train, test in splits:
            if name.startswith("ukp") and args.train_pairs < len(train):
                train = random.Random(0).sample(train, args.train_pairs)
            row: dict = {"train_pairs": len(train), "test_pairs": len(test)}
            row["longer_wins"] = float(np.mean([chosen_is_longer(r) for r in test]))
            for label, weight in zip(labels, [0.0, *weights], strict=True):
                config = RMTrainConfig(
                    length_debias=weight,
                    cache_dir=args.cache_dir,
                    fit_temperature=False,
                    train=default_train_config("embedding", progress=False),
                )
                load = os.getloadavg()
                start = time.perf_counter()
                report = train_reward_model(
                    train, config, Path(scratch) / f"{name}-{label}", log=lambda _: None
                )
                row[label] = {
                    **measure(report.model, test),
                    "seconds": time.perf_counter() - start,
                    "load_average": load,
                }
                print(name, label, row[label], file=sys.stderr)
            results["splits"][name] = row
    ukp_rows = [row for name, row in results["splits"].items() if name.startswith("ukp")]
    results["ukp_mean"] = {
        label: {
            key: float(np.mean([row[label][key] for row in ukp_rows]))
            for key in ("accuracy", "reward_length_spearman")
        }
        for label in labels
    }
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ukp_mean"]), file=sys.stderr)


if __name__ == "__main__":
    main()
