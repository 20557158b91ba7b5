"""``prefkit data inspect`` and ``prefkit data convert``."""

from __future__ import annotations

import argparse
import json
import sys

from prefkit.cli import COMMAND_HELP
from prefkit.cli.common import (
    add_progress_argument,
    add_read_arguments,
    open_reader,
    progress,
    with_layout_notice,
)
from prefkit.config import add_dataclass_arguments, dataclass_from_args

INSPECT_EXAMPLES = """examples:
  prefkit data inspect pairs.jsonl
  prefkit data inspect ../shared/data/ukpconvarg1/UKPConvArg1Strict-CSV --json
  prefkit data inspect testset-v1.json --map prompt=instruction+input \\
      --map response_a=response1 --map response_b=response2 \\
      --map votes=annotator1+annotator2+annotator3 --winner-values a=1,b=2,tie=0
"""

CONVERT_EXAMPLES = """examples:
  # ratings -> pairs on one attribute, |difference| <= 0.5 is a tie
  prefkit data convert ratings.jsonl pairs.jsonl --to pairwise --attribute overall --tie-threshold 0.5
  # rankings -> best-vs-worst pairs, written as Parquet
  prefkit data convert rankings.jsonl pairs.parquet --to pairwise --pairs best-vs-worst
  # annotator votes -> soft labels
  prefkit data convert votes.jsonl soft.jsonl --to pairwise --votes soft
  # pairs -> KTO-style thumbs, keeping going past bad rows (they go to thumbs.jsonl.rejects.jsonl)
  prefkit data convert pairs.jsonl thumbs.jsonl --to binary --on-error skip
"""


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data",
        help=COMMAND_HELP["data"],
        description="Read feedback data in any supported layout, summarise it, or convert it "
        "between kinds (pairwise, ranking, rating, binary) in the canonical schema.",
    )
    sub = data.add_subparsers(title="data commands", metavar="COMMAND")
    data.set_defaults(handler=lambda args: data.print_help() or 2)

    inspect = sub.add_parser(
        "inspect",
        help="summarise a data set: kinds, ties, agreement, lengths, duplicates, rejects",
        description="Read PATH (a file, a folder of files, or a Hugging Face save_to_disk folder) "
        "and print what it holds: the detected layout, records by kind, distinct "
        "prompts, tie rate, annotator agreement, length statistics, exact duplicates "
        "and the rows that could not be read (with reasons).",
        epilog=INSPECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument(
        "path", metavar="PATH", help="file, folder, or Hugging Face dataset folder"
    )
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.add_argument(
        "--rejects",
        metavar="FILE",
        default=None,
        help="also write the rejected rows with their reasons to FILE.rejects.jsonl",
    )
    add_progress_argument(inspect)
    add_read_arguments(inspect, on_error_default="skip")
    inspect.set_defaults(handler=run_inspect)

    from prefkit.data.convert import ConversionOptions

    convert = sub.add_parser(
        "convert",
        help="convert between kinds and write canonical JSONL or Parquet",
        description="Read IN, convert its records to the kind given by --to, and write OUT in the "
        "canonical schema (.jsonl, .jsonl.gz or .parquet). Prints how many records "
        "were read, written and dropped, and why.",
        epilog=CONVERT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("input", metavar="IN", help="input file or folder")
    convert.add_argument("output", metavar="OUT", help="output file: .jsonl, .jsonl.gz or .parquet")
    add_progress_argument(convert)
    add_dataclass_arguments(convert, ConversionOptions, title="conversion")
    add_read_arguments(convert)
    convert.set_defaults(handler=run_convert)

    from prefkit.cli import data_candidates

    data_candidates.register(sub)


def run_inspect(args: argparse.Namespace) -> int:
    from prefkit.data.inspect import InspectReport, format_report, report_dict
    from prefkit.progress import ProgressCounter

    reader = open_reader(args, args.path, args.rejects)
    report = InspectReport()
    with ProgressCounter("inspect", "rec", enabled=args.progress) as counter:
        for batch in with_layout_notice(reader, reader.batches()):
            report.add_batch(batch)
            counter(len(batch))
    summary = report_dict(report, format_name=reader.format_name, read_stats=reader.stats)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_report(summary))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from prefkit.data.convert import ConversionOptions, convert_records
    from prefkit.data.write import output_kind, write_records

    output_kind(args.output)  # fail on a bad output name before reading anything
    options = dataclass_from_args(ConversionOptions, args)
    reader = open_reader(args, args.input, args.output)
    records = progress(with_layout_notice(reader), description="convert", enabled=args.progress)
    conversion = convert_records(records, options)
    written = write_records(conversion, args.output)
    print(reader.stats.summary(), file=sys.stderr)
    print(f"conversion: {conversion.stats.summary()}", file=sys.stderr)
    print(f"wrote {written} records to {args.output}", file=sys.stderr)
    return 0
