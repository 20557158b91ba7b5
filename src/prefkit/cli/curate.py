"""``prefkit curate dedup|decontaminate|noise|select``: wiring only (see :mod:`prefkit.curate`).

Every command reads its data with the shared reading options, writes OUT in the
canonical schema and prints how many records it read, kept and dropped, and why.
Rows the reader cannot read go to ``OUT.rejects.jsonl`` with ``--on-error skip``;
records the step itself cannot use go to ``OUT.curate-rejects.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefkit.cli import COMMAND_HELP
from prefkit.cli.common import (
    add_engine_arguments,
    add_output_arguments,
    add_read_arguments,
    announce_layout,
    check_shard_output,
    open_reader,
    output_base,
    ray_options_from_args,
    ray_reader_options,
    with_layout_notice,
)
from prefkit.config import add_dataclass_arguments, dataclass_from_args
from prefkit.errors import UserInputError

DEDUP_EXAMPLES = """examples:
  # near-duplicate prompts (MinHash LSH), keep the longest of each cluster
  prefkit curate dedup pairs.jsonl --out clean.jsonl --field prompt --keep longest
  # whole pairs, exact after normalisation only
  prefkit curate dedup pairs.jsonl --out clean.jsonl --method exact
  # paraphrases: frozen-encoder embeddings, cosine >= 0.92 within k-means clusters
  prefkit curate dedup pairs.jsonl --out clean.jsonl --method semantic --semantic-threshold 0.92
Writes OUT, OUT.clusters.jsonl (each cluster: the kept id, members, similarity, reason).
"""

DECONTAMINATE_EXAMPLES = """examples:
  prefkit curate decontaminate train.jsonl --against eval1.jsonl eval2.jsonl --out clean.jsonl
  # GPT-3's n-gram length, prompts only
  prefkit curate decontaminate train.jsonl --against eval.jsonl --out clean.jsonl \\
      --ngram 13 --fields prompt
  # a folder of shards on a local Ray runtime: 2 actors, each with the evaluation index
  prefkit curate decontaminate shards/ --against eval.jsonl --out clean.jsonl \\
      --engine ray --ray-workers 2
  # on a running cluster, one cleaned file per input shard
  prefkit curate decontaminate '/shared/train/*.parquet' --against eval.jsonl \\
      --out-shards /shared/clean --shard-format parquet --engine ray --ray-address auto
Writes OUT, OUT.flagged.jsonl (each match: training id and field, evaluation set, id and
field, overlap) and OUT.contamination.json (the per-evaluation-set table).
OUT holds the kept records in input order (a folder's files in sorted order, each
file's records in its order); the flagged rows follow the same order.
--engine ray reads each training data file in a Ray task (prefkit's reader: the same
rejects file and counts), builds the evaluation index once here and sends it to
--ray-workers actors (each holds a copy in memory) that check chunks of --chunk-size
records; OUT, the flagged file
and the table are the local engine's, byte for byte. --out-shards DIR (with --engine
ray) writes one file of kept records per input data file, named after it
(shards/part-00003.jsonl -> DIR/part-00003.jsonl), in input order inside each, one
after the other, each renamed into place when complete; DIR.flagged.jsonl, DIR.contamination.json and
DIR.rejects.jsonl go beside DIR. Neither engine resumes: a rerun checks everything again.
"""

NOISE_EXAMPLES = """examples:
  prefkit curate noise pairs.jsonl --out scored.jsonl                 # flag only
  prefkit curate noise pairs.jsonl --out clean.jsonl --action drop --threshold 0.8
  prefkit curate noise votes.jsonl --out soft.jsonl --action soften --soften-weight 0.5
Every pair gets metadata.noise: p_label, p_a, fold, flagged (and vote_agreement with votes).
"""

SELECT_EXAMPLES = """examples:
  prefkit curate select pool.jsonl --target target.jsonl --method dsir --budget 5000 --out picked.jsonl
  prefkit curate select pool.jsonl --target target.jsonl --method zipfit --budget 500 --out picked.jsonl
  prefkit curate select pool.jsonl --method perplexity --model ./small-lm --band middle \\
      --budget 2000 --out picked.jsonl
