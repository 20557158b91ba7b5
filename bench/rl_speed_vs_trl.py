"""Online GRPO speed: prefkit's rl against TRL's GRPOTrainer, same model, prompts and reward.

Model: a random-weight Llama (hidden 256, 4 layers, 4 heads, MLP 1024, vocabulary
~270 words: about 4.3M parameters), float32 on CPU, the same initial weights in
every run. Prompts: random words of the synthetic vocabulary, 12 to 40 words
(uniform), ``--steps x 8`` of them, so both tools make exactly one pass. Reward: the
same Python function in both, the share of completion words with an even index (a
function of the decoded text, TRL's reward-function shape). Settings: 8 prompts per
step x ``num_generations`` 4 = 32 completions per step (TRL:
``per_device_train_batch_size`` 32), ``max_new_tokens`` 32 (TRL:
``max_completion_length``), temperature 1, top-k and top-p off, HF ``generate`` with
the KV cache in both (one call per step: prefkit's ``generation_batch_size`` 64, TRL's
generation batch = the step's 32), beta 0.04 with the k3 KL in the loss times the
importance ratio (prefkit's default; TRL's ``use_bias_correction_kl``) against the
initial policy as reference, token-mean aggregation (TRL ``loss_type="dapo"``),
group-scaled advantages, clip 0.2, one iteration per generation batch, AdamW lr 1e-5
constant, gradient norm clipped at 1, no gradient accumulation, one process, the
same torch thread count for both tools, float32 without gradient checkpointing
(TRL's bf16 default is switched off), dropout off.

Runs, each in its own subprocess (peak RSS is per run); the set is repeated
``--repeats`` times with the runs interleaved, and medians are reported:

- ``prefkit``: :func:`prefkit.rl.trainer.rl` (what ``prefkit rl --algo grpo`` calls),
  in-process, with the reward function passed as a callable; its defaults, so the
  training and reference passes run each prompt once with its 4 samples packed
  after it (``shared_prompt``);
- ``prefkit_no_shared_prompt``: the same with ``--no-shared-prompt`` (one
  ``prompt + completion`` row per sample, as TRL), which shows what that layout saves;
- ``trl``: ``trl.GRPOTrainer`` with the reference loaded from a saved copy of the
  initial policy (TRL builds its reference from the policy's path).

Clock: from the call of ``rl`` (prefkit: prompt tokenization, the reference copy,
the loop's setup) or the construction of ``GRPOTrainer`` (TRL: dataset preparation,
loading the reference; ``setup_seconds``) to the end of the last optimizer step
(prefkit's step event, TRL's ``on_step_end``), so prefkit's final checkpoint write
is left out (TRL runs with ``save_strategy="no"``). The process's CPU time over the
same span is recorded too (``steps_per_cpu_s``): with one torch thread it is less
swayed by other work on a shared machine than the wall clock. New tokens are the completion
tokens sampled (EOS included), counted by each tool for its own samples: the tools
sample with different random streams, so their completions, lengths and losses
differ run to run. Generation share: prefkit's ``generation_s`` of its metrics JSONL
(the whole sampling call, shared prompt prefill included), TRL's time inside
``model.generate`` (wrapped for the run), each over the run's seconds; the reward's
share likewise (prefkit's ``reward_s``; for TRL the reward function's own time).

Equal step-1 loss: measured separately, before the speed runs, on the same samples.
prefkit runs one step that samples for real (8 prompts of 24 words, the reference a
second random model so the KL is not 0) and records its completions; TRL's
``GRPOTrainer`` then runs one step on those completions (its ``rollout_func``) with
the same reference. The step-1 loss of both prefkit layouts (which draw the same
samples) must agree with TRL's to 1e-4, or the script exits with status 1 before any
speed run (``--check-only`` runs only this check). The prompts
of the check have one length because TRL left-pads and this Llama takes positions
from the sequence index, so a shorter prompt would be scored at other positions.

Usage: ``python bench/rl_speed_vs_trl.py [--steps N] [--repeats N] [--threads N]
[--out bench/results/rl_speed_vs_trl.json] [--check-only]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

VOCAB_WORDS = [f"w{index}" for index in range(256)]
PROMPTS_PER_STEP = 8
NUM_GENERATIONS = 4
MAX_NEW_TOKENS = 32
PROMPT_WORDS = (12, 40)  # uniform, inclusive
CHECK_PROMPT_WORDS = 24
LR = 1e-5
BETA = 0.04
LOSS_TOLERANCE = 1e-4  # most |step-1 loss of prefkit - TRL's| accepted on the same samples


def _tokenizer():
    from prefkit.align.synthetic import build_tokenizer

    return build_tokenizer(adds_bos=True, extra_words=VOCAB_WORDS)


def _model(tokenizer, seed):
    from prefkit.align.synthetic import build_model

    return build_model(
        tokenizer, hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, seed=seed
    )


def _prompts(count, seed=0, words=None):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = words if words is not None else rng.randint(*PROMPT_WORDS)
        out.append(" ".join(rng.choice(VOCAB_WORDS) for _ in range(length)) + " :")
    return out


_EVEN = frozenset(VOCAB_WORDS[::2]) | frozenset("aceg")
REWARD_SECONDS = [0.0]


def even_words(prompts, completions, completion_ids=None, **columns):
    """Share of the completion's words with an even index (0 for an empty completion)."""
    started = time.perf_counter()
    rewards = []
    for completion in completions:
        words = completion.split()
        rewards.append(sum(word in _EVEN for word in words) / len(words) if words else 0.0)
    REWARD_SECONDS[0] += time.perf_counter() - started
    return rewards


