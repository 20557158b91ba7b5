"""The online RL trainer: masking, invariance, exact resume, counted truncation, online DPO pairs.

All runs use the synthetic language of :mod:`prefkit.align.synthetic` and a tiny
random-weight Llama, so each takes well under a second of CPU.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from prefkit.align.synthetic import build_model, build_tokenizer, good_fraction, random_prompt
from prefkit.errors import UserInputError
from prefkit.losses.rl import kl_per_token
from prefkit.rl.config import RLConfig
from prefkit.rl.logprobs import completion_token_logps
from prefkit.rl.trainer import RLTask, encode_prompts, rl
from prefkit.train.loop import TrainConfig, TrainEvent

TIMING = ("generation_s", "reward_s", "examples_per_s")


def rule(prompts: Sequence[Any], completions: Sequence[str], completion_ids, **columns):
    """The synthetic language's rule: the share of good words."""
    return [good_fraction(completion) for completion in completions]


def tiny_policy(seed: int = 0) -> tuple[Any, Any]:
    tokenizer = build_tokenizer()
    return build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=seed), tokenizer


def prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [random_prompt(rng, 1 + index % 3) for index in range(count)]


def run(
    out: Path,
    config: RLConfig,
    *,
    reward: Any = None,
    batch_size: int = 4,
    count: int = 8,
    callbacks=(),
    resume: bool = True,
    optimizer_factory: Any = None,
    **train: Any,
):
    model, tokenizer = tiny_policy()
    return rl(
        prompts(count),
        model,
        tokenizer,
        reward if reward is not None else rule,
        out,
        config,
        TrainConfig(batch_size=batch_size, lr=1e-2, progress=False, **train),
        resume=resume,
        callbacks=callbacks,
        optimizer_factory=optimizer_factory,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_completion_log_probs_match_scoring_each_sequence_alone() -> None:
    model, _ = tiny_policy()
    rows = [((1, 5, 6, 12), (7, 8, 2)), ((1, 9), (4,)), ((1, 5, 6, 7, 8, 9, 12), (10, 11, 4, 5))]
    together = completion_token_logps(model.eval(), rows, pad_id=0)
    for index, (prompt, completion) in enumerate(rows):
        ids = torch.tensor([[*prompt, *completion]])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]  # (C, V)
        alone = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]
        width = len(completion)
        torch.testing.assert_close(together.logps[index, :width], alone, atol=1e-5, rtol=0)
        assert together.mask[index].tolist() == [True] * width + [False] * (4 - width)
        assert (together.logps[index, width:] == 0).all()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_log_probs_equal_one_row_per_sample_in_values_and_gradients(
    attention: str,
) -> None:
    """Two prompts of different lengths with three and two samples (given interleaved, so
    packing must restore the caller's order) and a prompt with one sample; temperature 0.7.
    The shared-prompt pass must give the plain pass's log-probs, mask, entropies and gradient."""
    model, _ = tiny_policy()
    model.eval()
    model.config._attn_implementation = attention
    long_prompt, short_prompt = (1, 5, 6, 7, 8, 12), (1, 9, 12)
    rows = [
        (long_prompt, (7, 8, 2)),
        (short_prompt, (4,)),
        (long_prompt, (10, 11, 4, 5, 6)),
        ((1, 10, 11, 12), (5, 5)),
        (short_prompt, (6, 7, 8, 9)),
        (long_prompt, (9,)),
    ]
    weights = torch.randn(len(rows), 5, generator=torch.Generator().manual_seed(0))

    def scored(shared: bool):
        model.zero_grad()
        result = completion_token_logps(
            model, rows, pad_id=0, temperature=0.7, with_entropy=True, shared_prompt=shared
        )
        (result.logps * weights).sum().backward()
        return result, [parameter.grad.clone() for parameter in model.parameters()]

    try:
        plain, plain_grads = scored(False)
        shared, shared_grads = scored(True)
    finally:
        model.config._attn_implementation = "sdpa"
    assert shared.mask.tolist() == plain.mask.tolist()
    torch.testing.assert_close(shared.logps, plain.logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.entropy, plain.entropy, atol=1e-5, rtol=0)
    assert (plain.logps[plain.mask] < 0).all() and (shared.logps[~shared.mask] == 0).all()
    for plain_grad, shared_grad in zip(plain_grads, shared_grads, strict=True):
        torch.testing.assert_close(shared_grad, plain_grad, atol=1e-5, rtol=1e-4)
    assert any(grad.abs().max() > 1e-3 for grad in plain_grads)


