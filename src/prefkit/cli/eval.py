"""``prefkit eval``: evaluate one or more reward models (or judges) on feedback data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefkit.cli import COMMAND_HELP
from prefkit.cli.common import add_read_arguments, open_reader, with_layout_notice

DESCRIPTION = """\
Evaluate reward models on preference data and print a summary table.

MODEL is one of:
  a folder written by 'prefkit rm train'        (a prefkit reward model)
  http://HOST:PORT (or https://)                a prefkit reward model served by
                                                'prefkit serve', scored over HTTP with the
                                                same metrics as its folder; its key, if
                                                any: --api-key or $PREFKIT_API_KEY
  a Hugging Face reward-model folder            (*ForSequenceClassification, one output)
  a Hugging Face causal LM folder (a policy)    scored as an implicit reward: with
                                                --ref REF, log pi(y|x) - log pi_ref(y|x);
                                                without, --implicit-reward sum|mean|norm
  the word 'length'                             (reward = response length: a baseline
                                                that shows how much length alone explains)
Give several MODELs to compare them side by side on the same records; add an LLM
judge with --judge-url and --judge-model. DATA is the last argument: any file or
folder 'prefkit data inspect' reads.

Pairwise data gives accuracy (a tied reward counts as wrong; half credit beside it),
three-way accuracy when people marked ties, agreement with each annotator when
records carry votes, calibration, length bias, per-category accuracy and the
RewardBench v1 sections when the categories are RewardBench subsets. Ranking data
gives Kendall tau-b and Spearman per prompt, NDCG@k for graded relevance and
best-of-N accuracy. Every accuracy has a 95% bootstrap interval.
"""

EPILOG = """\
examples:
  prefkit eval runs/rm data/test.jsonl --report report.html --json metrics.json
  prefkit eval runs/rm-a runs/rm-b length data/test.jsonl --by category
  prefkit eval http://127.0.0.1:8000 data/test.jsonl --api-key secret
  prefkit eval models/dpo-policy data/test.jsonl --ref models/sft
  prefkit eval data/test.jsonl --judge-url http://localhost:8000 --judge-model my-judge
  prefkit eval length testset-v1.json --format pandalm --on-error skip
