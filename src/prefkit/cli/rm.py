"""``prefkit rm train`` and ``prefkit rm score``: wiring only (see :mod:`prefkit.rm`).

``rm train`` also runs under ``accelerate launch -m prefkit rm train ...`` (or
``torchrun``): every process reads the data and trains its share of each batch;
only rank 0 writes the rejects file, prints and saves (WORLD_SIZE/RANK come from
the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from pathlib import Path

from prefkit.cli import COMMAND_HELP
from prefkit.cli.common import (
    add_engine_arguments,
    add_output_arguments,
    add_progress_argument,
    add_read_arguments,
    announce_layout,
    check_shard_output,
    open_reader,
    output_base,
    progress,
    ray_reader_options,
    with_layout_notice,
)
from prefkit.config import add_dataclass_arguments, dataclass_from_args, field_docs
from prefkit.rm.length_debias import DEFAULT_LENGTH_DEBIAS
from prefkit.rm.multiobjective import MultiObjectiveConfig, default_stage_config
from prefkit.rm.result import calibration_summary
from prefkit.rm.train import RMTrainConfig, default_train_config
from prefkit.train.loop import TrainConfig

RM_TRAIN_DEFAULTS = {
    **{
        name: value
        for name, value in dataclasses.asdict(default_train_config("embedding")).items()
        if name not in ("epochs", "lr", "group_by_length")
    },
    "epochs": None,
    "lr": None,
    "group_by_length": None,
}
"""``rm train``'s training defaults; None = the mode's default (see the examples)."""

TRAIN_EXAMPLES = """\
examples:
  prefkit rm train pairs.jsonl --out runs/rm
  prefkit rm train ../shared/data/ukpconvarg1/UKPConvArg1Strict-CSV --out runs/ukp --epochs 4
  prefkit rm train train.jsonl --eval-data dev.jsonl --out runs/rm --early-stopping-patience 2
  prefkit rm train pairs.jsonl --out runs/rm-ft --mode finetune --backbone path/to/checkpoint --max-length 256
  prefkit rm train pairs.jsonl --out runs/rm-lora --mode lora --backbone path/to/decoder --lora-r 16
Rerunning the same command resumes from the newest checkpoint in OUT/training/.
Training options left at none take the mode's defaults: --epochs 4 and --lr 3e-4 in
embedding mode, 2 and 3e-5 for finetune, 2 and 2e-4 for lora; --group-by-length is
on for finetune and lora (cached embeddings have no length to group by).
Several GPUs (or CPU processes): the same command under accelerate launch, e.g.
  accelerate launch --config_file docs/accelerate/multi_gpu.yaml -m prefkit rm train \\
      pairs.jsonl --out runs/rm-ft --mode finetune --backbone path/to/checkpoint --batch-size 32
--batch-size is the global batch (all processes); each process trains on its share, so
the updates are those of one process (a multiple of processes x --grad-accum-steps).
--zero-stage 1 (or 2) under a launcher splits the AdamW state (and the gradients) between
the processes instead of keeping all of it on each (docs/accelerate/sharded.md).
"""

MULTIOBJECTIVE_EXAMPLES = """\
examples:
  prefkit rm train-multiobjective ratings.jsonl pairs.jsonl --out runs/armo
  prefkit rm train-multiobjective ratings.jsonl pairs.jsonl --out runs/armo --eval-fraction 0.1 \\
      --early-stopping-patience 3
  prefkit rm train-multiobjective ratings.jsonl pairs.jsonl --eval-ratings dev-ratings.jsonl \\
      --eval-pairs dev-pairs.jsonl --out runs/armo --truncation drop --max-length 128
