"""Where the time of iterative DPO goes: generation, reward, DPO, per round.

A 2-round ``iterative_dpo`` run on CPU: the synthetic language's default-size
random-weight policy (:func:`prefkit.align.synthetic.build_model`), 64 prompts,
4 samples each of at most 16 new tokens, the rule reward (share of the words
a..d) as a Python function, one epoch of DPO per round (batch 8 pairs, beta
0.1). Each of 3 repeats starts a fresh output folder; the seconds of each stage
come from ``round.json`` (generation, reward, DPO training: the rest of the
round, tokenizing pairs and reference log-probs included) and the wall time of
the whole call is measured around it. Reports medians over the repeats and each
stage's share of the summed stage time. Writes bench/results/iterative_dpo_stages.json.

    .venv/bin/python bench/iterative_dpo_stages.py
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "iterative_dpo_stages.json"
REPEATS = 3
ROUNDS = 2
PROMPTS = 64
STAGES = ("generation_s", "reward_s", "train_s")


def _rule(prompts, completions, completion_ids, **columns):
    from prefkit.align.synthetic import good_fraction

    return [good_fraction(text) for text in completions]


def _one_run(out: Path) -> dict[str, object]:
    from prefkit.align.synthetic import build_model, build_tokenizer, random_prompt
    from prefkit.rl.config import RLConfig
    from prefkit.rl.iterative import iterative_dpo
    from prefkit.train.loop import TrainConfig

    rng = random.Random(0)
    prompts = [random_prompt(rng, 3) for _ in range(PROMPTS)]
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=0)
    started = time.perf_counter()
    result = iterative_dpo(
        prompts,
        model,
        tokenizer,
        _rule,
        out,
        RLConfig(algo="iterative_dpo", rounds=ROUNDS, max_new_tokens=16, beta=0.1),
        TrainConfig(batch_size=8, lr=1e-2, progress=False, device="cpu"),
    )
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "rounds": [
            {key: item.metrics[key] for key in (*STAGES, "reward", "pairs", "train_steps")}
            for item in result.rounds
        ],
    }


def main() -> None:
    torch.set_num_threads(2)
    runs = []
    for repeat in range(REPEATS):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(_one_run(Path(folder) / f"run-{repeat}"))
    per_round = []
    for index in range(ROUNDS):
        medians = {
            key: statistics.median(run["rounds"][index][key] for run in runs)  # type: ignore[index]
            for key in STAGES
        }
        total = sum(medians.values())
        per_round.append(
            {
                "round": index + 1,
                "median_s": {key: round(value, 3) for key, value in medians.items()},
                "share": {key: round(value / total, 3) for key, value in medians.items()},
                "reward_mean": runs[0]["rounds"][index]["reward"],  # type: ignore[index]
                "pairs": runs[0]["rounds"][index]["pairs"],  # type: ignore[index]
                "train_steps": runs[0]["rounds"][index]["train_steps"],  # type: ignore[index]
            }
        )
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "repeats": REPEATS,
        "median_wall_s": round(statistics.median(run["wall_s"] for run in runs), 3),  # type: ignore[misc]
        "rounds": per_round,
        "runs": runs,
        "torch_threads": 2,
        "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
        "note": "shared 2-core machine running other work; timings are noisy, compare the "
        "shares rather than the seconds",
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in ("median_wall_s", "rounds")}, indent=2))


if __name__ == "__main__":
    main()