Writes OUT (metadata.select: method and score) and OUT.report.html (the distribution of scores).
"""


def register(commands: argparse._SubParsersAction) -> None:
    from prefkit.curate.dedup import DedupConfig

    curate = commands.add_parser(
        "curate",
        help=COMMAND_HELP["curate"],
        description="Clean and select feedback data: near-duplicates, overlap with evaluation "
        "sets, pairs whose label is probably wrong, and the subset closest to a target.",
    )
    sub = curate.add_subparsers(title="curate commands", metavar="COMMAND")
    curate.set_defaults(handler=lambda args: curate.print_help() or 2)

    dedup = sub.add_parser(
        "dedup",
        help="remove exact, near (MinHash LSH) or semantic duplicates",
        description="Read DATA, cluster duplicate records by the field compared, keep one "
        "record per cluster and write the rest to --out.",
        epilog=DEDUP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(dedup)
    add_dataclass_arguments(dedup, DedupConfig, title="deduplication")
    dedup.add_argument(
        "--semantic",
        action="store_const",
        const="semantic",
        dest="method",
        help="the same as --method semantic",
    )
    dedup.set_defaults(handler=run_dedup)

    from prefkit.curate.decontaminate import DecontaminateConfig

    decontaminate = sub.add_parser(
        "decontaminate",
        help="remove training records that copy evaluation items (n-gram overlap)",
        description="Flag every training record in which at least half of the word n-grams of "
        "an evaluation text occur; write the others to --out. The reading options apply to "
        "TRAIN and to every EVAL.",
        epilog=DECONTAMINATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(decontaminate, shards=True)
    decontaminate.add_argument(
        "--against", nargs="+", required=True, metavar="EVAL", help="evaluation sets"
    )
    add_dataclass_arguments(decontaminate, DecontaminateConfig, title="decontamination")
    add_engine_arguments(
        decontaminate,
        actors="checking actors",
        work="check the records",
        each="fetching the evaluation index once",
        gpus=False,
    )
    decontaminate.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        metavar="N",
        help="with --engine ray: training records per actor call (default: 2048)",
    )
    decontaminate.set_defaults(handler=run_decontaminate)

    from prefkit.curate.noise import NoiseConfig

    noise = sub.add_parser(
        "noise",
        help="flag pairs whose label out-of-fold reward models contradict",
        description="Train k embedding reward models, each on all folds but one, score the "
        "held-out pairs and flag those whose label the model contradicts with probability "
        "above --threshold; then flag, drop, flip or soften them.",
        epilog=NOISE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(noise)
    add_dataclass_arguments(noise, NoiseConfig, title="label noise")
    noise.set_defaults(handler=run_noise)

    from prefkit.curate.select import SelectConfig

    select = sub.add_parser(
        "select",
        help="select the part of a pool closest to a target (DSIR, ZIP-FIT, perplexity)",
        description="Score every record of POOL toward --target (or by perplexity under --model), "
        "keep --budget records and write them with their score. The reading options apply to "
        "POOL and TARGET.",
        epilog=SELECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(select)
    select.add_argument(
        "--target", metavar="TARGET", default=None, help="target data (dsir and zipfit)"
    )
    select.add_argument(
        "--report",
        metavar="FILE.html",
        default=None,
        help="HTML report of the scores (default: OUT.report.html)",
    )
    add_dataclass_arguments(select, SelectConfig, title="selection")
    select.set_defaults(handler=run_select)


def _add_common(parser: argparse.ArgumentParser, *, shards: bool = False) -> None:
    """DATA, the output, ``--json`` and the reading options; ``shards``: DATA may be a glob,
    and ``--out-shards`` may stand for ``--out`` (a command with ``--engine ray``)."""
    if shards:
        parser.add_argument(
            "data",
            metavar="DATA",
            help="input: a file, a folder of data files, or a glob in quotes ('shards/*.jsonl')",
        )
        add_output_arguments(parser, out_help="output: .jsonl, .jsonl.gz or .parquet")
    else:
        parser.add_argument("data", metavar="DATA", help="input file or folder")
        parser.add_argument(
            "--out", required=True, metavar="OUT", help="output: .jsonl, .jsonl.gz or .parquet"
        )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_read_arguments(parser)


def _curate_rejects(args: argparse.Namespace) -> Path | None:
    return Path(f"{args.out}.curate-rejects.jsonl") if args.on_error == "skip" else None


def _finish(
    args: argparse.Namespace, reader: Any, summary: dict[str, Any], lines: list[str]
) -> int:
    summary = {**summary, "rejected_rows": reader.stats.rejects.total}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"{args.data}: {reader.stats.summary()}", file=sys.stderr)
    for line in lines:
        print(line, file=sys.stderr)
    return 0


def run_dedup(args: argparse.Namespace) -> int:
    from prefkit.curate.dedup import DedupConfig, dedup_records
    from prefkit.data.write import output_kind

    output_kind(args.out)
    config = dataclass_from_args(DedupConfig, args)
    reader = open_reader(args, args.data, args.out)
    clusters = Path(f"{args.out}.clusters.jsonl")
    report = dedup_records(
        with_layout_notice(reader),
        args.out,
        config,
        clusters_path=clusters,
        on_error=args.on_error,
        rejects_path=_curate_rejects(args),
    )
    lines = [report.stats.summary(), f"{report.num_clusters} clusters written to {clusters}"]
    return _finish(args, reader, report.to_dict(), lines)


def run_decontaminate(args: argparse.Namespace) -> int:
    from prefkit.curate.decontaminate import (
        DecontaminateConfig,
        decontaminate_records,
        write_table,
    )
    from prefkit.data.write import output_kind

    check_shard_output(args)
    if args.out is not None:
        output_kind(args.out)
    options = ray_options_from_args(args, args.engine == "ray", "--engine ray")
    if args.chunk_size < 1:
        raise UserInputError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    config = dataclass_from_args(DecontaminateConfig, args)
    eval_sets = {}
    for path in args.against:
        eval_reader = open_reader(args, path, None)
        eval_sets[path] = list(with_layout_notice(eval_reader))
        print(f"{path}: {eval_reader.stats.summary()}", file=sys.stderr)
    base = output_base(args)
    flagged = Path(f"{base}.flagged.jsonl")
    if options is not None:
        reader, report = _decontaminate_on_ray(args, eval_sets, config, options, flagged)
    else:
        reader = open_reader(args, args.data, args.out)
        report = decontaminate_records(
            with_layout_notice(reader), eval_sets, args.out, config, flagged_path=flagged
        )
    table = Path(f"{base}.contamination.json")
    write_table(report, table)
    lines = [
        report.stats.summary(),
        report.table_text(),
        f"{report.flagged} matches written to {flagged}; table in {table}",
    ]
    return _finish(args, reader, report.to_dict(), lines)


def _decontaminate_on_ray(args, eval_sets, config, options, flagged: Path):
    """The Ray engine (:mod:`prefkit.engines.ray_decontaminate`): the run (its ``stats``
    are the read's, as a reader's) and the report."""
    from prefkit.curate.decontaminate import Decontamination, build_index
    from prefkit.data.errors import rejects_path_for
    from prefkit.engines.ray_decontaminate import RayDecontamination, write_clean
    from prefkit.engines.shard_output import shard_output_paths
    from prefkit.progress import ProgressCounter

    index = build_index(eval_sets, config)
    run = RayDecontamination(
        args.data,
        index,
        reader_options=ray_reader_options(args),
        rejects_path=rejects_path_for(output_base(args)) if args.on_error == "skip" else None,
        options=options,
        chunk_size=args.chunk_size,
    )
    announce_layout(run)
    print(f"ray: {len(run.shards)} shard(s)", file=sys.stderr)
    paths = (
        None
        if args.out_shards is None
        else shard_output_paths(run.shards, args.out_shards, args.shard_format or "jsonl")
    )
    tally = Decontamination(index, flagged)

    def counted():
        with ProgressCounter("decontaminate (ray)", "rec", enabled=config.progress) as counter:
            for chunk in run.chunks():
                counter(len(chunk.records))
                yield chunk

    write_clean(counted(), tally, out=args.out, shard_paths=paths)
    return run, tally.finish()


def run_noise(args: argparse.Namespace) -> int:
    from prefkit.curate.noise import NoiseConfig, score_label_noise
    from prefkit.data.write import output_kind

    output_kind(args.out)
    config = dataclass_from_args(NoiseConfig, args)
    reader = open_reader(args, args.data, args.out)
    report = score_label_noise(
        with_layout_notice(reader),
        args.out,
        config,
        on_error=args.on_error,
        rejects_path=_curate_rejects(args),
    )
    accuracy = ", ".join(f"{value:.3f}" for value in report.fold_accuracy)
    lines = [
        report.stats.summary(),
        f"{len(report.flagged_ids)} of {report.scored} pairs flagged (ties not judged: "
        f"{report.ties}); out-of-fold accuracy per fold: {accuracy}",
    ]
    for example in report.examples[:5]:
        lines.append(
            f"  {example['id']}: P(label {example['outcome']}) = {example['p_label']:.3f}"
            + (
                f", vote agreement {example['vote_agreement']:.2f}"
                if example["vote_agreement"] is not None
                else ""
            )
        )
    return _finish(args, reader, report.to_dict(), lines)


def run_select(args: argparse.Namespace) -> int:
    from prefkit.curate.select import SelectConfig, select_records
    from prefkit.data.write import output_kind

    output_kind(args.out)
    config = dataclass_from_args(SelectConfig, args)
    target: list = []
    if config.method != "perplexity":
        if args.target is None:
            raise UserInputError(f"--method {config.method} needs --target TARGET")
        target_reader = open_reader(args, args.target, None)
        target = list(with_layout_notice(target_reader))
        print(f"{args.target}: {target_reader.stats.summary()}", file=sys.stderr)
    elif args.target is not None:
        raise UserInputError("--method perplexity scores the pool alone: drop --target")
    reader = open_reader(args, args.data, args.out)
    report = select_records(with_layout_notice(reader), target, args.out, config)
    report_path = Path(args.report or f"{args.out}.report.html")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(report.html(), encoding="utf-8")
    lines = [report.stats.summary(), f"report: {report_path}"]
    return _finish(args, reader, report.to_dict(), lines)