def _prefkit_configs(steps, shared_prompt=True):
    from prefkit.rl.config import RLConfig
    from prefkit.train.loop import TrainConfig

    config = RLConfig(
        shared_prompt=shared_prompt,
        algo="grpo",
        num_generations=NUM_GENERATIONS,
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=1.0,
        beta=BETA,
        max_steps=steps,
        save_model=False,
    )
    train_config = TrainConfig(
        batch_size=PROMPTS_PER_STEP,
        lr=LR,
        schedule="constant",
        max_grad_norm=1.0,
        progress=False,
        device="cpu",
        keep_checkpoints=1,
    )
    return config, train_config


def _trl_args(out, steps):
    import trl

    return trl.GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_NEW_TOKENS,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=BETA,
        use_bias_correction_kl=True,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_iterations=1,
        disable_dropout=True,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
    )


def run_prefkit(steps, shared_prompt=True):
    import torch

    from prefkit.rl.trainer import rl

    tokenizer = _tokenizer()
    prompts = _prompts(steps * PROMPTS_PER_STEP)
    policy = _model(tokenizer, seed=0)
    config, train_config = _prefkit_configs(steps, shared_prompt)
    step_times, step_cpu_times = [], []

    def on_event(event):
        if event.kind == "step":
            step_times.append(time.perf_counter())
            step_cpu_times.append(time.process_time())

    with tempfile.TemporaryDirectory() as out:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = rl(
            prompts, policy, tokenizer, even_words, out, config, train_config, callbacks=[on_event]
        )
        lines = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    sequences = PROMPTS_PER_STEP * NUM_GENERATIONS
    return {
        "seconds": step_times[-1] - started,
        "cpu_seconds": step_cpu_times[-1] - cpu_started,
        "steps": result.train.global_step,
        "new_tokens": round(sum(line["completion_length"] * sequences for line in lines)),
        "generation_seconds": sum(line["generation_s"] for line in lines),
        "reward_seconds": sum(line["reward_s"] for line in lines),
        "step1_loss": lines[0]["loss"],
        "threads": torch.get_num_threads(),
    }


