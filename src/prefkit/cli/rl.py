"""``prefkit rl PROMPTS --model PATH --reward SPEC --algo NAME --out DIR``: wiring only (see :mod:`prefkit.rl.trainer`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prefkit.cli import COMMAND_HELP
from prefkit.config import add_dataclass_arguments, dataclass_from_args

EXAMPLES = """\
examples:
  prefkit rl prompts.jsonl --model runs/sft/model --reward runs/rm --algo rloo --out runs/rloo
  prefkit rl prompts.jsonl --model runs/sft/model --reward python:my_rewards:length_ok \\
      --reward runs/rm --reward-weights 0.5,1 --algo grpo --num-generations 8 --out runs/grpo
  prefkit rl prompts.jsonl --model runs/sft/model --reward http://127.0.0.1:8000 \\
      --algo online_dpo --beta 0.1 --lora --out runs/odpo
  # iterative DPO: 3 rounds of 8 samples per prompt -> best-worst pairs -> 1 epoch of DPO
  prefkit rl prompts.jsonl --model runs/sft/model --reward runs/rm --algo iterative_dpo \\
      --rounds 3 --num-generations 8 --beta 0.1 --batch-size 16 --out runs/idpo

Each step takes --batch-size prompts, samples --num-generations completions of each from
the policy, scores them with the reward, and updates the policy (--num-iterations times per
batch of samples). Output: OUT/metrics.jsonl (one line per step: loss, reward and reward_std,
reward/<function>, zero_spread_groups, kl, entropy, completion_length(_min/_max),
eos_fraction, truncated_fraction, clip_fraction, generation_s, reward_s), OUT/checkpoints/
and OUT/model/ (a Hugging Face model folder). Running the same command again after an
interruption resumes from the last checkpoint. For several processes: accelerate launch
--config_file docs/accelerate_cpu.yaml -m prefkit rl ...