def test_padding_a_batch_differently_does_not_change_the_kl() -> None:
    """The same two sequences, once alone and once beside a long prompt and a long completion
    (so they are padded to a much wider row): per-sequence KL to another model equal."""
    policy, _ = tiny_policy(seed=0)
    reference, _ = tiny_policy(seed=1)
    policy.eval()
    reference.eval()
    rows = [((1, 5, 6, 12), (7, 8, 2)), ((1, 9, 12), (4, 5))]
    wide = [*rows, ((1, *range(4, 12), 9, 9, 12), (10, 11, 4, 5, 6, 7, 8, 2))]

    def sequence_kls(batch, estimator):
        with torch.no_grad():
            pi = completion_token_logps(policy, batch, pad_id=0)
            ref = completion_token_logps(reference, batch, pad_id=0)
        return kl_per_token(pi.logps, ref.logps, pi.mask, estimator).sum(1)

    for estimator in ("k1", "k2", "k3"):
        alone = sequence_kls(rows, estimator)
        padded = sequence_kls(wide, estimator)[:2]
        torch.testing.assert_close(padded, alone, atol=1e-6, rtol=0)
        assert (alone.abs() > 1e-3).all()  # a real KL, not zeros


def test_an_interrupted_run_resumes_to_the_uninterrupted_run_bit_for_bit(tmp_path: Path) -> None:
    """Checkpoints after steps 2 and 4 of 6 (two updates per generation batch); the run is
    stopped right after the step-2 checkpoint and started again. Weights and every logged
    number (rewards: the samples; losses: the updates) must be those of the run without a
    stop. Resuming without the task's step counter (sampling streams of generation 0 again)
    makes the step-3 rewards differ: checked by loading the state with step 0."""
    config = RLConfig(algo="grpo", max_new_tokens=5, max_steps=6, num_iterations=2, beta=0.05)
    whole = run(tmp_path / "whole", config, checkpoint_every_steps=2)

    class Stop(Exception):
        pass

    def stop_after_first_checkpoint(event: TrainEvent) -> None:
        if event.kind == "checkpoint" and event.global_step == 2:
            raise Stop

    with pytest.raises(Stop):
        run(
            tmp_path / "cut",
            config,
            checkpoint_every_steps=2,
            callbacks=[stop_after_first_checkpoint],
        )
    resumed = run(tmp_path / "cut", config, checkpoint_every_steps=2)
    assert resumed.train.resumed_from is not None and resumed.train.resumed_from.name == "step-2"
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    expected, got = lines(whole.train.metrics_path), lines(resumed.train.metrics_path)
    assert len(expected) == len(got) == 6
    for before, after in zip(expected, got, strict=True):
        assert {k: v for k, v in before.items() if k not in TIMING} == {
            k: v for k, v in after.items() if k not in TIMING
        }
    assert len({line["reward"] for line in expected}) == 3  # three generation batches differ