Truncation counts of each stage are printed; they and the held-out metrics are saved in
OUT/config.json under "training". Rerunning the same command resumes from the newest
checkpoints in OUT/training/regression/ and OUT/training/gate/.
The training options apply to both stages, except epochs and learning rate, which each
stage takes on its own (--regression-epochs, --gate-epochs, --regression-lr, --gate-lr).
"""

MULTIOBJECTIVE_STAGES = {"regression": "stage 1 (regression)", "gate": "stage 2 (gate)"}
"""The stages of ``rm train-multiobjective``: the prefix of their own options, and their name."""
MULTIOBJECTIVE_STAGE_OPTIONS = ("epochs", "lr")
"""Loop settings that each stage takes on its own (``--regression-epochs``, ``--gate-lr``, ...)."""
MULTIOBJECTIVE_SHARED_OPTIONS = tuple(
    item.name
    for item in dataclasses.fields(TrainConfig)
    if item.name
    not in (
        *MULTIOBJECTIVE_STAGE_OPTIONS,
        "group_by_length",  # cached features have no length to group by
        "early_stopping_metric",  # the stages report different metrics; both watch "loss"
        "early_stopping_mode",
        "zero_stage",  # heads on cached features, in one process
    )
)
"""Loop settings given once for both stages of ``rm train-multiobjective``."""

SCORE_EXAMPLES = """\
examples:
  prefkit rm score runs/rm pairs.jsonl --out scores.jsonl
  prefkit rm score runs/rm candidates.jsonl --records --out scored.jsonl
  prefkit data pairs scored.jsonl --out pairs.jsonl
  prefkit rm score runs/rm shards/ --out scores.jsonl --engine ray --ray-workers 2
  prefkit rm score runs/rm 'shards/*.parquet' --out scores.jsonl --engine ray --ray-address auto
  prefkit rm score runs/rm shards/ --records --out-shards scored/ --shard-format parquet \\
      --engine ray --ray-workers 2
