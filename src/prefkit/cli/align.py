"""``prefkit align DATA --model PATH --out DIR --loss NAME [--ref PATH] ...``

Reads feedback data, aligns a Hugging Face causal LM with a preference loss and
writes ``OUT/metrics.jsonl``, ``OUT/checkpoints/`` and ``OUT/model/``
(safetensors + tokenizer). With an evaluation set (``--eval-data PATH`` or
``--eval-fraction F``) it also writes eval lines to metrics.jsonl and can stop
early. Running the same command again after an interruption resumes from the
last checkpoint. For several processes, start it
with ``accelerate launch --config_file docs/accelerate_cpu.yaml -m prefkit align ...``
(or ``torchrun``); the training loop reads WORLD_SIZE/RANK from the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from prefkit.cli import COMMAND_HELP
from prefkit.config import add_dataclass_arguments, dataclass_from_args, parse_typed_mapping

# Loop settings with a flag of their own (--progress/--no-progress, also spelled --quiet).
_TRAIN_SKIP = ("progress",)


def register(commands: argparse._SubParsersAction) -> None:
    from prefkit.align.trainer import AlignConfig
    from prefkit.cli.common import add_progress_argument, add_read_arguments
    from prefkit.losses.preference import LOSSES
    from prefkit.train.loop import TrainConfig

    parser = commands.add_parser(
        "align",
        help=COMMAND_HELP["align"],
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("data", metavar="DATA", help="feedback data (pairs, thumbs or rankings)")
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="policy to train: a local Hugging Face model folder (safetensors)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--ref",
        metavar="PATH",
        default=None,
        help="reference model (default: the policy before training; with --lora, "
        "the adapter-disabled policy)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        default=None,
        help="tokenizer folder (default: the --model folder)",
    )
    parser.add_argument(
        "--loss",
        default="sigmoid",
        choices=sorted(LOSSES),
        help="loss name (sigmoid is DPO; kto and bco train on thumbs, pairs being split "
        "into a desirable and an undesirable example; default: sigmoid)",
    )
    parser.add_argument(
        "--eval-data",
        metavar="PATH",
        default=None,
        help="held-out feedback data, read with the same layout options as DATA; "
        "evaluated at the end of each epoch (or --eval-every N steps), its "
        "loss, rewards, margin and reward accuracy go to metrics.jsonl as "
        "lines with split 'eval' (see also --eval-fraction)",
    )
    add_progress_argument(parser)
    add_read_arguments(parser)
    parser.add_argument(
        "--loss-args",
        metavar="K=V,..",
        default="",
        help="hyperparameters of the loss, e.g. beta=0.1, or beta=2,gamma=0.5 for simpo, or "
        "length_normalized=true for ipo; each value is read as its field's type (bool, int, "
        "float, text)",
    )
    add_dataclass_arguments(
        parser, AlignConfig, skip=("loss", "loss_args"), title="alignment options"
    )
    add_dataclass_arguments(parser, TrainConfig, skip=_TRAIN_SKIP, title="training options")
    parser.set_defaults(handler=run)


def loss_args_from_text(loss: str, text: str) -> dict[str, Any]:
    """``--loss-args`` of ``loss``, each value converted by its field in the loss's config."""
    from prefkit.losses.preference import LOSSES

    return parse_typed_mapping(LOSSES[loss].config_type, text, "--loss-args")


def run(args: argparse.Namespace) -> int:
    from prefkit.align.trainer import (
        AlignConfig,
        align,
        check_evaluation_settings,
        load_causal_lm,
    )
    from prefkit.cli.common import open_reader, with_layout_notice
    from prefkit.errors import UserInputError
    from prefkit.train.loop import TrainConfig

    try:
        config = dataclass_from_args(
            AlignConfig,
            args,
            loss=args.loss,
            loss_args=loss_args_from_text(args.loss, args.loss_args),
        )
        train_config = dataclass_from_args(TrainConfig, args, progress=args.progress)
        check_evaluation_settings(
            config, train_config, eval_records_given=args.eval_data is not None
        )
    except argparse.ArgumentTypeError as error:  # a malformed --loss-args
        raise UserInputError(str(error)) from error

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    reader = open_reader(args, args.data, rejects_for=args.out)
    records = list(with_layout_notice(reader))
    eval_records = None
    if args.eval_data is not None:
        eval_reader = open_reader(args, args.eval_data, rejects_for=f"{args.out}.eval")
        eval_records = list(with_layout_notice(eval_reader))
    model = load_causal_lm(args.model)
    ref_model = load_causal_lm(args.ref) if args.ref else None
    result = align(
        records,
        model,
        tokenizer,
        args.out,
        config,
        train_config,
        ref_model=ref_model,
        eval_records=eval_records,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for all processes
    print(result.data.summary(), file=sys.stderr)
    if result.eval_data is not None:
        print("evaluation: " + result.eval_data.summary(), file=sys.stderr)
    if result.ref_cache_hit is not None:
        print(
            "reference log-probs: " + ("read from cache" if result.ref_cache_hit else "computed"),
            file=sys.stderr,
        )
    loss = result.train.last_train_loss
    print(
        f"trained {result.train.global_step} steps"
        + (f", last loss {loss:.4f}" if loss is not None else "")
        + f"; metrics: {result.train.metrics_path}",
        file=sys.stderr,
    )
    if result.train.last_eval:
        shown = ", ".join(f"{name} {value:.4g}" for name, value in result.train.last_eval.items())
        print(f"last evaluation: {shown}", file=sys.stderr)
    if result.train.stopped_early:
        print(
            f"stopped early; kept the weights of step {result.train.best_step} "
            f"({train_config.early_stopping_metric} {result.train.best_metric:.4g})",
            file=sys.stderr,
        )
    if result.model_dir is not None:
        print(f"model saved to {result.model_dir}")
    return 0