--algo iterative_dpo works in rounds instead (RLHFlow's online-RLHF). Round r samples
--num-generations completions per prompt from the policy the round starts from (round 1:
--model, then the previous round's model), scores them with the reward, pairs each prompt's
best with its worst sample (ties and unrewarded prompts skipped) and trains offline DPO on
the pairs (--dpo-loss, --beta, --epochs or --max-steps per round, --lr, --lora; --batch-size
counts pairs). The reference of a round is the policy it starts from (--round-reference
original: the original --model; --ref PATH: a model of your choice). Output per round:
OUT/round-r/candidates.jsonl, rewards.jsonl, pairs.jsonl, metrics.jsonl (DPO steps),
round.json (reward mean and std of the candidates, pairs kept and skipped) and model/;
OUT/rounds.jsonl has one line per finished round. Running the same command again continues
with the first unfinished round (and its unfinished stages); a finished run says so.
"""

# Loop settings that online RL does not use, or sets itself (--progress has its own flag).
_TRAIN_SKIP = (
    "progress",
    "group_by_length",
    "eval_every",
    "early_stopping_patience",
    "early_stopping_metric",
    "early_stopping_mode",
)


def register(commands: argparse._SubParsersAction) -> None:
    from prefkit.cli.common import add_progress_argument, add_read_arguments
    from prefkit.rl.config import RLConfig
    from prefkit.train.loop import TrainConfig

    parser = commands.add_parser(
        "rl",
        help=COMMAND_HELP["rl"],
        description="Online alignment: the policy in --model samples completions of the prompts "
        "in PROMPTS, the reward (--reward) scores them, and the policy is updated with the "
        "algorithm of --algo.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "prompts",
        metavar="PROMPTS",
        help="feedback data (the prompt of each record) or a prompt list (--format prompts: "
        'one JSON string or {"prompt": ...} per line; detected for .jsonl files)',
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="policy: a local Hugging Face causal LM folder",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--reward",
        required=True,
        action="append",
        metavar="SPEC",
        help="a reward (repeatable; the rewards are summed with --reward-weights): a prefkit "
        "reward-model folder or a Hugging Face sequence-classification folder; "
        "python:package.module:function, a function f(prompts, completions, completion_ids, "
        "**columns) -> list of float or None (None: no reward, the sample is left out of its "
        "group); or an http:// URL of a reward server",
    )
    parser.add_argument(
        "--reward-weights",
        metavar="W,W,..",
        default=None,
        help="one weight per --reward, comma-separated (default: 1 each)",
    )
    parser.add_argument(
        "--uncertainty-penalty",
        type=float,
        default=0.0,
        metavar="L",
        help="with an ensemble reward model (rm train --ensemble K): optimise the members' "
        "mean - L * std (default: 0)",
    )
    parser.add_argument(
        "--reward-timeout-s",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds to wait for a reward server (default: 30)",
    )
    parser.add_argument(
        "--reward-retries",
        type=int,
        default=3,
        metavar="N",
        help="retries of a reward-server request that timed out or answered 5xx (default: 3)",
    )
    parser.add_argument(
        "--reward-api-key",
        default=None,
        metavar="KEY",
        help="bearer key of the reward server (default: $PREFKIT_API_KEY, else none)",
    )
    parser.add_argument(
        "--ref",
        metavar="PATH",
        default=None,
        help="reference model (default: the policy before training; with --lora, the "
        "adapter-disabled policy; iterative_dpo: the policy each round starts from); not "
        "loaded at --beta 0",
    )
    parser.add_argument(
        "--tokenizer", metavar="PATH", default=None, help="tokenizer folder (default: --model)"
    )
    add_progress_argument(parser)
    add_read_arguments(parser)
    add_dataclass_arguments(parser, RLConfig, title="online RL options")
    add_dataclass_arguments(
        parser,
        TrainConfig,
        skip=_TRAIN_SKIP,
        title="training options (batch-size counts prompts; epochs are passes over the prompts)",
        defaults={"batch_size": 8},
    )
    parser.set_defaults(handler=run)


def _weights(text: str | None, count: int) -> list[float] | None:
    from prefkit.errors import UserInputError

    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserInputError(
            f"--reward-weights {text!r}: expected comma-separated numbers"
        ) from None
    if len(weights) != count:
        raise UserInputError(
            f"--reward-weights has {len(weights)} weights for {count} --reward specs; give one each"
        )
    return weights


def run(args: argparse.Namespace) -> int:
    from prefkit.cli.generate import _load_tokenizer, _read_prompts
    from prefkit.errors import UserInputError
    from prefkit.rl.config import RLConfig
    from prefkit.train.loop import TrainConfig

    config = dataclass_from_args(RLConfig, args)
    train_config = dataclass_from_args(TrainConfig, args, progress=args.progress)
    weights = _weights(args.reward_weights, len(args.reward))
    if not Path(args.model).is_dir():
        raise UserInputError(f"--model {args.model}: not a model folder")
    prompts, prompt_stats = _read_prompts(args)
    print(f"prompts: {prompt_stats.summary()}", file=sys.stderr)
    tokenizer = _load_tokenizer(args.tokenizer or args.model)

    from prefkit.align.trainer import load_causal_lm
    from prefkit.rl.trainer import RewardOptions, rl

    reward_options = RewardOptions(
        weights=weights,
        uncertainty_penalty=args.uncertainty_penalty,
        timeout_s=args.reward_timeout_s,
        retries=args.reward_retries,
        api_key=args.reward_api_key,
    )
    if config.algo == "iterative_dpo":
        return _run_iterative(args, prompts, tokenizer, config, train_config, reward_options)
    result = rl(
        prompts,
        load_causal_lm(args.model),
        tokenizer,
        list(args.reward),
        args.out,
        config,
        train_config,
        reward_options=reward_options,
        ref_model=load_causal_lm(args.ref) if args.ref else None,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports for all processes
    print(result.summary(), file=sys.stderr)
    print(f"metrics: {result.train.metrics_path}", file=sys.stderr)
    if result.model_dir is not None:
        print(f"model: {result.model_dir}", file=sys.stderr)
    return 0


def _run_iterative(args, prompts, tokenizer, config, train_config, reward_options) -> int:
    from prefkit.rl.iterative import iterative_dpo

    if args.ref and not Path(args.ref).is_dir():
        from prefkit.errors import UserInputError

        raise UserInputError(f"--ref {args.ref}: not a model folder")
    result = iterative_dpo(
        prompts,
        args.model,
        tokenizer,
        list(args.reward),
        args.out,
        config,
        train_config,
        reward_options=reward_options,
        ref_model=args.ref,
        log=lambda line: print(line, file=sys.stderr),
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(result.summary(), file=sys.stderr)
    print(f"rounds: {Path(args.out) / 'rounds.jsonl'}", file=sys.stderr)
    print(f"model: {result.model_dir}", file=sys.stderr)
    return 0
