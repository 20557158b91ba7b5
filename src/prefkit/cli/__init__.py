"""The ``prefkit`` command line.

Each command lives in its own module and registers itself on the parser; the
modules hold wiring only (parse options, call library parts, print). Heavy
libraries (torch, transformers) are imported inside the commands that need
them, so ``prefkit --help`` and the data commands start fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from prefkit import __version__
from prefkit.errors import UserInputError

COMMAND_HELP = {
    "quickstart": "run the whole path (data -> reward model -> evaluation -> report) in minutes",
    "data": "inspect and convert feedback data",
    "rm": "train and apply reward models",
    "eval": "evaluate reward models on preference data (accuracy, ties, calibration, ...)",
    "align": "align a causal language model with a preference loss (DPO, SimPO, KTO, ...)",
    "annotate": "collect human feedback in the browser (pairs, rankings, ratings, thumbs)",
    "generate": "sample candidate responses from a causal LM (optionally scored, or best-of-N)",
    "curate": "remove duplicates and contamination, find label noise, select data",
    "serve": "serve a reward model over HTTP (OpenRLHF-compatible, batched, authenticated)",
    "rl": "align a causal LM online: sample, score with a reward, update (GRPO, RLOO, ...)",
}
"""Each command's line in ``prefkit --help``: kept here so that listing the commands
imports none of their modules (torch, transformers, ...)."""

COMMAND_MODULES = tuple(COMMAND_HELP)


def build_parser(
    command_modules: Sequence[str] = COMMAND_MODULES, *, index_only: bool = False
) -> argparse.ArgumentParser:
    """The parser with the commands of ``command_modules``; ``index_only`` lists every
    command by name and help line without importing its module (``prefkit --help``)."""
    parser = argparse.ArgumentParser(
        prog="prefkit",
        description=(
            "Learning from preferences: read feedback data (pairs, ties, votes, rankings, "
            "ratings, thumbs), train and evaluate reward models, and align language models."
        ),
        epilog="Run 'prefkit COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"prefkit {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    if index_only:
        for name in COMMAND_MODULES:
            commands.add_parser(name, help=COMMAND_HELP[name], add_help=False)
        return parser
    for name in command_modules:
        importlib.import_module(f"prefkit.cli.{name}").register(commands)
    return parser


def main(
    argv: Sequence[str] | None = None, *, parser: argparse.ArgumentParser | None = None
) -> int:
    """Run one command; ``parser`` defaults to :func:`build_parser`.

    When the first argument names a command, only that command's module is
    imported (``prefkit data ...`` does not pay for torch at start-up).
    """
    if parser is None:
        words = list(sys.argv[1:] if argv is None else argv)
        if words and words[0] in COMMAND_MODULES:
            parser = build_parser([words[0]])
        else:  # no command named: list them all, importing none
            parser = build_parser(index_only=True)
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    if not getattr(args, "progress", True) or not sys.stderr.isatty():
        quiet_library_progress()
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("prefkit: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # user-facing errors are printed, not traced
        if not _is_user_error(error):
            raise
        print(f"prefkit: error: {error}", file=sys.stderr)
        return 2


def quiet_library_progress() -> None:
    """Hide the progress bars of Hugging Face libraries ("Loading weights", "Writing model
    shards"): shown off a terminal they fill a log with carriage-return redraws, and with
    ``--no-progress`` they are not wanted either. prefkit's own progress is unaffected.
    ``HF_HUB_DISABLE_PROGRESS_BARS`` set by the user wins, either way."""
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by libraries imported later
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _is_user_error(error: Exception) -> bool:
    # Every error a user can fix is a UserInputError (the data layer's DataError,
    # FieldError and LayoutError and the annotation app's AnnotateError are kinds of it);
    # a missing file given on the command line is one too.
    return isinstance(error, (UserInputError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
