"""``prefkit align DATA --model PATH --out DIR --loss NAME [--ref PATH] ...``

Reads feedback data, aligns a Hugging Face causal LM with a preference loss and
writes ``OUT/metrics.jsonl``, ``OUT/checkpoints/`` and ``OUT/model/``
(safetensors + tokenizer). Running the same command again after an
interruption resumes from the last checkpoint. For several processes, start it
with ``accelerate launch --config_file docs/accelerate_cpu.yaml -m prefkit align ...``
(or ``torchrun``); the training loop reads WORLD_SIZE/RANK from the environment.
"""

from __future__ import annotations

import argparse
import os
import sys

from prefkit.config import add_dataclass_arguments, dataclass_from_args

# Loop settings that make no sense for this command (it has no evaluation set yet).
_TRAIN_SKIP = (
    "eval_every",
    "early_stopping_patience",
    "early_stopping_metric",
    "early_stopping_mode",
    "progress",
)


def register(commands: argparse._SubParsersAction) -> None:
    from prefkit.align.trainer import AlignConfig
    from prefkit.cli.common import add_read_arguments
    from prefkit.losses.preference import LOSSES
    from prefkit.train.loop import TrainConfig

    parser = commands.add_parser(
        "align",
        help="align a causal language model with a preference loss (DPO, SimPO, KTO, ...)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("data", metavar="DATA", help="feedback data (pairs, thumbs or rankings)")
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="policy to train: a local Hugging Face model folder (safetensors)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--ref", metavar="PATH", default=None,
                        help="reference model (default: the policy before training; with --lora, "
                             "the adapter-disabled policy)")
    parser.add_argument("--tokenizer", metavar="PATH", default=None,
                        help="tokenizer folder (default: the --model folder)")
    parser.add_argument("--loss", default="sigmoid", choices=sorted(LOSSES),
                        help="loss name (sigmoid is DPO; default: sigmoid)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_read_arguments(parser)
    add_dataclass_arguments(parser, AlignConfig, skip=("loss",), title="alignment options")
    add_dataclass_arguments(parser, TrainConfig, skip=_TRAIN_SKIP, title="training options")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from prefkit.align.trainer import AlignConfig, align, load_causal_lm
    from prefkit.cli import UserError
    from prefkit.cli.common import open_reader, with_layout_notice
    from prefkit.train.loop import TrainConfig

    try:
        config = dataclass_from_args(AlignConfig, args, loss=args.loss)
        train_config = dataclass_from_args(TrainConfig, args, progress=not args.quiet)
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from error

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    reader = open_reader(args, args.data, rejects_for=args.out)
    records = list(with_layout_notice(reader))
    model = load_causal_lm(args.model)
    ref_model = load_causal_lm(args.ref) if args.ref else None
    try:
        result = align(records, model, tokenizer, args.out, config, train_config, ref_model=ref_model)
    except ValueError as error:
        if "training examples" in str(error) or "record " in str(error):
            raise UserError(str(error)) from error
        raise
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for all processes
    print(result.data.summary(), file=sys.stderr)
    if result.ref_cache_hit is not None:
        print("reference log-probs: " + ("read from cache" if result.ref_cache_hit else "computed"),
              file=sys.stderr)
    loss = result.train.last_train_loss
    print(f"trained {result.train.global_step} steps"
          + (f", last loss {loss:.4f}" if loss is not None else "")
          + f"; metrics: {result.train.metrics_path}", file=sys.stderr)
    if result.model_dir is not None:
        print(f"model saved to {result.model_dir}")
    return 0