"""


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "eval",
        help=COMMAND_HELP["eval"],
        usage="prefkit eval MODEL [MODEL ...] DATA [options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="the models to evaluate, then the data (the last argument)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--report",
        metavar="FILE.html",
        default=None,
        help="write a self-contained HTML report with plots and the worst mistakes",
    )
    output.add_argument(
        "--json",
        metavar="FILE.json",
        default=None,
        help="write every metric as JSON (one block per model under 'models')",
    )
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--by",
        metavar="FIELD",
        default=None,
        help="break accuracy down by 'category' or a metadata field "
        "(default: the records' categories, when they have any)",
    )
    metrics.add_argument(
        "--tie-band",
        metavar="X",
        type=float,
        default=None,
        help="predict a tie when |reward_a - reward_b| <= X in three-way accuracy; "
        "fit it on a development split (default: 0, only equal rewards tie)",
    )
    metrics.add_argument(
        "--bootstrap",
        metavar="N",
        type=int,
        default=1000,
        help="bootstrap resamples for the 95%% intervals; 0 turns them off (default: 1000)",
    )
    metrics.add_argument(
        "--seed", metavar="N", type=int, default=0, help="seed of the bootstrap (default: 0)"
    )
    metrics.add_argument(
        "--ndcg-k",
        metavar="K",
        type=int,
        default=10,
        help="depth of NDCG for graded rankings (default: 10)",
    )
    models = parser.add_argument_group("models")
    models.add_argument(
        "--ref",
        metavar="PATH",
        default=None,
        help="reference model for policies: reward = log pi(y|x) - log pi_ref(y|x)",
    )
    models.add_argument(
        "--implicit-reward",
        choices=("dpo", "sum", "mean", "norm"),
        default=None,
        help="how a policy scores a response: dpo (with --ref; the default then), or "
        "reference-free sum, mean or norm (minus the L2 norm) of its token "
        "log-probs, as RewardBench defines them",
    )
    models.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=None,
        help="items per forward pass, or per request to a served model (default: 64 "
        "for prefkit models, 8 for Hugging Face reward models, 4 for policies)",
    )
    models.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="Bearer key of a served model (an http:// MODEL); default: $PREFKIT_API_KEY, "
        "else none",
    )
    models.add_argument(
        "--device",
        metavar="NAME",
        default=None,
        help="torch device, e.g. cpu or cuda (default: cuda when available)",
    )
    judge = parser.add_argument_group(
        "LLM judge",
        "an OpenAI-compatible chat-completions server; each pair is asked in both "
        "orders and a disagreement is a tie. The API key, if any, is read from the "
        "environment variable PREFKIT_JUDGE_API_KEY.",
    )
    judge.add_argument(
        "--judge-url",
        metavar="URL",
        default=None,
        help="the server, e.g. http://localhost:8000 (or .../v1/chat/completions)",
    )
    judge.add_argument(
        "--judge-model", metavar="NAME", default=None, help="the model name to ask for"
    )
    judge.add_argument(
        "--judge-concurrency",
        metavar="N",
        type=int,
        default=4,
        help="requests in flight at once (default: 4)",
    )
    judge.add_argument(
        "--judge-timeout",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="time limit per request; retried 3 times with backoff (default: 60)",
    )
    add_read_arguments(parser)
    parser.set_defaults(handler=run)


def _scorers(args: argparse.Namespace, model_specs: list[str]) -> list[Any]:
    from prefkit.errors import UserInputError
    from prefkit.eval.scorers import ChatJudge, ScorerError, load_scorer

    if args.ref is not None and args.implicit_reward not in (None, "dpo"):
        raise UserInputError(f"--ref goes with --implicit-reward dpo, not {args.implicit_reward}")
    scorers: list[Any] = []
    for spec in model_specs:
        try:
            scorers.append(
                load_scorer(
                    spec,
                    reference=args.ref,
                    implicit_reward=args.implicit_reward,
                    batch_size=args.batch_size,
                    device=args.device,
                    api_key=args.api_key,
                )
            )
        except ScorerError as error:
            raise UserInputError(str(error)) from None
    if (args.judge_url is None) != (args.judge_model is None):
        raise UserInputError("an LLM judge needs both --judge-url and --judge-model")
    if args.judge_url is not None:
        scorers.append(
            ChatJudge(
                args.judge_url,
                args.judge_model,
                api_key=os.environ.get("PREFKIT_JUDGE_API_KEY"),
                timeout=args.judge_timeout,
                concurrency=args.judge_concurrency,
            )
        )
    return scorers


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(values: Any) -> str:
    return "" if not values else f" [{values[0]:.3f}, {values[1]:.3f}]"


def summary_table(document: dict[str, Any]) -> str:
    """A short plain-text table: one row per model."""
    models = document["models"]
    width = max(len("model"), *(len(model["name"]) for model in models))
    lines = []
    if any(model.get("n_pairwise_records") for model in models):
        lines.append(
            f"{'model':<{width}}  {'pairs':>6}  {'accuracy [95% CI]':<24}  {'half':>5}  "
            f"{'3-way':>5}  {'ECE':>5}  {'len rho':>7}"
        )
        for model in models:
            bias = model.get("length_bias") or {}
            lines.append(
                f"{model['name']:<{width}}  {model['n']:>6}  "
                f"{_number(model['accuracy']) + _interval(model['accuracy_ci95']):<24}  "
                f"{_number(model['accuracy_half_credit']):>5}  {_number(model['three_way_accuracy']):>5}  "
                f"{_number(model['calibration']['ece']):>5}  {_number(bias.get('spearman')):>7}"
            )
    if any(model.get("n_ranking_records") for model in models):
        if lines:
            lines.append("")
        k = models[0]["ranking"]["ndcg"]["k"] if models[0]["ranking"].get("ndcg") else None
        ndcg_label = f"NDCG@{k}" if k else "NDCG"
        lines.append(
            f"{'model':<{width}}  {'lists':>6}  {'Kendall':>7}  {'Spearman':>8}  "
            f"{ndcg_label:>7}  {'best-of-N':>9}"
        )
        for model in models:
            ranking, best = model["ranking"], model["best_of_n"]
            ndcg = ranking["ndcg"]["ndcg"] if ranking.get("ndcg") else None
            lines.append(
                f"{model['name']:<{width}}  {ranking['n_prompts']:>6}  "
                f"{_number(ranking['kendall_tau_b']):>7}  {_number(ranking['spearman']):>8}  "
                f"{_number(ndcg):>7}  {_number(best['accuracy']):>9}"
            )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from prefkit.errors import UserInputError

    if len(args.paths) < 2 and args.judge_url is None:
        raise UserInputError(
            "give at least one MODEL and then DATA, e.g. 'prefkit eval runs/rm data.jsonl' "
            "(or 'prefkit eval length data.jsonl' for the length baseline)"
        )
    model_specs, data = args.paths[:-1], args.paths[-1]
    if args.bootstrap < 0:
        raise UserInputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.tie_band is not None and not args.tie_band >= 0:
        raise UserInputError(f"--tie-band must be >= 0, got {args.tie_band}")
    if args.ndcg_k < 1:
        raise UserInputError(f"--ndcg-k must be >= 1, got {args.ndcg_k}")
    write_report = _report_writer() if args.report is not None else None

    # Models first: a wrong model path fails before a long read.
    scorers = _scorers(args, model_specs)

    from prefkit.eval.evaluate import evaluate
    from prefkit.eval.scorers import JudgeError, ScorerError

    reader = open_reader(args, data, rejects_for=args.json or args.report)
    records = list(with_layout_notice(reader))
    print(reader.stats.summary(), file=sys.stderr)
    notes = []
    if reader.stats.rejects.total:
        notes.append(f"while reading, {reader.stats.rejects.summary()}")
    for why, count in reader.stats.dropped.items():
        notes.append(f"{count} dropped while reading: {why}")
    try:
        evaluation = evaluate(
            scorers,
            records,
            by=args.by,
            tie_band=args.tie_band,
            seed=args.seed,
            n_resamples=args.bootstrap,
            ndcg_k=args.ndcg_k,
            data=str(data),
            n_rejected=reader.stats.rejects.total,
            notes=notes,
        )
    except (ScorerError, JudgeError) as error:
        raise UserInputError(str(error)) from None
    document = evaluation.to_json()
    print(summary_table(document))
    for note in evaluation.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json is not None:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
    if write_report is not None:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_report(evaluation, path)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _report_writer() -> Any:
    """``prefkit.eval.report.write_report``, imported only when a report is asked for."""
    from prefkit.errors import UserInputError

    try:
        from prefkit.eval.report import write_report
    except ModuleNotFoundError as error:
        if error.name != "prefkit.eval.report":
            raise
        raise UserInputError(
            "--report needs prefkit.eval.report, which this installation lacks; "
            "use --json FILE.json for the metrics"
        ) from None
    return write_report