DATA is a file, a folder of data files (read in sorted order) or a quoted glob.
--engine ray runs the same scoring on Ray Data: each data file is read by a task
(prefkit's reader: the same rejects), chunks of --chunk-size records are scored by
--ray-workers actors that load the model once; the output is the local engine's,
in the same order. On a cluster, MODEL_DIR and DATA must be readable by every node.
--out-shards DIR (with --engine ray) writes one file per input data file instead,
named after it (shards/part-00003.jsonl -> DIR/part-00003.jsonl), in input order
inside each, one after the other, each renamed into place when complete. Reward rows
are JSONL; --shard-format parquet needs --records. Neither engine resumes: a rerun
scores again.
Output: one JSON line per input record, in input order, with its id and
  pairs:    reward_a, reward_b, margin (= reward_a - reward_b)
  rankings: rewards (one per response)
  others:   reward
plus per-attribute values ("attributes") for a model trained on ratings.
With --records: the input records themselves, candidate sets scored (one score
per response, order and ids kept), each with metadata.scoring.
"""


def register(commands: argparse._SubParsersAction) -> None:
    rm = commands.add_parser(
        "rm",
        help=COMMAND_HELP["rm"],
        description="Train a reward model on feedback data (pairs, ties, votes, rankings, ratings) "
        "and score data with it.",
    )
    sub = rm.add_subparsers(title="rm commands", metavar="COMMAND")
    rm.set_defaults(handler=lambda args: rm.print_help() or 2)

    train = sub.add_parser(
        "train",
        help="train a reward model and save it to a folder",
        description="Train a reward model on DATA and save it (safetensors + config.json) to --out.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "data", metavar="DATA", help="training data (file, folder, or dataset folder)"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    train.add_argument(
        "--eval-data",
        "--eval",
        dest="eval",
        metavar="DATA",
        default=None,
        help="held-out data, evaluated every epoch (loss, accuracy)",
    )
    train.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="refuse to continue from checkpoints already in DIR/training",
    )
    add_read_arguments(train)
    add_dataclass_arguments(
        train, RMTrainConfig, skip=("train", "length_debias"), title="reward model options"
    )
    train.add_argument(
        "--length-debias",
        dest="length_debias",
        type=float,
        nargs="?",
        const=DEFAULT_LENGTH_DEBIAS,
        default=0.0,
        metavar="WEIGHT",
        help="train a length head beside the reward and drop it at inference, with a penalty "
        "(weight WEIGHT, 0.3 when the flag has no value; larger weights push the reward against length where quality and length go together in the data) on the reward's correlation with "
        "response length (ODIN, Chen et al. 2024); the training summary reports reward-length "
        "Spearman before and after (default: off)",
    )
    add_dataclass_arguments(
        train, TrainConfig, title="training options", defaults=RM_TRAIN_DEFAULTS
    )
    train.add_argument(
        "--quiet", dest="progress", action="store_false", help="the same as --no-progress"
    )
    train.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="E",
        help="embedding mode: train E heads (seeds seed..seed+E-1, bootstrap resamples of the "
        "records) on the same cached embeddings, stored as one model whose reward is their mean; "
        "rm score then adds the members' standard deviation (default 1: one head)",
    )
    train.set_defaults(handler=run_train)

    multi = sub.add_parser(
        "train-multiobjective",
        help="train a multi-objective reward model (ArmoRM: attributes + gate)",
        description="Stage 1: regress the rating attributes of RATINGS; stage 2: train a gate over the "
        "prompt that mixes them into one reward, with Bradley-Terry on PAIRS. Saves to --out.",
        epilog=MULTIOBJECTIVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    multi.add_argument("ratings", metavar="RATINGS", help="rating records (two or more attributes)")
    multi.add_argument("pairs", metavar="PAIRS", help="pairwise records (no ties)")
    multi.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    multi.add_argument(
        "--eval-ratings",
        metavar="DATA",
        default=None,
        help="held-out rating records, evaluated after every epoch of stage 1 "
        "(loss, mse per attribute); see also --eval-fraction",
    )
    multi.add_argument(
        "--eval-pairs",
        metavar="DATA",
        default=None,
        help="held-out pair records, evaluated after every epoch of stage 2 (loss, accuracy)",
    )
    multi.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="refuse to continue from checkpoints already in DIR/training",
    )
    add_read_arguments(multi)
    add_multiobjective_arguments(multi)
    multi.set_defaults(handler=run_train_multiobjective)

    score = sub.add_parser(
        "score",
        help="score data with a trained reward model",
        description="Stream DATA through the reward model in MODEL_DIR and write one JSON line "
        "per record to --out, keeping input order and ids.",
        epilog=SCORE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by prefkit rm train")
    score.add_argument(
        "data",
        metavar="DATA",
        help="data to score: a file, a folder of data files, or a glob in quotes ('shards/*.jsonl')",
    )
    add_output_arguments(
        score,
        out_help="JSONL output (with --records: .jsonl, .jsonl.gz or .parquet)",
        out_metavar="FILE",
    )
    score.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="N",
        help="responses per forward pass (default: 64)",
    )
    score.add_argument(
        "--chunk-size",
        type=int,
        default=2048,
        metavar="N",
        help="records read, scored and written at a time (default: 2048)",
    )
    score.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="embedding cache (embedding-mode models); default $PREFKIT_CACHE/embeddings "
        "or ~/.cache/prefkit/embeddings",
    )
    score.add_argument(
        "--normalize",
        action="store_true",
        help="standardise rewards by the training data's mean and std",
    )
    score.add_argument(
        "--records",
        action="store_true",
        help="write the input records back with their rewards filled in, instead of reward "
        "rows: candidate sets become ranking records with one score per response (ready for "
        "'prefkit data pairs'), ratings and thumbs get a 'reward'; every record's "
        "metadata.scoring names the reward model and holds its rewards (--out may be .parquet)",
    )
    add_engine_arguments(score, actors="scoring actors", work="score")
    add_progress_argument(score)
    add_read_arguments(score)
    score.set_defaults(handler=run_score)


def add_multiobjective_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of :class:`MultiObjectiveConfig`, the loop settings shared by both stages
    (defaults of :func:`default_stage_config`) and the epochs and learning rate of each stage."""
    add_dataclass_arguments(
        parser,
        MultiObjectiveConfig,
        skip=tuple(MULTIOBJECTIVE_STAGES),
        title="multi-objective options",
    )
    defaults = dataclasses.asdict(default_stage_config())
    add_dataclass_arguments(
        parser,
        TrainConfig,
        skip=tuple(
            item.name
            for item in dataclasses.fields(TrainConfig)
            if item.name not in MULTIOBJECTIVE_SHARED_OPTIONS
        ),
        title="training options (both stages)",
        defaults=defaults,
    )
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", help="the same as --no-progress"
    )
    docs = field_docs(TrainConfig)
    group = parser.add_argument_group("training options (each stage)")
    for stage, name in MULTIOBJECTIVE_STAGES.items():
        for option in MULTIOBJECTIVE_STAGE_OPTIONS:
            group.add_argument(
                f"--{stage}-{option}",
                dest=f"{stage}_{option}",
                type=int if option == "epochs" else float,
                metavar="N" if option == "epochs" else "X",
                default=defaults[option],
                help=f"{name}: {docs[option]} (default: {defaults[option]})",
            )


def multiobjective_config_from_args(args: argparse.Namespace) -> MultiObjectiveConfig:
    """The config of the options added by :func:`add_multiobjective_arguments`."""
    shared = {name: getattr(args, name) for name in MULTIOBJECTIVE_SHARED_OPTIONS}
    stages = {
        stage: default_stage_config(
            **shared,
            **{
                option: getattr(args, f"{stage}_{option}")
                for option in MULTIOBJECTIVE_STAGE_OPTIONS
            },
        )
        for stage in MULTIOBJECTIVE_STAGES
    }
    return dataclass_from_args(MultiObjectiveConfig, args, **stages)


