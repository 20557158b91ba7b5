"""``prefkit rm train`` and ``prefkit rm score``: wiring only (see :mod:`prefkit.rm`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from prefkit.cli.common import (
    add_progress_argument,
    add_read_arguments,
    open_reader,
    progress,
    with_layout_notice,
)
from prefkit.config import add_dataclass_arguments, dataclass_from_args
from prefkit.rm.multiobjective import MultiObjectiveConfig
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
"""

SCORE_EXAMPLES = """\
examples:
  prefkit rm score runs/rm pairs.jsonl --out scores.jsonl
Output: one JSON line per input record, in input order, with its id and
  pairs:    reward_a, reward_b, margin (= reward_a - reward_b)
  rankings: rewards (one per response)
  others:   reward
plus per-attribute values ("attributes") for a model trained on ratings.
"""


def register(commands: argparse._SubParsersAction) -> None:
    rm = commands.add_parser(
        "rm",
        help="train and apply reward models",
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
    add_dataclass_arguments(train, RMTrainConfig, skip=("train",), title="reward model options")
    add_dataclass_arguments(
        train, TrainConfig, title="training options", defaults=RM_TRAIN_DEFAULTS
    )
    train.add_argument(
        "--quiet", dest="progress", action="store_false", help="the same as --no-progress"
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
    add_dataclass_arguments(multi, MultiObjectiveConfig, title="multi-objective options")
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
    score.add_argument("data", metavar="DATA", help="data to score")
    score.add_argument("--out", required=True, metavar="FILE", help="JSONL output")
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
    add_progress_argument(score)
    add_read_arguments(score)
    score.set_defaults(handler=run_score)


def _read_all(args: argparse.Namespace, path: str, rejects_for: str) -> list:
    reader = open_reader(args, path, rejects_for)
    records = list(with_layout_notice(reader))
    print(f"{path}: {reader.stats.summary()}", file=sys.stderr)
    return records


def run_train(args: argparse.Namespace) -> int:
    from prefkit.cli import UserError
    from prefkit.rm.train import train_reward_model

    try:
        given = {
            item.name: getattr(args, item.name)
            for item in dataclasses.fields(TrainConfig)
            if getattr(args, item.name) is not None
        }
        config = dataclass_from_args(
            RMTrainConfig, args, train=default_train_config(args.mode, **given)
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    out = Path(args.out)
    records = _read_all(args, args.data, out / "train")
    eval_records = _read_all(args, args.eval, out / "eval") if args.eval else None
    report = train_reward_model(
        records,
        config,
        out,
        eval_records=eval_records,
        resume=args.resume,
        log=lambda line: print(line, file=sys.stderr),
        source=args.data,
    )
    stage = report.stages["train"]
    summary = {
        "model_dir": str(out),
        "loss": report.loss,
        "steps": stage.result.global_step,
        "train": stage.metrics,
        "eval": stage.eval_metrics,
    }
    print(json.dumps(summary))
    return 0


def run_train_multiobjective(args: argparse.Namespace) -> int:
    from prefkit.cli import UserError
    from prefkit.rm.multiobjective import check_evaluation_settings, train_multiobjective

    try:
        config = dataclass_from_args(MultiObjectiveConfig, args)
        check_evaluation_settings(
            config,
            eval_ratings_given=args.eval_ratings is not None,
            eval_pairs_given=args.eval_pairs is not None,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
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
    print(json.dumps(summary))
    return 0


def run_score(args: argparse.Namespace) -> int:
    from prefkit.cli import UserError
    from prefkit.rm.model import RewardModel
    from prefkit.rm.scoring import score_records

    if args.batch_size < 1 or args.chunk_size < 1:
        raise UserError("--batch-size and --chunk-size must be >= 1")
    model = RewardModel.load(args.model_dir, cache_dir=args.cache_dir)
    reader = open_reader(args, args.data, args.out)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0

    def flush(chunk: list, handle) -> None:
        for row in score_records(
            model, chunk, batch_size=args.batch_size, normalize=args.normalize
        ):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    with out_path.open("w") as handle:
        chunk: list = []
        for record in progress(
            with_layout_notice(reader), description="scoring", enabled=args.progress
        ):
            chunk.append(record)
            if len(chunk) >= args.chunk_size:
                flush(chunk, handle)
                written += len(chunk)
                chunk = []
        if chunk:
            flush(chunk, handle)
            written += len(chunk)
    print(f"{args.data}: {reader.stats.summary()}", file=sys.stderr)
    print(f"wrote {written} scored records to {out_path}", file=sys.stderr)
    return 0