class _StepClock:
    """A TrainerCallback that records the time at the end of each optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.step_times, self.step_cpu_times = [], []

            def on_step_end(self, args, state, control, **kwargs):
                self.step_times.append(time.perf_counter())
                self.step_cpu_times.append(time.process_time())

        return Clock()


def _trl_trainer(policy, reference_dir, tokenizer, prompts, out, steps, callbacks, **extra):
    import datasets
    import trl

    policy.config._name_or_path = str(reference_dir)  # TRL loads its reference from this path
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trl.GRPOTrainer(
            model=policy,
            reward_funcs=even_words,
            args=_trl_args(out, steps),
            train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
            processing_class=tokenizer,
            callbacks=callbacks,
            **extra,
        )


def run_trl(steps):
    import torch

    tokenizer = _tokenizer()
    prompts = _prompts(steps * PROMPTS_PER_STEP)
    policy = _model(tokenizer, seed=0)
    generation_seconds = [0.0]
    generate = policy.generate

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            generation_seconds[0] += time.perf_counter() - started

    policy.generate = timed_generate  # TRL calls the unwrapped model's generate (one process)
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as out:
        reference_dir = Path(out, "reference")
        policy.save_pretrained(reference_dir)  # the reference is the initial policy
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer = _trl_trainer(
            policy, reference_dir, tokenizer, prompts, Path(out, "run"), steps, [clock]
        )
        setup_seconds = time.perf_counter() - started
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    sequences = PROMPTS_PER_STEP * NUM_GENERATIONS
    return {
        "seconds": clock.step_times[-1] - started,
        "cpu_seconds": clock.step_cpu_times[-1] - cpu_started,
        "setup_seconds": setup_seconds,
        "steps": len(clock.step_times),
        "new_tokens": round(sum(entry["completions/mean_length"] * sequences for entry in logged)),
        "generation_seconds": generation_seconds[0],
        "reward_seconds": REWARD_SECONDS[0],
        "step1_loss": logged[0]["loss"],
        "threads": torch.get_num_threads(),
    }


def check_prefkit(samples_path, shared_prompt=True):
    """One prefkit step on 8 equal-length prompts with a reference that differs; its samples
    are written to ``samples_path`` for :func:`check_trl` (both layouts draw the same ones)."""
    from prefkit.rl.trainer import RLTask, rl

    tokenizer = _tokenizer()
    prompts = _prompts(PROMPTS_PER_STEP, seed=1, words=CHECK_PROMPT_WORDS)
    policy, reference = _model(tokenizer, seed=0), _model(tokenizer, seed=1)
    config, train_config = _prefkit_configs(1, shared_prompt)
    recorded = {}
    generate = RLTask._generate

    def recording(task, positions, prompts_in_step):
        samples, greedy = generate(task, positions, prompts_in_step)
        group = task.config.generations
        for index, prompt in enumerate(prompts_in_step):
            recorded[prompt.prompt] = {
                "prompt_ids": list(prompt.prompt_ids),
                "completions": [
                    list(sample.token_ids)
                    for sample in samples[index * group : (index + 1) * group]
                ],
            }
        return samples, greedy

    RLTask._generate = recording
    with tempfile.TemporaryDirectory() as out:
        rl(prompts, policy, tokenizer, even_words, out, config, train_config, ref_model=reference)
        line = json.loads(Path(out, "metrics.jsonl").read_text().splitlines()[0])
    Path(samples_path).write_text(json.dumps(recorded))
    return {"step1_loss": line["loss"], "kl": line["kl"]}


def check_trl(samples_path):
    """TRL's step-1 loss on the samples prefkit drew in :func:`check_prefkit`."""
    tokenizer = _tokenizer()
    recorded = json.loads(Path(samples_path).read_text())
    prompts = list(recorded)

    def rollout(prompts_in_batch, trainer):
        seen = {}
        prompt_ids, completion_ids = [], []
        for prompt in prompts_in_batch:
            index = seen.get(prompt, 0)
            seen[prompt] = index + 1
            ids = list(tokenizer(prompt)["input_ids"])
            if ids != recorded[prompt]["prompt_ids"]:
                raise SystemExit(f"TRL and prefkit tokenize {prompt!r} differently")
            prompt_ids.append(ids)
            completion_ids.append(recorded[prompt]["completions"][index])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    policy = _model(tokenizer, seed=0)
    with tempfile.TemporaryDirectory() as out:
        reference_dir = Path(out, "reference")
        _model(tokenizer, seed=1).save_pretrained(reference_dir)
        trainer = _trl_trainer(
            policy, reference_dir, tokenizer, prompts, Path(out, "run"), 1, [], rollout_func=rollout
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {"step1_loss": logged["loss"], "kl": logged.get("kl")}


RUNS = {
    "prefkit": lambda args: run_prefkit(args.steps),
    "prefkit_no_shared_prompt": lambda args: run_prefkit(args.steps, shared_prompt=False),
    "trl": lambda args: run_trl(args.steps),
    "check_prefkit": lambda args: check_prefkit(args.samples),
    "check_prefkit_no_shared_prompt": lambda args: check_prefkit(args.samples, False),
    "check_trl": lambda args: check_trl(args.samples),
}


def _one(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result = RUNS[args.one](args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _launch(name, args, samples=""):
    command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps)]
    command += ["--threads", str(args.threads), "--samples", samples]
    output = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if output.returncode != 0:
        raise SystemExit(f"{name} failed:\n{output.stderr[-4000:]}")
    result = json.loads(output.stdout.strip().splitlines()[-1])
    if "seconds" in result:
        result["steps_per_s"] = result["steps"] / result["seconds"]
        result["steps_per_cpu_s"] = result["steps"] / result["cpu_seconds"]
        result["new_tokens_per_s"] = result["new_tokens"] / result["seconds"]
        result["generation_share"] = result["generation_seconds"] / result["seconds"]
        result["reward_share"] = result["reward_seconds"] / result["seconds"]
    return result


def check_step1_losses(ours: float, theirs: float) -> None:
    """Exit with status 1 unless the two step-1 losses on the same samples agree."""
    if not abs(ours - theirs) <= LOSS_TOLERANCE:  # NaN disagrees too
        raise SystemExit(
            f"step-1 loss on the same samples: prefkit {ours!r}, TRL {theirs!r}, more than "
            f"{LOSS_TOLERANCE} apart; the tools do not compute the same GRPO loss, so their "
            "speeds are not comparable. No result written."
        )
    print(f"step-1 losses agree to {abs(ours - theirs):.2e}", file=sys.stderr)


FIELDS = (
    "steps_per_s",
    "steps_per_cpu_s",
    "new_tokens_per_s",
    "seconds",
    "cpu_seconds",
    "generation_share",
    "reward_share",
    "peak_rss_mib",
    "step1_loss",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in every run; 0 keeps torch's default"
    )
    parser.add_argument("--out", default="bench/results/rl_speed_vs_trl.json")
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="only check that the step-1 losses agree on the same samples; write nothing",
    )
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--samples", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args)
        return

    import torch
    import transformers
    import trl

    with tempfile.TemporaryDirectory() as scratch:
        samples = str(Path(scratch, "samples.json"))
        plain_samples = str(Path(scratch, "samples_no_shared_prompt.json"))
        check = {
            "prefkit": _launch("check_prefkit", args, samples),
            "prefkit_no_shared_prompt": _launch(
                "check_prefkit_no_shared_prompt", args, plain_samples
            ),
            "trl": _launch("check_trl", args, samples),
        }
        if Path(samples).read_text() != Path(plain_samples).read_text():
            raise SystemExit("the two prefkit layouts drew different samples at step 1")
    check_step1_losses(check["prefkit"]["step1_loss"], check["trl"]["step1_loss"])
    check_step1_losses(check["prefkit_no_shared_prompt"]["step1_loss"], check["trl"]["step1_loss"])
    if args.check_only:
        return
    names = ["prefkit", "trl", "prefkit_no_shared_prompt"]
    repeats: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        # The runs take turns, each round starting one further on, so load changes hit all alike.
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            result = _launch(name, args)
            repeats[name].append(result)
            print(
                repeat,
                name,
                f"{result['steps_per_s']:.3f} steps/s, {result['new_tokens_per_s']:.0f} new "
                f"tokens/s, generation {result['generation_share']:.0%}",
                file=sys.stderr,
            )

    def median(name, key):
        return statistics.median(run[key] for run in repeats[name])

    runs = {
        name: {
            **{key: median(name, key) for key in FIELDS},
            "steps_per_s_each_repeat": [run["steps_per_s"] for run in repeats[name]],
            "new_tokens_per_s_each_repeat": [run["new_tokens_per_s"] for run in repeats[name]],
            "generation_share_each_repeat": [run["generation_share"] for run in repeats[name]],
            "step1_loss_each_repeat": [run["step1_loss"] for run in repeats[name]],
            "steps": repeats[name][0]["steps"],
            "threads": repeats[name][0]["threads"],
            **(
                {"setup_seconds": median(name, "setup_seconds")}
                if "setup_seconds" in repeats[name][0]
                else {}
            ),
        }
        for name in repeats
    }
    report = {
        "what": __doc__.split("\n\n")[1].replace("\n", " "),
        "note": (
            "2-core machine; load_average says whether other work ran beside it; "
            "compare the medians and the per-round ratios"
        ),
        "load_average": os.getloadavg(),
        "command": " ".join(
            [
                "python bench/rl_speed_vs_trl.py",
                f"--steps {args.steps} --repeats {args.repeats} --threads {args.threads}",
            ]
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "prompts_per_step": PROMPTS_PER_STEP,
        "num_generations": NUM_GENERATIONS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "steps": args.steps,
        "repeats": args.repeats,
        "runs": runs,
        "step1_loss_same_samples": {
            "prefkit": check["prefkit"]["step1_loss"],
            "trl": check["trl"]["step1_loss"],
            "abs_difference": abs(check["prefkit"]["step1_loss"] - check["trl"]["step1_loss"]),
            "prefkit_no_shared_prompt": check["prefkit_no_shared_prompt"]["step1_loss"],
            "abs_difference_no_shared_prompt": abs(
                check["prefkit_no_shared_prompt"]["step1_loss"] - check["trl"]["step1_loss"]
            ),
            "kl_per_sequence_prefkit": check["prefkit"]["kl"],
            "kl_per_token_trl": check["trl"]["kl"],
        },
        "speed_runs_step1_loss_note": (
            "runs[*].step1_loss differ between the tools: each samples its own completions "
            "(other random streams); step1_loss_same_samples is the like-for-like comparison"
        ),
        **{
            f"ratio_{mine}_over_{theirs}": {
                key: runs[mine][key] / runs[theirs][key]
                for key in ("steps_per_s", "steps_per_cpu_s", "new_tokens_per_s", "peak_rss_mib")
            }
            for mine, theirs in (
                ("prefkit", "trl"),
                ("prefkit_no_shared_prompt", "trl"),
                ("prefkit", "prefkit_no_shared_prompt"),
            )
        },
        "steps_per_s_ratio_each_repeat": [
            mine["steps_per_s"] / theirs["steps_per_s"]
            for mine, theirs in zip(repeats["prefkit"], repeats["trl"], strict=True)
        ],
        "steps_per_cpu_s_ratio_each_repeat": [
            mine["steps_per_cpu_s"] / theirs["steps_per_cpu_s"]
            for mine, theirs in zip(repeats["prefkit"], repeats["trl"], strict=True)
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    summary = {
        "step1_loss_same_samples": report["step1_loss_same_samples"],
        "ratio_prefkit_over_trl": report["ratio_prefkit_over_trl"],
        "ratio_prefkit_over_prefkit_no_shared_prompt": report[
            "ratio_prefkit_over_prefkit_no_shared_prompt"
        ],
        "generation_share": {name: runs[name]["generation_share"] for name in runs},
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