def test_losing_the_step_counter_on_resume_replays_old_samples(tmp_path: Path, monkeypatch) -> None:
    """The deliberately broken variant of the resume test: a task that forgets its step on
    load draws the sampling streams of generation 0 again after the resume (from the updated
    policy), so the step-3 samples, rewards and the final weights are not the uninterrupted
    run's: what the resume test checks would fail."""
    config = RLConfig(algo="grpo", max_new_tokens=5, max_steps=4, num_iterations=1, beta=0.0)
    whole = run(tmp_path / "whole", config, checkpoint_every_steps=2)

    def stop(event: TrainEvent) -> None:
        if event.kind == "checkpoint" and event.global_step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", config, checkpoint_every_steps=2, callbacks=[stop])
    load = RLTask.load_state_dict
    monkeypatch.setattr(
        RLTask, "load_state_dict", lambda task, state: load(task, {**state, "step": 0})
    )
    resumed = run(tmp_path / "cut", config, checkpoint_every_steps=2)
    rewards = [line["reward"] for line in lines(resumed.train.metrics_path)]
    assert rewards[:2] == [line["reward"] for line in lines(whole.train.metrics_path)[:2]]
    assert rewards[2] != lines(whole.train.metrics_path)[2]["reward"]
    assert not torch.equal(whole.model.lm_head.weight, resumed.model.lm_head.weight)


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean", "constant"])
def test_gradient_accumulation_does_not_change_the_update(tmp_path: Path, aggregation: str) -> None:
    """Batch of 4 prompts in one micro-batch vs four micro-batches of one prompt (each with its
    whole group): the same weights after two steps, for every loss aggregation.

    Plain SGD, so the weights carry the gradient itself: Adam divides each gradient by its
    own magnitude, and where a gradient is near zero the float rounding of a different
    summation order becomes a step of visible size (seen once at 6e-6 on one weight)."""
    config = RLConfig(
        algo="grpo", max_new_tokens=5, max_steps=2, beta=0.05, loss_aggregation=aggregation
    )

    def sgd(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=train.lr)

    one = run(tmp_path / "one", config, schedule="constant", optimizer_factory=sgd)
    four = run(
        tmp_path / "four", config, grad_accum_steps=4, schedule="constant", optimizer_factory=sgd
    )
    for name, tensor in one.model.state_dict().items():
        # measured: at most 4e-9 apart, while the two SGD steps move weights by up to 3e-3
        torch.testing.assert_close(four.model.state_dict()[name], tensor, atol=1e-7, rtol=0)
    assert not torch.equal(
        one.model.state_dict()["lm_head.weight"], tiny_policy()[0].state_dict()["lm_head.weight"]
    )


def test_long_prompts_are_cut_from_the_left_and_cut_completions_counted(tmp_path: Path) -> None:
    config = RLConfig(algo="rloo", max_new_tokens=3, max_prompt_length=3, max_steps=2, beta=0.0)
    result = run(tmp_path / "cut", config)
    # BOS, 1..3 words and ':' (3, 4, 5, 3, 4, 5, 3, 4 tokens): three lose 1 token, two lose 2
    assert result.prompts.truncated_prompts == 5
    assert result.prompts.prompt_tokens_dropped == 3 * 1 + 2 * 2
    _, tokenizer = tiny_policy()
    (encoded,), _ = encode_prompts(["a b c :"], tokenizer, max_prompt_length=3)
    assert tokenizer.convert_ids_to_tokens(list(encoded.prompt_ids)) == ["<s>", "c", ":"]
    metrics = lines(result.train.metrics_path)
    cut = sum(round(line["truncated_fraction"] * 16) for line in metrics)
    assert result.truncated_completions == cut > 0
    assert all(line["completion_length_max"] <= 3 for line in metrics)
    assert metrics[-1]["truncated_completions"] == cut


