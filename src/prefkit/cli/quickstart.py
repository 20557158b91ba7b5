"""``prefkit quickstart``: the whole pipeline on generated data, offline."""

from __future__ import annotations

import argparse

from prefkit.cli import COMMAND_HELP
from prefkit.cli.common import add_progress_argument


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quickstart",
        help=COMMAND_HELP["quickstart"],
        description="Generate a small feedback set with a known true reward (factual questions with a "
        "correct and an incorrect answer, lengths balanced so that length bias shows), "
        "train the default reward model on it, evaluate it on held-out phrasings next to "
        "a 'longer answer wins' baseline, and write report.html and metrics.json. "
        "Needs no network.",
        epilog="example:\n  prefkit quickstart --out quickstart-out\n  # then open quickstart-out/report.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        default="quickstart-out",
        metavar="DIR",
        help="folder for the data, model, metrics.json and report.html (default: quickstart-out)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the generated data and training (default: 0)"
    )
    add_progress_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prefkit.quickstart import run_quickstart

    run_quickstart(args.out, seed=args.seed, progress=args.progress)
    return 0
