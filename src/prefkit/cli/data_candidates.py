"""``prefkit data pairs`` and ``prefkit data select``: wiring only (see
:mod:`prefkit.data.pairs` and :mod:`prefkit.data.select`)."""

from __future__ import annotations

import argparse
import json
import sys

from prefkit.cli.common import add_read_arguments, open_reader, with_layout_notice
from prefkit.config import add_dataclass_arguments, dataclass_from_args

PAIRS_EXAMPLES = """examples:
  # West-of-N: best vs worst of each candidate set, scored by prefkit rm score
  prefkit data pairs candidates.jsonl --scores rewards.jsonl --out pairs.jsonl
  # sets already scored (prefkit generate --reward), the most confident half, ties dropped
  prefkit data pairs scored.jsonl --out pairs.jsonl --top-quantile 0.5 --tie-margin 0.1 --drop-ties
  # every pair with margin >= 0.5, penalising length by 0.01 per token
  prefkit data pairs scored.jsonl --out pairs.jsonl --strategy all --min-margin 0.5 --length-penalty 0.01
"""

SELECT_EXAMPLES = """examples:
  prefkit data select best.jsonl --out selected.jsonl --budget-records 1000 --temperature 2
  prefkit data select scored.jsonl --out selected.jsonl --budget-tokens 200000 --ranking-score mean
  prefkit data select candidates.jsonl --scores rewards.jsonl --out selected.jsonl --budget-records 500
"""


def register(sub: argparse._SubParsersAction) -> None:
    from prefkit.data.pairs import PairsConfig
    from prefkit.data.select import SelectConfig

    pairs = sub.add_parser(
        "pairs",
        help="scored candidate sets -> pairwise records (best-worst / West-of-N, best-random, all)",
        description="Build pairwise records from candidate sets with one reward per response "
        "(ranking records with scores, or candidates plus --scores from 'prefkit rm score'). "
        "Prints the sets read, pairs written and everything dropped, with reasons.",
        epilog=PAIRS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pairs.add_argument("scored", metavar="SCORED", help="candidate sets (file or folder)")
    pairs.add_argument(
        "--out", required=True, metavar="PAIRS", help=".jsonl, .jsonl.gz or .parquet"
    )
    pairs.add_argument(
        "--scores",
        metavar="FILE",
        default=None,
        help="the output of 'prefkit rm score' on SCORED: its rewards replace SCORED's scores",
    )
    pairs.add_argument(
        "--reward-model",
        metavar="NAME",
        default=None,
        help="recorded in each pair's metadata (default: the reward model named in SCORED's "
        "metadata, else the --scores file)",
    )
    add_dataclass_arguments(pairs, PairsConfig, title="pairs")
    add_read_arguments(pairs)
    pairs.set_defaults(handler=run_pairs)

    select = sub.add_parser(
        "select",
        help="budgeted sampling of scored records by exp(z / temperature) (Gumbel top-k)",
        description="Sample records without replacement with probability proportional to "
        "exp(z / TAU), z the z-normalised score, until the budget is used; write them in input "
        "order.",
        epilog=SELECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    select.add_argument("scored", metavar="SCORED", help="scored records (file or folder)")
    select.add_argument("--out", required=True, metavar="OUT", help=".jsonl, .jsonl.gz or .parquet")
    select.add_argument(
        "--scores",
        metavar="FILE",
        default=None,
        help="the output of 'prefkit rm score' on SCORED: its rewards replace SCORED's scores",
    )
    add_dataclass_arguments(select, SelectConfig, title="selection")
    add_read_arguments(select)
    select.set_defaults(handler=run_select)


def _read_score_rows(path: str) -> dict[str, dict]:
    from prefkit.errors import UserInputError

    rows: dict[str, dict] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserInputError(
                    f"{path}:{line_number}: not valid JSON ({error.msg})"
                ) from None
            if not isinstance(row, dict) or "id" not in row:
                raise UserInputError(f"{path}:{line_number}: expected an object with an 'id'")
            key = str(row["id"])
            if key in rows:
                raise UserInputError(f"{path}:{line_number}: id {key!r} is scored twice")
            rows[key] = row
    return rows


def run_pairs(args: argparse.Namespace) -> int:
    from prefkit.data.pairs import PairsConfig, attach_rewards, build_pairs
    from prefkit.data.write import output_kind, write_records

    output_kind(args.out)
    config = dataclass_from_args(PairsConfig, args)
    reader = open_reader(args, args.scored, args.out)
    records = with_layout_notice(reader)
    reward_model = args.reward_model
    if args.scores is not None:
        records = attach_rewards(records, _read_score_rows(args.scores), source=args.scores)
        reward_model = reward_model or f"scores from {args.scores}"
    pairs, stats = build_pairs(records, config, reward_model=reward_model)
    written = write_records(pairs, args.out)
    print(f"{args.scored}: {reader.stats.summary()}", file=sys.stderr)
    print(f"pairs: {stats.summary()}", file=sys.stderr)
    print(f"wrote {written} pairs to {args.out}", file=sys.stderr)
    print(json.dumps({"out": args.out, **stats.to_dict()}))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from prefkit.data.pairs import attach_rewards
    from prefkit.data.select import SelectConfig, select_records
    from prefkit.data.write import output_kind, write_records

    output_kind(args.out)
    config = dataclass_from_args(SelectConfig, args)
    reader = open_reader(args, args.scored, args.out)
    records = with_layout_notice(reader)
    if args.scores is not None:
        records = attach_rewards(records, _read_score_rows(args.scores), source=args.scores)
    selected, stats = select_records(records, config)
    written = write_records(selected, args.out)
    print(f"{args.scored}: {reader.stats.summary()}", file=sys.stderr)
    print(f"select: {stats.summary()}", file=sys.stderr)
    print(f"wrote {written} records to {args.out}", file=sys.stderr)
    return 0