def test_every_metric_is_logged(tmp_path: Path) -> None:
    result = run(tmp_path / "m", RLConfig(algo="reinforce_pp", max_new_tokens=4, max_steps=1))
    (line,) = lines(result.train.metrics_path)
    for name in (
        "loss",
        "reward",
        "reward_std",
        "reward/python:test_rl_trainer:rule",
        "zero_spread_groups",
        "kl",
        "entropy",
        "completion_length",
        "completion_length_min",
        "completion_length_max",
        "eos_fraction",
        "truncated_fraction",
        "clip_fraction",
        "generation_s",
        "reward_s",
    ):
        assert name in line, name
    assert line["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its reference at step 1
    assert line["clip_fraction"] == 0.0  # the ratio is exactly 1 at the first iteration
    assert result.train_seconds > 0 and result.generation_seconds > 0


def test_samples_without_a_reward_and_ties_are_left_out(tmp_path: Path) -> None:
    """online_dpo: a pair with a None reward or a tie is skipped (no loss, counted); with every
    pair tied the loss and the gradient are 0 and the weights do not move."""

    def tied(prompts, completions, completion_ids, **columns):
        return [1.0] * len(completions)

    result = run(
        tmp_path / "tie",
        RLConfig(algo="online_dpo", max_new_tokens=4, max_steps=1),
        reward=tied,
    )
    (line,) = lines(result.train.metrics_path)
    assert line["skipped_pairs"] == 4 and line["loss"] == 0.0 and line["grad_norm"] == 0.0

    def some_none(prompts, completions, completion_ids, **columns):
        return [None if index % 4 == 0 else float(index) for index in range(len(completions))]

    result = run(
        tmp_path / "none",
        RLConfig(algo="online_dpo", max_new_tokens=4, max_steps=1),
        reward=some_none,
    )
    (line,) = lines(result.train.metrics_path)
    assert line["skipped_pairs"] == 2  # pairs 0 and 2 hold a None
    assert line["reward_none_fraction"] == 0.25
    assert line["loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy = reference at step 1


def test_lora_trains_against_the_adapter_disabled_model_and_saves_a_loadable_model(
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM

    config = RLConfig(algo="grpo", max_new_tokens=4, max_steps=2, beta=0.1, lora=True, lora_r=4)
    result = run(tmp_path / "lora", config)
    first, second = lines(result.train.metrics_path)
    assert first["kl"] == pytest.approx(0.0, abs=1e-6) and second["kl"] > 0
    loaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
    original, _ = tiny_policy()
    query = loaded.model.layers[0].self_attn.q_proj.weight  # LoRA merged into the weights
    assert not torch.equal(query, original.model.layers[0].self_attn.q_proj.weight)


def test_config_rejects_settings_the_algorithm_does_not_use() -> None:
    with pytest.raises(UserInputError, match="scale_rewards"):
        RLConfig(algo="rloo", scale_rewards="batch")
    with pytest.raises(UserInputError, match="clip_low"):
        RLConfig(algo="online_dpo", clip_low=0.1)
    with pytest.raises(UserInputError, match="num_generations must be 2"):
        RLConfig(algo="online_dpo", num_generations=4)
    with pytest.raises(UserInputError, match="dpo_loss"):
        RLConfig(algo="grpo", dpo_loss="ipo")
    with pytest.raises(UserInputError, match="not a paired loss"):
        RLConfig(algo="online_dpo", dpo_loss="kto")
    assert RLConfig(algo="rloo").kl_placement == "reward" and RLConfig(algo="rloo").kl == "k1"
    assert RLConfig().kl_placement == "loss" and RLConfig().kl == "k3"


def test_shared_prompt_with_flash_attention_is_refused_before_training(tmp_path: Path) -> None:
    model, tokenizer = tiny_policy()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UserInputError, match="--no-shared-prompt"):
        rl(prompts(4), model, tokenizer, rule, tmp_path / "x", RLConfig(max_steps=1))
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_checkpoints_only_between_generation_batches(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="multiple of num_iterations"):
        run(tmp_path / "x", RLConfig(max_steps=4, num_iterations=2), checkpoint_every_steps=3)


def test_bad_reward_values_are_errors_naming_the_function_and_sample(tmp_path: Path) -> None:
    def not_finite(prompts, completions, completion_ids, **columns):
        return [math.nan if index == 3 else 0.0 for index in range(len(completions))]

    def too_few(prompts, completions, completion_ids, **columns):
        return [0.0] * (len(completions) - 1)

    config = RLConfig(algo="rloo", max_new_tokens=4, max_steps=1)

    def raises(prompts, completions, completion_ids, **columns):
        raise KeyError("score")

    name = "python:test_rl_trainer:test_bad_reward_values_are_errors_naming_the_function_and_sample.<locals>"
    with pytest.raises(UserInputError, match=f"reward {name}.not_finite, sample 3: nan"):
        run(tmp_path / "nan", config, reward=not_finite)
    with pytest.raises(UserInputError, match=f"reward {name}.too_few returned 15 values for 16"):
        run(tmp_path / "short", config, reward=too_few)
    with pytest.raises(UserInputError, match=f"reward {name}.raises raised KeyError on samples"):
        run(tmp_path / "raises", config, reward=raises)


def test_a_failing_reward_leaves_a_resumable_run(tmp_path: Path) -> None:
    """The reward fails at the third generation batch (step 5 of 6, checkpoints every 2 steps):
    the error reaches the caller, the step-4 checkpoint is intact, and the run started again
    with a working reward ends exactly as a run that never failed."""
    config = RLConfig(algo="grpo", max_new_tokens=5, max_steps=6, num_iterations=2, beta=0.05)
    whole = run(tmp_path / "whole", config, checkpoint_every_steps=2)
    calls = []

    def fails_on_third_call(prompts, completions, completion_ids, **columns):
        calls.append(len(completions))
        if len(calls) == 3:
            raise UserInputError("the reward server is down")
        return rule(prompts, completions, completion_ids)

    # the same per-function metric name as the good run
    fails_on_third_call.__qualname__ = "rule"
    with pytest.raises(UserInputError, match="server is down"):
        run(
            tmp_path / "cut",
            config,
            checkpoint_every_steps=2,
            reward=fails_on_third_call,
        )
    resumed = run(tmp_path / "cut", config, checkpoint_every_steps=2)
    assert resumed.train.resumed_from is not None and resumed.train.resumed_from.name == "step-4"
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    strip = lambda line: {k: v for k, v in line.items() if k not in TIMING}  # noqa: E731
    assert [strip(line) for line in lines(resumed.train.metrics_path)] == [
        strip(line) for line in lines(whole.train.metrics_path)
    ]


def _record_rollouts(monkeypatch) -> list[tuple[list[Any], Any]]:
    """(prompts by position, rollout) of every generation batch."""
    recorded: list[tuple[list[Any], Any]] = []
    roll_out = RLTask._roll_out

    def recording(task, model, positions, prompts_in_step, sum_over_ranks):
        rollout = roll_out(task, model, positions, prompts_in_step, sum_over_ranks)
        recorded.append(([task._prompt_at(position) for position in positions], rollout))
        return rollout

    monkeypatch.setattr(RLTask, "_roll_out", recording)
    return recorded


def word_count(prompts, completions, completion_ids, **columns):
    return [float(len(completion.split())) for completion in completions]


def test_remax_baseline_is_the_reward_of_the_greedy_completion(tmp_path: Path, monkeypatch) -> None:
    from prefkit.generate.config import SamplingConfig
    from prefkit.generate.engines import HFEngine, Request

    recorded = _record_rollouts(monkeypatch)
    config = RLConfig(algo="remax", max_new_tokens=5, max_steps=1, beta=0.0)
    run(tmp_path / "remax", config, reward=word_count)
    ((prompts, rollout),) = recorded
    model, tokenizer = tiny_policy()
    greedy = HFEngine(model, tokenizer).generate(
        [Request(prompt.prompt_ids, 0) for prompt in prompts],
        SamplingConfig(temperature=0.0, num_samples=1, max_new_tokens=5),
    )
    group_sums = []
    for position, (prompt, baseline) in enumerate(zip(prompts, greedy, strict=True)):
        words = [
            len(tokenizer.decode(list(ids), skip_special_tokens=True).split())
            for ids in rollout.completions[position]
        ]
        expected = [count - len(baseline.text.split()) for count in words]
        assert [float(a) for a in rollout.advantages[position]] == expected, prompt.prompt
        group_sums.append(sum(expected))
    assert any(group_sums)  # not the group mean as the baseline


def test_reinforce_pp_whitens_the_returns_over_every_token_of_the_step(
    tmp_path: Path, monkeypatch
) -> None:
    """beta 0: every token of a sample has the sample's reward as its return; the advantages
    are those returns whitened over all completion tokens of the step (population std)."""
    recorded = _record_rollouts(monkeypatch)
    config = RLConfig(algo="reinforce_pp", max_new_tokens=5, max_steps=1, beta=0.0)
    run(tmp_path / "rpp", config, reward=word_count)
    ((prompts, rollout),) = recorded
    _, tokenizer = tiny_policy()
    returns = []
    for position in range(len(prompts)):
        for ids in rollout.completions[position]:
            reward = len(tokenizer.decode(list(ids), skip_special_tokens=True).split())
            returns.extend([float(reward)] * len(ids))
    values = torch.tensor(returns, dtype=torch.float64)
    expected = (values - values.mean()) / (values.std(unbiased=False) + 1e-8)
    got = torch.cat([a for position in range(len(prompts)) for a in rollout.advantages[position]])
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=0)
