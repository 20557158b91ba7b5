"""``prefkit quickstart``: the whole path on a generated data set, offline, in minutes.

1. Build a feedback set with a known true reward (:mod:`prefkit.quickstart.data`).
2. Train the default reward model (frozen all-MiniLM-L6-v2 + a small head).
3. Evaluate it on held-out question phrasings, side by side with a
   "longer answer wins" baseline, so length bias is visible.
4. Write ``report.html`` and ``metrics.json`` and print a short summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prefkit.quickstart.data import make_quickstart_pairs, split_by_question


@dataclass
class QuickstartResult:
    """Where the quickstart wrote its outputs and the headline numbers."""

    out_dir: Path
    report: Path
    metrics: Path
    model_dir: Path
    n_train: int
    n_eval: int
    accuracy: float
    accuracy_ci95: list[float] | None
    length_baseline_accuracy: float
    seconds: float


def run_quickstart(
    out_dir: str | Path, *, seed: int = 0, progress: bool = True, log: Callable[[str], None] = print
) -> QuickstartResult:
    """Run the quickstart into ``out_dir`` (created if needed) and return what it did."""
    from prefkit.data.inspect import format_report, inspect_records, report_dict
    from prefkit.data.write import write_records
    from prefkit.eval.evaluate import evaluate
    from prefkit.eval.report import write_report
    from prefkit.eval.scorers import LengthScorer, PrefkitRewardModelScorer
    from prefkit.rm.train import RMTrainConfig, default_train_config, train_reward_model

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    records = make_quickstart_pairs(seed=seed)
    train_records, eval_records = split_by_question(records)
    write_records(train_records, out / "train.jsonl")
    write_records(eval_records, out / "eval.jsonl")
    log(
        f"[1/4] generated {len(records)} pairs with a known true reward (correct beats incorrect; "
        f"half the correct answers are the shorter one): {len(train_records)} to train on "
        f"({out / 'train.jsonl'}), {len(eval_records)} held-out phrasings ({out / 'eval.jsonl'})"
    )
    log(format_report(report_dict(inspect_records(train_records), format_name="prefkit")))

    log("[2/4] training a reward model: frozen all-MiniLM-L6-v2 embeddings + MLP head")
    # The questions decide which answer is right, so the head sees the prompt too
    # (prompt and prompt x response features); the data set is small, so more epochs.
    config = RMTrainConfig(
        features="response,prompt,product,length",
        dropout=0.1,
        cache_dir=str(out / "embedding-cache"),
        train=default_train_config("embedding", epochs=12, seed=seed, progress=progress),
    )
    model_dir = out / "reward-model"
    train_reward_model(
        train_records,
        config,
        model_dir,
        eval_records=eval_records,
        log=log,
        source=str(out / "train.jsonl"),
    )

    log("[3/4] evaluating on the held-out phrasings, with 'longer answer wins' as a baseline")
    scorers = [
        PrefkitRewardModelScorer(model_dir, name="reward-model", progress=progress),
        LengthScorer(name="longer-wins baseline"),
    ]
    run = evaluate(scorers, eval_records, seed=seed, data=str(out / "eval.jsonl"))
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(run.to_json(), indent=2) + "\n", encoding="utf-8")
    report_path = write_report(run, out / "report.html", title="prefkit quickstart")

    model_metrics, baseline = run.models[0].metrics, run.models[1].metrics
    seconds = time.perf_counter() - start
    log(f"[4/4] wrote {report_path} and {metrics_path}")
    log(_summary(model_metrics, baseline, seconds))
    return QuickstartResult(
        out_dir=out,
        report=report_path,
        metrics=metrics_path,
        model_dir=model_dir,
        n_train=len(train_records),
        n_eval=len(eval_records),
        accuracy=model_metrics["accuracy"],
        accuracy_ci95=model_metrics.get("accuracy_ci95"),
        length_baseline_accuracy=baseline["accuracy"],
        seconds=seconds,
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _summary(model: dict, baseline: dict, seconds: float) -> str:
    low, high = model.get("accuracy_ci95") or (None, None)
    bias = model.get("length_bias") or {}
    return "\n".join(
        [
            "",
            f"reward model accuracy on held-out pairs: {_percent(model['accuracy'])} "
            f"(95% CI {_percent(low)} - {_percent(high)}, n = {model['n']})",
            f"  when the correct answer is longer: {_percent(bias.get('accuracy_when_chosen_longer'))}; "
            f"when it is shorter: {_percent(bias.get('accuracy_when_chosen_shorter'))}",
            f"  calibration: ECE {model['calibration']['ece']:.3f}, Brier {model['calibration']['brier']:.3f}",
            f"'longer answer wins' baseline: {_percent(baseline['accuracy'])}",
            f"done in {seconds:.0f} s; open the report in a browser to see where the model fails.",
        ]
    )
