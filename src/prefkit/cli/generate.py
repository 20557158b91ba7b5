"""``prefkit generate PROMPTS --model PATH --out FILE``: wiring only (see :mod:`prefkit.generate`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefkit.cli import COMMAND_HELP
from prefkit.config import add_dataclass_arguments, dataclass_from_args

EXAMPLES = """\
examples:
  prefkit generate prompts.jsonl --model runs/sft/model --out candidates.jsonl --num-samples 8
  prefkit rm score runs/rm candidates.jsonl --out rewards.jsonl
  prefkit data pairs candidates.jsonl --scores rewards.jsonl --out pairs.jsonl --strategy best-worst
  prefkit generate prompts.jsonl --model runs/sft/model --out best.jsonl --best-of 8 --reward runs/rm
  prefkit generate prompts/ --model runs/sft/model --out candidates.jsonl --executor ray --ray-workers 2
Output: one candidate set per distinct prompt (a ranking record with one null score per
response, or a rating record for a single response), in input order. Rerunning the same
command after an interruption keeps what was written and generates the rest.
--executor ray runs the hf engine on a pool of Ray actors (a local Ray runtime, or a
cluster with --ray-address), each loading the policy once; the output is the local
run's, record for record and in input order (every response has its own seed).
"""


def register(commands: argparse._SubParsersAction) -> None:
    from prefkit.cli.common import add_ray_arguments, add_read_arguments
    from prefkit.generate.config import SamplingConfig

    parser = commands.add_parser(
        "generate",
        help=COMMAND_HELP["generate"],
        description="Sample N responses per prompt of PROMPTS from the model in --model and write "
        "one candidate set per prompt to --out (JSONL), ready for 'prefkit rm score' and "
        "'prefkit data pairs'.",
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
        "--model", required=True, metavar="PATH", help="a local Hugging Face causal LM folder"
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="JSONL output")
    parser.add_argument(
        "--tokenizer", metavar="PATH", default=None, help="tokenizer folder (default: --model)"
    )
    parser.add_argument(
        "--engine",
        choices=("hf", "vllm"),
        default="hf",
        help="hf: batched transformers generate; vllm: vLLM (needs the 'vllm' extra and a GPU; "
        "falls back to hf, saying why, where it cannot run) (default: hf)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, metavar="N", help="sequences per batch (default: 16)"
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        metavar="N",
        help="prompts generated and written at a time; a resumed run loses at most one chunk "
        "(default: 256)",
    )
    parser.add_argument(
        "--max-prompt-length",
        type=int,
        default=None,
        metavar="N",
        help="most prompt tokens; longer prompts are cut from the left and counted "
        "(default: the model's context minus --max-new-tokens)",
    )
    parser.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help="send conversations as 'role: content' text instead of through the chat template",
    )
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STRING",
        help="a string that ends a response (repeatable); the text is cut before it",
    )
    parser.add_argument(
        "--reward",
        metavar="RM",
        default=None,
        help="a reward-model folder (prefkit rm train): score every response",
    )
    parser.add_argument(
        "--best-of",
        type=int,
        default=None,
        metavar="N",
        help="with --reward: sample N responses and keep only the best (rejection sampling)",
    )
    parser.add_argument(
        "--reward-batch-size",
        type=int,
        default=64,
        metavar="N",
        help="responses per reward-model pass (default: 64)",
    )
    parser.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="embedding cache of the reward model"
    )
    parser.add_argument(
        "--device", default="cpu", metavar="NAME", help="torch device of the model (default: cpu)"
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )
    add_dataclass_arguments(parser, SamplingConfig, skip=("stop",), title="sampling")
    add_read_arguments(parser)
    executor = parser.add_argument_group("executor")
    executor.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: generate in this process; ray: the hf engine on Ray actors, --chunk-size "
        "prompts per call, the same output (needs pip install 'prefkit[ray]'; default: local)",
    )
    add_ray_arguments(executor, actors="generating actors")
    parser.set_defaults(handler=run)


def _read_prompts(args: argparse.Namespace):
    from prefkit.cli.common import open_reader, with_layout_notice
    from prefkit.generate.prompts import is_prompt_list, read_prompt_list, unique_prompts

    if args.format == "prompts" or (
        args.format is None and not args.map and is_prompt_list(args.prompts)
    ):
        print("reading a prompt list", file=sys.stderr)
        items = read_prompt_list(args.prompts)
        return unique_prompts(items, source=args.prompts, on_error=args.on_error)
    reader = open_reader(args, args.prompts, args.out)
    records = ((record.id, record.prompt, record.category) for record in with_layout_notice(reader))
    prompts, stats = unique_prompts(records, source=args.prompts, on_error=args.on_error)
    print(f"{args.prompts}: {reader.stats.summary()}", file=sys.stderr)
    return prompts, stats


def _load_tokenizer(path: str):
    from prefkit.errors import UserInputError

    folder = Path(path)
    if folder.is_dir() and not any(
        (folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise UserInputError(
            f"{folder}: no tokenizer (tokenizer.json or tokenizer_config.json); save the "
            "tokenizer into the model folder or pass --tokenizer PATH"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def run(args: argparse.Namespace) -> int:
    from prefkit.cli.common import ray_options_from_args
    from prefkit.errors import UserInputError
    from prefkit.generate.config import SamplingConfig
    from prefkit.generate.engines import HFEngine, VLLMEngine, vllm_unavailable_reason
    from prefkit.generate.run import generate_candidates, weights_digest

    if not args.out.endswith(".jsonl"):
        raise UserInputError(
            f"--out {args.out}: generate writes JSONL; give a name ending in .jsonl"
        )
    if args.best_of is not None:
        if args.reward is None:
            raise UserInputError(
                "--best-of N needs --reward RM to pick the best of the N responses"
            )
        if args.num_samples not in (args.best_of, SamplingConfig.num_samples):
            raise UserInputError(
                f"--best-of {args.best_of} and --num-samples {args.num_samples} disagree; "
                "give one of them"
            )
        args.num_samples = args.best_of
    for name in ("batch_size", "chunk_size", "reward_batch_size"):
        if getattr(args, name) < 1:
            raise UserInputError(
                f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            )
    sampling = dataclass_from_args(SamplingConfig, args)
    if not Path(args.model).is_dir():
        raise UserInputError(f"--model {args.model}: not a model folder")
    ray_options = ray_options_from_args(args, args.executor == "ray", "--executor ray")
    if ray_options is not None:
        if args.engine != "hf":
            raise UserInputError(
                "--executor ray runs the hf engine on its actors; --engine vllm runs in this "
                "process: give one of the two"
            )
        if args.device != "cpu":
            raise UserInputError(
                f"--device {args.device} is for the local executor; with --executor ray the "
                "actors run on CPUs, or on the GPUs --ray-gpus-per-worker reserves for them"
            )

    prompts, prompt_stats = _read_prompts(args)
    print(f"prompts: {prompt_stats.summary()}", file=sys.stderr)
    tokenizer = _load_tokenizer(args.tokenizer or args.model)

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=False)
    context = getattr(config, "max_position_embeddings", None) or getattr(
        config, "n_positions", None
    )
    if context is not None and sampling.max_new_tokens >= context:
        raise UserInputError(
            f"--max-new-tokens {sampling.max_new_tokens} leaves no room for a prompt in the "
            f"model's context of {context} tokens"
        )
    max_prompt_length = args.max_prompt_length
    if max_prompt_length is None:
        max_prompt_length = (context - sampling.max_new_tokens) if context else 1 << 30
    elif max_prompt_length < 1:
        raise UserInputError(f"--max-prompt-length must be >= 1, got {max_prompt_length}")
    elif context is not None and max_prompt_length + sampling.max_new_tokens > context:
        raise UserInputError(
            f"--max-prompt-length {max_prompt_length} + --max-new-tokens "
            f"{sampling.max_new_tokens} exceed the model's context of {context} tokens"
        )

    engine_name = args.engine
    if engine_name == "vllm" and (reason := vllm_unavailable_reason()) is not None:
        print(f"engine: using hf instead of vllm: {reason}", file=sys.stderr)
        engine_name = "hf"
    engine = None
    if ray_options is not None:
        pass  # each actor loads the policy
    elif engine_name == "vllm":
        engine = VLLMEngine(args.model, tokenizer, max_model_len=context)
    else:
        from prefkit.align.trainer import load_causal_lm

        engine = HFEngine(
            load_causal_lm(args.model).to(args.device), tokenizer, batch_size=args.batch_size
        )

    scorer = None
    reward_info = None
    if args.reward is not None and ray_options is not None:
        from prefkit.rm.spec import RewardModelSpec

        RewardModelSpec.read(args.reward)  # a wrong folder is an error here, not in each actor
        reward_info = {"path": args.reward, "weights_sha256": weights_digest(args.reward)}
    elif args.reward is not None:
        from prefkit.rm.model import RewardModel

        reward_model = RewardModel.load(args.reward, cache_dir=args.cache_dir)

        def scorer(prompt_texts: list[str], responses: list[str]):
            return reward_model.score(prompt_texts, responses, batch_size=args.reward_batch_size)

        reward_info = {"path": args.reward, "weights_sha256": weights_digest(args.reward)}

    generation = {
        "model": args.model,
        "weights_sha256": weights_digest(args.model),
        "engine": engine_name,
        "sampling": sampling.to_dict(),
        "max_prompt_length": max_prompt_length,
        "chat_template": args.chat_template,
    }
    if reward_info is not None:
        generation["reward_model"] = reward_info
        generation["best_of"] = args.best_of is not None
    executor = None
    if ray_options is not None:
        from prefkit.engines.ray_generate import RayGeneration

        executor = RayGeneration(
            args.model,
            args.tokenizer or args.model,
            sampling=sampling,
            generation=generation,
            max_prompt_length=max_prompt_length,
            options=ray_options,
            batch_size=args.batch_size,
            chat_template=args.chat_template,
            reward=args.reward,
            reward_batch_size=args.reward_batch_size,
            cache_dir=args.cache_dir,
            best_of=args.best_of is not None,
        )
    summary = generate_candidates(
        prompts,
        engine,
        tokenizer,
        sampling,
        args.out,
        generation=generation,
        max_prompt_length=max_prompt_length,
        chat_template=args.chat_template,
        chunk_size=args.chunk_size,
        scorer=scorer,
        best_of=args.best_of is not None,
        show_progress=args.progress,
        executor=executor,
    )
    if executor is not None and executor.workers is not None:
        print(f"ray: {executor.workers} generating actor(s)", file=sys.stderr)
    print(f"generate: {summary.summary()}", file=sys.stderr)
    print(f"wrote {summary.generated_prompts} records to {args.out}", file=sys.stderr)
    print(json.dumps({"out": args.out, "prompts_read": prompt_stats.records, **summary.to_dict()}))
    return 0