def _read_all(args: argparse.Namespace, path: str, rejects_for: str) -> list:
    if not _is_main_process():  # rank 0 reports the read and writes the rejects file
        return list(open_reader(args, path, None))
    reader = open_reader(args, path, rejects_for)
    records = list(with_layout_notice(reader))
    print(f"{path}: {reader.stats.summary()}", file=sys.stderr)
    return records


def _is_main_process() -> bool:
    """True outside ``torchrun`` / ``accelerate launch``, and on their rank 0."""
    return int(os.environ.get("RANK", "0")) == 0


def run_train(args: argparse.Namespace) -> int:
    from prefkit.errors import UserInputError
    from prefkit.rm.train import train_reward_model

    given = {
        item.name: getattr(args, item.name)
        for item in dataclasses.fields(TrainConfig)
        if getattr(args, item.name) is not None
    }
    config = dataclass_from_args(
        RMTrainConfig, args, train=default_train_config(args.mode, **given)
    )
    if args.ensemble < 1 or (args.ensemble > 1 and config.mode != "embedding"):
        raise UserInputError("--ensemble must be >= 1, and > 1 only with --mode embedding")
    if args.ensemble > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserInputError(
            "--ensemble trains its heads in one process (seconds on cached embeddings); "
            "run it without accelerate launch / torchrun"
        )
    out = Path(args.out)
    records = _read_all(args, args.data, out / "train")
    eval_records = _read_all(args, args.eval, out / "eval") if args.eval else None
    common = dict(
        eval_records=eval_records,
        resume=args.resume,
        log=lambda line: print(line, file=sys.stderr),
        source=args.data,
    )
    if args.ensemble > 1:
        from prefkit.rm.ensemble import train_ensemble

        report = train_ensemble(records, config, out, args.ensemble, **common)
        training = report.model.spec.training or {}
        summary = {
            "model_dir": str(out),
            "loss": report.loss,
            "ensemble": args.ensemble,
            "steps": [stage.result.global_step for stage in report.stages.values()],
            "train": training.get("train_metrics", {}),
            "eval": training.get("eval_metrics", {}),
        }
        print(json.dumps(summary))
        return 0
    report = train_reward_model(records, config, out, **common)
    if not _is_main_process():
        return 0
    stage = report.stages["train"]
    summary = {
        "model_dir": str(out),
        "loss": report.loss,
        "steps": stage.result.global_step,
        "train": stage.metrics,
        "eval": stage.eval_metrics,
    }
    if report.calibration is not None:
        summary["calibration"] = calibration_summary(report.calibration)
    print(json.dumps(summary))
    return 0


def run_train_multiobjective(args: argparse.Namespace) -> int:
    from prefkit.rm.multiobjective import check_evaluation_settings, train_multiobjective

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from prefkit.errors import UserInputError

        raise UserInputError(
            "rm train-multiobjective trains its heads on cached embeddings in one process; "
            "run it without accelerate launch / torchrun"
        )
    config = multiobjective_config_from_args(args)
    check_evaluation_settings(
        config,
        eval_ratings_given=args.eval_ratings is not None,
        eval_pairs_given=args.eval_pairs is not None,
    )
    out = Path(args.out)
    ratings = _read_all(args, args.ratings, out / "ratings")
    pairs = _read_all(args, args.pairs, out / "pairs")
    eval_ratings = (
        _read_all(args, args.eval_ratings, out / "eval-ratings") if args.eval_ratings else None
    )
    eval_pairs = _read_all(args, args.eval_pairs, out / "eval-pairs") if args.eval_pairs else None
    report = train_multiobjective(
        ratings,
        pairs,
        config,
        out,
        eval_rating_records=eval_ratings,
        eval_pair_records=eval_pairs,
        resume=args.resume,
        log=lambda line: print(line, file=sys.stderr),
    )
    summary = {"model_dir": str(out), "attributes": report.model.attributes}
    for name, stage in report.stages.items():
        summary[name] = {
            "steps": stage.result.global_step,
            "train": stage.metrics,
            "eval": stage.eval_metrics,
        }
    if report.calibration is not None:
        summary["calibration"] = calibration_summary(report.calibration)
    print(json.dumps(summary))
    return 0


