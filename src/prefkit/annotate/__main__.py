"""``python -m prefkit.annotate COMMAND ...``: the ``prefkit annotate`` commands alone.

The same commands and options as ``prefkit annotate``; this entry point loads only
the annotation app (not the training commands), so a server starts in about a second.
"""

from __future__ import annotations

import argparse
import sys

from prefkit.cli import main as run_cli
from prefkit.cli.annotate import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefkit")
    register(parser.add_subparsers())
    return run_cli(["annotate", *(sys.argv[1:] if argv is None else argv)], parser=parser)


if __name__ == "__main__":
    sys.exit(main())