def run_score(args: argparse.Namespace) -> int:
    from prefkit.data.write import write_records
    from prefkit.errors import UserInputError

    if args.batch_size < 1 or args.chunk_size < 1:
        raise UserInputError("--batch-size and --chunk-size must be >= 1")
    check_shard_output(args)
    if args.shard_format not in (None, "jsonl") and not args.records:
        raise UserInputError(
            f"--shard-format {args.shard_format}: reward rows are JSONL; it needs --records"
        )
    scoring = (
        {"reward_model": str(args.model_dir), "normalized": bool(args.normalize)}
        if args.records
        else None
    )
    from prefkit.cli.common import ray_options_from_args

    options = ray_options_from_args(args, args.engine == "ray", "--engine ray")
    if args.out_shards is not None:
        return _score_to_shards(args, scoring, options)
    if options is not None:
        chunks, stats = _scored_chunks_on_ray(args, scoring, options)
    else:
        chunks, stats = _scored_chunks_locally(args, scoring)
    # The first chunk before the output is opened: an error before any row is scored (a
    # model that does not load, a cluster without the GPUs asked for) leaves no file behind.
    chunks = iter(chunks)
    first = next(chunks, None)
    chunks = itertools.chain([] if first is None else [first], chunks)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    counter = {"written": 0}

    def counted(chunks):
        for chunk in chunks:
            yield chunk
            counter["written"] += len(chunk.rows)

    if args.records:
        write_records((record for chunk in counted(chunks) for record in chunk.records), out_path)
    else:
        with out_path.open("w") as handle:
            for chunk in counted(chunks):
                for row in chunk.rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{args.data}: {stats().summary()}", file=sys.stderr)
    print(f"wrote {counter['written']} scored records to {out_path}", file=sys.stderr)
    return 0


def _score_to_shards(args: argparse.Namespace, scoring: dict | None, options) -> int:
    """``--out-shards``: each input shard's scored rows (or records) in its own file."""
    from prefkit.engines.ray_score import write_scored_shards
    from prefkit.engines.shard_output import shard_output_paths
    from prefkit.progress import ProgressCounter

    run = _ray_scoring(args, scoring, options)
    paths = shard_output_paths(run.shards, args.out_shards, args.shard_format or "jsonl")

    def counted():
        with ProgressCounter("scoring (ray)", "rec", enabled=args.progress) as counter:
            for chunk in run.chunks():
                counter(len(chunk.result.rows))
                yield chunk

    written = write_scored_shards(counted(), paths, records=args.records)
    print(f"{args.data}: {run.stats.summary()}", file=sys.stderr)
    print(
        f"wrote {written} scored records to {len(paths)} shard file(s) in {args.out_shards}",
        file=sys.stderr,
    )
    return 0


def _scored_chunks_locally(args: argparse.Namespace, scoring: dict | None):
    """Chunks of --chunk-size records scored in this process, and the read's stats."""
    from prefkit.rm.model import RewardModel
    from prefkit.rm.scoring import score_chunk

    model = RewardModel.load(args.model_dir, cache_dir=args.cache_dir)
    reader = open_reader(args, args.data, args.out)

    def chunks():
        chunk: list = []
        records = progress(with_layout_notice(reader), description="scoring", enabled=args.progress)
        for record in records:
            chunk.append(record)
            if len(chunk) >= args.chunk_size:
                yield score_chunk(
                    model,
                    chunk,
                    batch_size=args.batch_size,
                    normalize=args.normalize,
                    scoring=scoring,
                )
                chunk = []
        if chunk:
            yield score_chunk(
                model, chunk, batch_size=args.batch_size, normalize=args.normalize, scoring=scoring
            )

    return chunks(), lambda: reader.stats


def _ray_scoring(args: argparse.Namespace, scoring: dict | None, options):
    """The :class:`~prefkit.engines.ray_score.RayScoring` run of the command's options
    (the layout and the shards announced)."""
    from prefkit.data.errors import rejects_path_for
    from prefkit.engines.ray_score import RayScoring

    scoring_run = RayScoring(
        args.data,
        args.model_dir,
        reader_options=ray_reader_options(args),
        rejects_path=rejects_path_for(output_base(args)) if args.on_error == "skip" else None,
        options=options,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        normalize=args.normalize,
        scoring=scoring,
        cache_dir=args.cache_dir,
    )
    announce_layout(scoring_run)
    print(f"ray: {len(scoring_run.shards)} shard(s)", file=sys.stderr)
    return scoring_run


def _scored_chunks_on_ray(args: argparse.Namespace, scoring: dict | None, options):
    """The same chunks scored on Ray (:mod:`prefkit.engines.ray_score`), in input order."""
    from prefkit.progress import ProgressCounter

    scoring_run = _ray_scoring(args, scoring, options)

    def chunks():
        with ProgressCounter("scoring (ray)", "rec", enabled=args.progress) as counter:
            for chunk in scoring_run:
                counter(len(chunk.rows))
                yield chunk

    return chunks(), lambda: scoring_run.stats
