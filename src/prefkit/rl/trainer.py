"""Online alignment of a causal LM: sample, score, advantage, clipped policy update.

The task for the shared training loop (:func:`prefkit.train.loop.train`). Each
optimizer step trains on ``TrainConfig.batch_size`` prompts; every
``num_iterations`` steps those prompts get fresh samples:

1. **Generate** (``before_step``): ``num_generations`` samples per prompt from
   the current policy with :class:`~prefkit.generate.engines.HFEngine`. Sample
   ``i`` of the prompt at stream position ``s`` draws from its own seeded stream
   (:func:`~prefkit.generate.config.sequence_seed` of the run's seed, ``s`` and
   ``i``), so the sampling RNG is a pure function of the position in the run:
   the checkpoint's step count restores it exactly, and the samples do not
   depend on batching. ReMax adds one greedy completion per prompt.
2. **Score** with the reward (:mod:`prefkit.rl.rewards`), apply the missing-EOS
   penalty, then reward clipping; a None reward takes the sample out of its
   group (advantage 0).
3. **Log-probs at generation time** of the policy (when ``num_iterations`` > 1 or
   the KL goes into the reward) and of the reference (when ``beta`` > 0), without
   gradient. The reference is the policy before training, or with LoRA the same
   model with its adapters disabled.
4. **Advantages** (:mod:`prefkit.losses.rl`) over the *global* batch: every
   process scores its own prompts, and the per-sample table is summed over
   processes, so batch statistics (GRPO's batch std, REINFORCE++'s whitening)
   are those of the whole step on every process.
5. **Update** (``loss``): the clipped importance ratio against the generation-time
   log-probs (exactly 1 at the first iteration), plus ``beta * KL`` with
   ``kl_in=loss``, reduced by ``loss_aggregation`` with the normalisers of the
   whole step (its completion tokens, sequences, prompts), so gradient
   accumulation and the number of processes do not change the update.

A prompt's samples stay together: each loop example is one prompt with its whole
group, so a group is never split across micro-batches or processes.

Online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback"): two samples per prompt, the higher reward is chosen, and a paired
loss of :mod:`prefkit.losses.preference` (DPO by default) is applied to the pair
in the same step. A pair whose rewards tie, or where either reward is None, is
skipped (no gradient) and counted in ``skipped_pairs``; the loss is the mean over
the step's other pairs.

Departures and choices worth knowing:

- Dropout is off in every forward pass (as TRL's ``disable_dropout``), so the ratio
  at the first iteration is exactly 1 and the log-probs at generation time match
  the training pass. Log-probs are those of the logits divided by the sampling
  temperature (as TRL), for the policy and the reference.
- With ``kl_in=loss`` the per-token KL is multiplied by the importance ratio by
  default (``kl_ratio_correction``; DeepSeek-V3.2, TRL 1.16's default
  ``use_bias_correction_kl``), which changes its gradient even at ratio 1.
- ReMax's baseline is the reward function's score of the greedy completion,
  without a KL term (any baseline independent of the sample keeps the gradient
  unbiased).
- A generation batch is built only at a step that is a multiple of
  ``num_iterations``, and checkpoints are only written there
  (``checkpoint_every_steps`` must be a multiple of it), so a resumed run never
  needs the samples of an earlier process.
- ``max_steps`` (or the epochs) fixes the number of generation batches; prompts
  come from a stream of seeded permutations of the prompt list (one per pass),
  so every generation batch is full and a pass may end inside a batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.records import Text, text_key
from prefkit.errors import UserInputError
from prefkit.generate.config import sequence_seed
from prefkit.generate.engines import Completion, HFEngine, Request
from prefkit.generate.prompts import PromptItem
from prefkit.losses.preference import PairedLogps
from prefkit.losses.rl import (
    aggregate_loss,
    clip_rewards,
    clipped_policy_loss,
    grpo_advantages,
    kl_per_token,
    missing_eos_penalty,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
)
from prefkit.rl.config import POLICY_GRADIENT_ALGORITHMS, RLConfig
from prefkit.rl.logprobs import TokenLogps, completion_token_logps
from prefkit.train.loop import (
    OptimizerFactory,
    TrainCallback,
    TrainConfig,
    TrainEvent,
    TrainResult,
    train,
)
from prefkit.train.sampler import epoch_generator

__all__ = [
    "RLBatch",
    "RLPrompt",
    "RLResult",
    "RLTask",
    "RewardOptions",
    "encode_prompts",
    "rl",
    "total_steps",
]


@dataclass(frozen=True)
class RLPrompt:
    """One prompt to train on, tokenized."""

    prompt: Text
    """The prompt as given (a string or a conversation); what the reward sees."""
    prompt_ids: tuple[int, ...]
    """Its token ids, cut from the left to fit (BOS kept)."""
    columns: Mapping[str, Any] = field(default_factory=dict)
    """The other fields of the prompt's record, passed to the reward by name."""


@dataclass
class PromptStats:
    """What became of the prompts on their way to token ids."""

    prompts: int = 0
    truncated_prompts: int = 0
    """Prompts cut from the left to fit max_prompt_length."""
    prompt_tokens_dropped: int = 0

    def summary(self) -> str:
        return (
            f"{self.prompts} prompts; {self.truncated_prompts} cut from the left to fit "
            f"({self.prompt_tokens_dropped} tokens dropped)"
        )


def encode_prompts(
    prompts: Sequence[str | PromptItem | Mapping[str, Any]],
    tokenizer: Any,
    *,
    max_prompt_length: int,
    chat_template: bool = True,
) -> tuple[list[RLPrompt], PromptStats]:
    """Token ids of every prompt (a string, a :class:`PromptItem` or a record mapping with a
    ``prompt`` key, whose other keys become reward columns); truncation is counted."""
    from prefkit.generate.run import encode_prompt

    stats = PromptStats()
    encoded: list[RLPrompt] = []
    column_names: set[str] | None = None
    for index, item in enumerate(prompts):
        columns: dict[str, Any] = {}
        if isinstance(item, PromptItem):
            prompt: Text = item.prompt
        elif isinstance(item, Mapping):
            if "prompt" not in item:
                raise UserInputError(f"prompt {index}: a mapping needs a 'prompt' key")
            prompt = item["prompt"]
            columns = {key: value for key, value in item.items() if key != "prompt"}
        else:
            prompt = item
        if column_names is None:
            column_names = set(columns)
        elif set(columns) != column_names:
            raise UserInputError(
                f"prompt {index}: has the fields {sorted(columns)} but the first prompt has "
                f"{sorted(column_names)}; every prompt needs the same fields (they are passed "
                "to the reward as columns)"
            )
        ids, dropped = encode_prompt(
            tokenizer, prompt, chat_template=chat_template, max_prompt_length=max_prompt_length
        )
        if not ids:
            raise UserInputError(f"prompt {index}: encodes to no tokens; drop empty prompts")
        stats.prompts += 1
        if dropped:
            stats.truncated_prompts += 1
            stats.prompt_tokens_dropped += dropped
        encoded.append(RLPrompt(prompt, ids, columns))
    if not encoded:
        raise UserInputError("no prompts to train on")
    return encoded, stats


def total_steps(config: RLConfig, train_config: TrainConfig, num_prompts: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``num_iterations`` per generation batch for
    enough generation batches to cover the loop's epochs over the prompts."""
    if config.max_steps is not None:
        return config.max_steps
    generation_batches = math.ceil(train_config.epochs * num_prompts / train_config.batch_size)
    return generation_batches * config.num_iterations


@dataclass
class RLBatch:
    """The groups of M prompts (G samples each) of one micro-batch, as R = M * G rows."""

    rows: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    """(prompt_ids, completion_ids) of each row, prompt-major (a prompt's G samples together)."""
    advantages: Tensor
    """(R,) per-sequence or (R, C) per-token advantages (policy-gradient algorithms)."""
    old_logps: Tensor | None
    """(R, C) policy log-probs at generation time; None when the first iteration is the only one."""
    ref_logps: Tensor | None
    """(R, C) reference log-probs; None without a reference."""
    chosen: Tensor
    """(M,) long, online_dpo: the sample (0 or 1) with the higher reward."""
    pair_valid: Tensor
    """(M,) bool, online_dpo: False for pairs skipped (tied or missing reward)."""


@dataclass
class _Rollout:
    """This process's generations of the current generation batch, by global batch position."""

    completions: dict[int, list[tuple[int, ...]]]
    """position -> the G completions' token ids."""
    advantages: dict[int, list[Tensor]]
    """position -> G advantages (0-d, or (length,) per token)."""
    old_logps: dict[int, list[Tensor]] | None
    ref_logps: dict[int, list[Tensor]] | None
    chosen: dict[int, int]
    pair_valid: dict[int, bool]
    num_tokens: int
    """Completion tokens of the whole step (all processes)."""
    num_sequences: int
    num_pairs: int
    """online_dpo: pairs trained on in the whole step."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The step's generation metrics, logged with every step trained on these samples."""


def _pad(rows: Sequence[Tensor]) -> Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class RLTask:
    """The :class:`~prefkit.train.loop.StatefulTrainTask` of online RL (see the module docstring).

    Loop example ``k`` is a *slot*: its position in the step's global batch says
    which prompt of the current generation batch it trains on, so the loop's
    batching, sharding and micro-batching act on whole prompt groups.
    """

    def __init__(
        self,
        prompts: Sequence[RLPrompt],
        reward: Any,
        config: RLConfig,
        train_config: TrainConfig,
        tokenizer: Any,
        policy: nn.Module,
        *,
        reference_model: nn.Module | None = None,
        use_adapter_reference: bool = False,
    ) -> None:
        """``reward`` is a :class:`prefkit.rl.rewards.Reward` (or any object with its ``names``
        and call). Without a reference model and with ``use_adapter_reference``, the policy with
        its LoRA adapters disabled is the reference."""
        self.prompts = list(prompts)
        self.reward = reward
        self.config = config
        self.batch_size = train_config.batch_size
        self.seed = train_config.seed
        self.tokenizer = tokenizer
        self.engine = HFEngine(policy, tokenizer, batch_size=config.generation_batch_size)
        self.pad_id = self.engine.pad_id
        self.reference_model = reference_model
        self.use_adapter_reference = use_adapter_reference
        self.steps = total_steps(config, train_config, len(self.prompts))
        self.sampling = config.sampling_config(train_config.seed)
        self.greedy = dataclasses.replace(self.sampling, temperature=0.0, num_samples=1)
        self.step = 0
        """Optimizer steps done (saved in checkpoints: it fixes the sampling streams)."""
        self.truncated_completions = 0
        """Completions cut at max_new_tokens so far."""
        self.rollout: _Rollout | None = None
        self.positions: dict[int, int] = {}
        self.generation_seconds = 0.0
        self.reward_seconds = 0.0
        self._permutation: tuple[int, list[int]] = (-1, [])
        """(pass, the prompt order of that pass), the last one used."""

    # -- the loop's interface

    def example_lengths(self) -> list[int]:
        return [1] * (self.steps * self.batch_size)

    def collate(self, indices: list[int]) -> RLBatch:
        rollout = self.rollout
        if rollout is None:
            raise RuntimeError("RLTask.collate before the step's generations (before_step)")
        positions = [self.positions[index] for index in indices]
        rows = tuple(
            (self._prompt_at(position).prompt_ids, ids)
            for position in positions
            for ids in rollout.completions[position]
        )
        advantages = [a for position in positions for a in rollout.advantages[position]]
        per_token = bool(advantages) and advantages[0].dim() == 1
        return RLBatch(
            rows=rows,
            advantages=_pad(advantages) if per_token else torch.stack(advantages),
            old_logps=None
            if rollout.old_logps is None
            else _pad([t for position in positions for t in rollout.old_logps[position]]),
            ref_logps=None
            if rollout.ref_logps is None
            else _pad([t for position in positions for t in rollout.ref_logps[position]]),
            chosen=torch.tensor([rollout.chosen.get(position, 0) for position in positions]),
            pair_valid=torch.tensor(
                [rollout.pair_valid.get(position, False) for position in positions]
            ),
        )

    def before_step(
        self,
        model: nn.Module,
        global_batch: Sequence[int],
        micro_batches: Sequence[Sequence[int]],
        sum_over_ranks: Callable[[Tensor], Tensor],
    ) -> None:
        self.positions = {slot: position for position, slot in enumerate(global_batch)}
        if self.step % self.config.num_iterations == 0:
            mine = [self.positions[slot] for batch in micro_batches for slot in batch]
            with torch.no_grad(), _eval_mode(model):
                self.rollout = self._roll_out(model, mine, len(global_batch), sum_over_ranks)
        elif self.rollout is not None:
            self.rollout.metrics["generation_s"] = 0.0
            self.rollout.metrics["reward_s"] = 0.0

    def loss(self, model: nn.Module, batch: RLBatch) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.rollout is not None
        rollout = self.rollout
        group = self.config.generations
        with _eval_mode(model):
            scored = self._token_logps(model, batch.rows, with_entropy=True)
        logps, mask = scored.logps, scored.mask  # (R, C), (R, C)
        assert scored.entropy is not None
        num_prompts = len(batch.rows) // group
        prompts_in_step = len(self.positions)
        device = logps.device
        ref = None if batch.ref_logps is None else batch.ref_logps.to(device)
        metrics: dict[str, Tensor] = {}
        if self.config.algo == "online_dpo":
            losses = self._pair_losses(batch, logps, mask, ref, prompts_in_step, rollout.num_pairs)
        else:
            old = logps.detach() if batch.old_logps is None else batch.old_logps.to(device)
            low, high = self.config.clip_range
            policy = clipped_policy_loss(logps, old, batch.advantages.to(device), mask, low, high)
            token_losses = policy.token_losses
            if ref is not None and self.config.kl_in_loss:
                token_kl = kl_per_token(logps, ref, mask, self.config.kl)
                if self.config.ratio_corrected_kl:
                    # DeepSeek-V3.2 (arXiv 2512.02556): KL * pi / pi_old, unbiased reverse-KL gradient
                    token_kl = token_kl * torch.exp(torch.where(mask, logps - old, 0.0))
                token_losses = token_losses + self.config.beta * token_kl  # GRPO eq. 3
            losses = (
                torch.stack(
                    [
                        aggregate_loss(
                            token_losses[p * group : (p + 1) * group],
                            mask[p * group : (p + 1) * group],
                            self.config.aggregation,
                            num_tokens=rollout.num_tokens,
                            num_sequences=rollout.num_sequences,
                            max_length=self.config.max_new_tokens,
                        )
                        for p in range(num_prompts)
                    ]
                )
                * prompts_in_step
            )  # the loop divides by the prompts of the step
            clipped = policy.clipped.reshape(num_prompts, -1).sum(1).double()
            metrics["clip_fraction"] = clipped * prompts_in_step / max(rollout.num_tokens, 1)
        if ref is not None:
            estimator = "k3" if self.config.algo == "online_dpo" else self.config.kl
            sequence_kl = kl_per_token(logps.detach(), ref, mask, estimator).sum(1).double()
            metrics["kl"] = sequence_kl.reshape(num_prompts, group).mean(1)
        entropy = scored.entropy.sum(1).double().reshape(num_prompts, group).sum(1)
        metrics["entropy"] = entropy * prompts_in_step / max(rollout.num_tokens, 1)
        for name, value in rollout.metrics.items():
            metrics[name] = torch.tensor(value, dtype=torch.float64)
        return losses, metrics

    def after_optimizer_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "truncated_completions": self.truncated_completions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        self.truncated_completions = int(state["truncated_completions"])
        self.rollout = None

    # -- generation and scoring

    def _stream_index(self, position: int) -> int:
        generation = self.step // self.config.num_iterations
        return generation * self.batch_size + position

    def _prompt_at(self, position: int) -> RLPrompt:
        """The prompt at a position of the current generation batch (a stream of seeded
        permutations of the prompts, one per pass)."""
        stream = self._stream_index(position)
        count = len(self.prompts)
        passed = stream // count
        if self._permutation[0] != passed:
            generator = epoch_generator(self.seed, passed)
            self._permutation = (passed, torch.randperm(count, generator=generator).tolist())
        return self.prompts[self._permutation[1][stream % count]]

    def _token_logps(
        self, model: nn.Module, rows: Sequence[Any], *, with_entropy: bool = False
    ) -> TokenLogps:
        return completion_token_logps(
            model,
            rows,
            self.pad_id,
            temperature=self.config.temperature,
            with_entropy=with_entropy,
            shared_prompt=self.config.shared_prompt,
        )

    def _reference_logps(self, model: nn.Module, rows: Sequence[Any]) -> TokenLogps:
        if self.reference_model is not None:
            device = next(model.parameters()).device
            self.reference_model.to(device)
            return self._token_logps(self.reference_model, rows)
        if self.use_adapter_reference:
            with model.disable_adapter():  # type: ignore[operator]
                return self._token_logps(model, rows)
        raise RuntimeError("RLTask: a reference is needed but none was given")

    def _score(
        self, prompts: Sequence[RLPrompt], completions: Sequence[Completion]
    ) -> tuple[list[float | None], dict[str, list[float | None]]]:
        """Rewards of the completions (one prompt each) and each function's own values."""
        columns = {
            name: [prompt.columns[name] for prompt in prompts] for name in prompts[0].columns
        }
        output = self.reward(
            [prompt.prompt for prompt in prompts],
            [completion.text for completion in completions],
            [completion.token_ids for completion in completions],
            **columns,
        )
        rewards = list(output.rewards)
        if len(rewards) != len(completions):
            raise UserInputError(
                f"the reward returned {len(rewards)} values for {len(completions)} completions"
            )
        for index, value in enumerate(rewards):
            if value is not None and not math.isfinite(float(value)):
                raise UserInputError(f"the reward of sample {index} is {value}; it must be finite")
        return rewards, {name: list(values) for name, values in output.per_function.items()}

    def _generate(
        self, positions: Sequence[int], prompts: Sequence[RLPrompt]
    ) -> tuple[list[Completion], list[Completion] | None]:
        """G samples per prompt (prompt-major), and ReMax's greedy completion of each prompt."""
        requests = [
            Request(
                prompt.prompt_ids,
                sequence_seed(
                    self.seed, f"{self._stream_index(position)}\0{text_key(prompt.prompt)}", sample
                ),
            )
            for position, prompt in zip(positions, prompts, strict=True)
            for sample in range(self.config.generations)
        ]
        samples = self.engine.generate(requests, self.sampling)
        greedy = None
        if self.config.algo == "remax":
            greedy_requests = [Request(prompt.prompt_ids, 0) for prompt in prompts]
            greedy = self.engine.generate(greedy_requests, self.greedy)
        return samples, greedy

    def _generation_logps(
        self, model: nn.Module, rows: Sequence[tuple[tuple[int, ...], tuple[int, ...]]]
    ) -> tuple[list[Tensor] | None, list[Tensor] | None]:
        """Per-sample (length,) log-probs of the policy as it generated (when a later iteration
        or the KL in the reward needs them) and of the reference (when there is one)."""
        config = self.config
        old = None
        policy_gradient = config.algo in POLICY_GRADIENT_ALGORITHMS
        if (policy_gradient and config.num_iterations > 1) or config.kl_in_reward:
            old = self._chunked(lambda chunk: self._token_logps(model, chunk), rows)
        ref = None
        if config.needs_reference:
            ref = self._chunked(lambda chunk: self._reference_logps(model, chunk), rows)
        return old, ref

    def _chunked(
        self, score: Callable[[Sequence[Any]], TokenLogps], rows: Sequence[Any]
    ) -> list[Tensor]:
        """Per-row (length,) log-probs, scored ``generation_batch_size`` rows at a time (rounded
        down to whole prompt groups, so a shared-prompt pass never splits a group)."""
        out: list[Tensor] = []
        group = self.config.generations
        size = max(group, self.config.generation_batch_size // group * group)
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            logps = score(chunk).logps.detach().cpu()
            out.extend(logps[index, : len(chunk[index][1])] for index in range(len(chunk)))
        return out

    def _roll_out(
        self,
        model: nn.Module,
        positions: Sequence[int],
        prompts_in_step: int,
        sum_over_ranks: Callable[[Tensor], Tensor],
    ) -> _Rollout:
        """Generate, score and prepare this process's share of the step (``positions`` of a
        global batch of ``prompts_in_step`` prompts); statistics are those of the whole step."""
        config, group = self.config, self.config.generations
        started = time.perf_counter()
        prompts = [self._prompt_at(position) for position in positions]
        samples, greedy = self._generate(positions, prompts)
        generation_s = time.perf_counter() - started

        started = time.perf_counter()
        sample_prompts = [prompt for prompt in prompts for _ in range(group)]
        rewards, per_function = self._score(sample_prompts, samples)
        greedy_rewards = None if greedy is None else self._score(prompts, greedy)[0]
        reward_s = time.perf_counter() - started

        rows = [
            (prompt.prompt_ids, sample.token_ids)
            for prompt, sample in zip(sample_prompts, samples, strict=True)
        ]
        old_logps, ref_logps = self._generation_logps(model, rows)
        token_kl = None
        if old_logps is not None and ref_logps is not None and config.kl_in_reward:
            token_kl = [
                kl_per_token(
                    old[None], ref[None], torch.ones((1, len(old)), dtype=torch.bool), config.kl
                )[0]
                for old, ref in zip(old_logps, ref_logps, strict=True)
            ]
        step_rows = [
            positions[local // group] * group + local % group for local in range(len(rows))
        ]
        table = _StepTable.gather(
            step_rows,
            prompts_in_step,
            group,
            samples,
            rewards,
            per_function,
            positions,
            greedy_rewards,
            token_kl,
            config.max_new_tokens,
            sum_over_ranks,
        )
        advantages, chosen, pair_valid = self._advantages(table)

        rollout = _Rollout(
            completions={},
            advantages={},
            old_logps={} if old_logps is not None and config.num_iterations > 1 else None,
            ref_logps={} if ref_logps is not None else None,
            chosen={},
            pair_valid={},
            num_tokens=int(table.lengths.sum()),
            num_sequences=prompts_in_step * group,
            num_pairs=0 if pair_valid is None else int(pair_valid.sum()),
        )
        for index, position in enumerate(positions):
            mine = range(index * group, (index + 1) * group)
            rollout.completions[position] = [rows[local][1] for local in mine]
            rollout.advantages[position] = [
                _sample_advantage(
                    advantages, step_rows[local], len(rows[local][1]), config.algo == "reinforce_pp"
                )
                for local in mine
            ]
            if rollout.old_logps is not None and old_logps is not None:
                rollout.old_logps[position] = [old_logps[local] for local in mine]
            if rollout.ref_logps is not None and ref_logps is not None:
                rollout.ref_logps[position] = [ref_logps[local] for local in mine]
            if chosen is not None and pair_valid is not None:
                rollout.chosen[position] = int(chosen[position])
                rollout.pair_valid[position] = bool(pair_valid[position])
        self.truncated_completions += int(table.truncated.sum())
        self.generation_seconds += generation_s
        self.reward_seconds += reward_s
        rollout.metrics = {
            **table.metrics(),
            "truncated_completions": float(self.truncated_completions),
            "generation_s": generation_s,
            "reward_s": reward_s,
        }
        if pair_valid is not None:
            rollout.metrics["skipped_pairs"] = float((~pair_valid).sum())
        return rollout

    def _advantages(self, table: _StepTable) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Advantages of the whole step: (P, G), or (P * G, T) per token for reinforce_pp;
        online_dpo instead gives (P,) the chosen sample and (P,) whether the pair is trained on."""
        config = self.config
        rewards = missing_eos_penalty(table.rewards, table.ended, config.missing_eos_penalty)
        if config.reward_clip is not None:
            rewards = clip_rewards(rewards, config.reward_clip)
        valid = table.valid
        if config.algo == "online_dpo":
            pair_valid = valid.all(dim=1) & (rewards[:, 0] != rewards[:, 1])  # ties are skipped
            # Guo et al. 2024, Algorithm 1: the sample the annotator (here the reward) prefers is y+
            return None, (rewards[:, 1] > rewards[:, 0]).long(), pair_valid
        beta = config.beta if table.token_kl is not None else 0.0
        if config.algo == "reinforce_pp":
            # per-token returns of -beta * KL_t plus the reward on the last token, whitened
            flat_valid = valid.reshape(-1)
            mask = torch.arange(config.max_new_tokens)[None, :] < table.lengths[:, None]
            token_kl = table.token_kl if table.token_kl is not None else torch.zeros(mask.shape)
            advantages = torch.zeros(mask.shape, dtype=torch.float64)
            if flat_valid.any():
                advantages[flat_valid] = reinforce_pp_advantages(
                    rewards.reshape(-1)[flat_valid],
                    token_kl.double()[flat_valid],
                    mask[flat_valid],
                    beta,
                )
            return advantages, None, None
        if table.token_kl is not None:
            sequence_kl = table.token_kl.sum(1).reshape(rewards.shape)
            rewards = rewards - beta * sequence_kl  # the KL-penalised reward r - beta * KL
        if config.algo == "grpo":
            return grpo_advantages(rewards, config.reward_scaling, valid=valid), None, None
        if config.algo == "rloo":
            return rloo_advantages(rewards, valid=valid), None, None
        assert table.greedy_rewards is not None and table.greedy_valid is not None
        advantages = remax_advantages(rewards, table.greedy_rewards)
        keep = valid & table.greedy_valid[:, None]
        return torch.where(keep, advantages, torch.zeros_like(advantages)), None, None

    def _pair_losses(
        self,
        batch: RLBatch,
        logps: Tensor,
        mask: Tensor,
        ref: Tensor | None,
        prompts_in_step: int,
        num_pairs: int,
    ) -> Tensor:
        """Online DPO: the paired loss of each prompt's (chosen, rejected), 0 for skipped pairs,
        scaled so that the loop's mean over prompts is the mean over the step's trained pairs."""
        sequence_logps = logps.sum(1).reshape(-1, 2)  # (M, 2)
        lengths = mask.sum(1).reshape(-1, 2)
        chosen = batch.chosen.to(logps.device)[:, None]
        rejected = 1 - chosen

        def pick(values: Tensor, which: Tensor) -> Tensor:
            return values.gather(1, which).squeeze(1)  # (M, 2) -> (M,)

        ref_sums = None if ref is None else ref.sum(1).reshape(-1, 2)
        spec = self.config.dpo_loss_spec()
        paired = PairedLogps(
            policy_chosen_logps=pick(sequence_logps, chosen),
            policy_rejected_logps=pick(sequence_logps, rejected),
            ref_chosen_logps=None if ref_sums is None else pick(ref_sums, chosen),
            ref_rejected_logps=None if ref_sums is None else pick(ref_sums, rejected),
            chosen_lengths=pick(lengths, chosen),
            rejected_lengths=pick(lengths, rejected),
        )
        output = spec.function(paired, config=self.config.dpo_loss_config())
        valid = batch.pair_valid.to(logps.device)
        losses = torch.where(valid, output.losses, torch.zeros_like(output.losses))
        return losses * prompts_in_step / max(num_pairs, 1)


def _sample_advantage(advantages: Tensor | None, row: int, length: int, per_token: bool) -> Tensor:
    """Step row ``row``'s advantage: 0-d from (P, G), its (length,) tokens from (P * G, T)
    when ``per_token``, or 0 when the algorithm has none (online_dpo)."""
    if advantages is None:
        return torch.zeros(())
    if per_token:
        return advantages[row, :length].float()
    return advantages.reshape(-1)[row].float()


@dataclass
class _StepTable:
    """Per-sample values of the whole step, every process's samples included.

    Row ``p * G + i`` (or ``[p, i]``) is sample ``i`` of the prompt at position ``p``
    of the global batch. Each process fills the rows of its own prompts into one
    zero table and the tables are summed over the processes, which is exact (x + 0).
    """

    valid: Tensor
    """(P, G) bool: the sample has a reward."""
    rewards: Tensor
    """(P, G) float64 reward (weighted over the functions), 0 where not valid."""
    lengths: Tensor
    """(P * G,) long completion tokens, the ending EOS included."""
    ended: Tensor
    """(P, G) bool: ended with EOS."""
    truncated: Tensor
    """(P * G,) bool: cut at max_new_tokens."""
    functions: dict[str, tuple[Tensor, Tensor]]
    """Reward function name -> ((P * G,) bool has a value, (P * G,) float64 values)."""
    greedy_valid: Tensor | None
    """(P,) bool, remax: the greedy completion has a reward."""
    greedy_rewards: Tensor | None
    """(P,) float64, remax: the greedy completion's reward."""
    token_kl: Tensor | None
    """(P * G, max_new_tokens) float64 per-token KL at generation time (KL in the reward)."""

    @classmethod
    def gather(
        cls,
        step_rows: Sequence[int],
        num_prompts: int,
        group: int,
        samples: Sequence[Completion],
        rewards: Sequence[float | None],
        per_function: Mapping[str, Sequence[float | None]],
        greedy_positions: Sequence[int] | None,
        greedy_rewards: Sequence[float | None] | None,
        token_kl: Sequence[Tensor] | None,
        max_new_tokens: int,
        sum_over_ranks: Callable[[Tensor], Tensor],
    ) -> _StepTable:
        """The table of the step from this process's samples (``step_rows[k]`` is the step row
        of local sample k) and, for remax, its prompts' greedy rewards (at ``greedy_positions``)."""
        names = list(per_function)
        num_rows = num_prompts * group
        kl_columns = max_new_tokens if token_kl is not None else 0
        table = torch.zeros((num_rows, 5 + 2 * len(names) + kl_columns), dtype=torch.float64)
        for local, row in enumerate(step_rows):
            reward = rewards[local]
            table[row, 0] = reward is not None
            table[row, 1] = 0.0 if reward is None else float(reward)
            table[row, 2] = len(samples[local].token_ids)
            table[row, 3] = samples[local].finish_reason == "eos"
            table[row, 4] = samples[local].finish_reason == "length"
            for column, name in enumerate(names):
                value = per_function[name][local]
                table[row, 5 + 2 * column] = value is not None
                table[row, 6 + 2 * column] = 0.0 if value is None else float(value)
            if token_kl is not None:
                start = 5 + 2 * len(names)
                table[row, start : start + len(token_kl[local])] = token_kl[local].double()
        table = sum_over_ranks(table)
        greedy_valid = greedy_values = None
        if greedy_positions is not None and greedy_rewards is not None:
            greedy = torch.zeros((num_prompts, 2), dtype=torch.float64)
            for position, value in zip(greedy_positions, greedy_rewards, strict=True):
                greedy[position, 0] = value is not None
                greedy[position, 1] = 0.0 if value is None else float(value)
            greedy = sum_over_ranks(greedy)
            greedy_valid, greedy_values = greedy[:, 0] > 0.5, greedy[:, 1]
        return cls(
            valid=(table[:, 0] > 0.5).reshape(num_prompts, group),
            rewards=table[:, 1].reshape(num_prompts, group),
            lengths=table[:, 2].long(),
            ended=(table[:, 3] > 0.5).reshape(num_prompts, group),
            truncated=table[:, 4] > 0.5,
            functions={
                name: (table[:, 5 + 2 * column] > 0.5, table[:, 6 + 2 * column])
                for column, name in enumerate(names)
            },
            greedy_valid=greedy_valid,
            greedy_rewards=greedy_values,
            token_kl=table[:, 5 + 2 * len(names) :] if token_kl is not None else None,
        )

    def metrics(self) -> dict[str, float]:
        """Reward statistics (of the rewards as given, before penalties) and completion shapes."""
        kept = self.rewards[self.valid]
        high = torch.where(self.valid, self.rewards, -math.inf).max(1).values
        low = torch.where(self.valid, self.rewards, math.inf).min(1).values
        no_spread = (self.valid.sum(1) < 2) | (high == low)  # (P,)
        lengths = self.lengths.double()
        metrics = {
            "reward": float(kept.mean()) if kept.numel() else math.nan,
            "reward_std": float(kept.std(unbiased=False)) if kept.numel() else math.nan,
            "reward_none_fraction": float(1 - self.valid.double().mean()),
            "zero_spread_groups": float(no_spread.double().mean()),
            "completion_length": float(lengths.mean()),
            "completion_length_min": float(lengths.min()),
            "completion_length_max": float(lengths.max()),
            "eos_fraction": float(self.ended.double().mean()),
            "truncated_fraction": float(self.truncated.double().mean()),
        }
        for name, (present, values) in self.functions.items():
            metrics[f"reward/{name}"] = float(values[present].mean()) if present.any() else math.nan
        return metrics


# ---------------------------------------------------------------------------
# the API


@dataclass
class RLResult:
    """What :func:`rl` did."""

    train: TrainResult
    prompts: PromptStats
    model: nn.Module
    """The trained model (a peft model when LoRA is on)."""
    model_dir: Path | None
    """Where the final model and tokenizer were saved (None when not saved, or not rank 0)."""
    generation_seconds: float
    """Time this call spent generating (all generation batches, this process)."""
    reward_seconds: float
    """Time this call spent in the reward."""
    train_seconds: float
    """The rest of the steps' time: log-probs, losses, backward passes and optimizer steps."""
    truncated_completions: int
    """Completions cut at max_new_tokens over the whole run."""

    def summary(self) -> str:
        return (
            f"{self.train.global_step} steps; {self.prompts.summary()}; "
            f"{self.truncated_completions} completions cut at max_new_tokens; "
            f"{self.generation_seconds:.1f} s generating, {self.reward_seconds:.1f} s scoring, "
            f"{self.train_seconds:.1f} s training"
        )


def _attention_implementation(model: nn.Module | None) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def _context_length(model: nn.Module | str | os.PathLike[str]) -> int | None:
    if isinstance(model, nn.Module):
        config = getattr(model, "config", None)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(model), trust_remote_code=False)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def prompt_length_limit(
    config: RLConfig, model: nn.Module | str | os.PathLike[str], command: str = "rl"
) -> int:
    """``config.max_prompt_length``, or what the model's context leaves beside
    ``max_new_tokens``; an error (starting with ``command``) when they do not fit."""
    context = _context_length(model)
    length = config.max_prompt_length
    if length is None:
        length = context - config.max_new_tokens if context else 1 << 30
    if context is not None and length + config.max_new_tokens > context:
        raise UserInputError(
            f"{command}: max_prompt_length ({length}) + max_new_tokens "
            f"({config.max_new_tokens}) exceed the model's context of {context} tokens"
        )
    if length < 1:
        raise UserInputError(
            f"{command}: max_new_tokens ({config.max_new_tokens}) leaves no room for a prompt "
            f"in the model's context of {context} tokens"
        )
    return length


@dataclass(frozen=True)
class RewardOptions:
    """How :func:`prefkit.rl.rewards.load_reward` builds the reward from specs."""

    weights: Sequence[float] | None = None
    """One weight per spec; None: 1 each."""
    uncertainty_penalty: float = 0.0
    """With an ensemble reward model: optimise mean - penalty * std of its members (Coste et al. 2023)."""
    timeout_s: float = 30.0
    """Seconds to wait for a reward server's answer."""
    retries: int = 3
    """Retries of a reward server request that timed out or failed with a 5xx status."""
    api_key: str | None = None
    """Bearer key for the reward server."""


def _as_reward(reward: Any, options: RewardOptions, tokenizer: Any, device: str) -> Any:
    """A reward object from a Reward, a spec or callable, or a list of specs and callables."""
    if hasattr(reward, "names") and callable(reward):
        if options != RewardOptions():
            raise UserInputError(
                "rl: the reward is already built; reward options (weights, uncertainty penalty, "
                "timeout, retries, API key) apply only to reward specs"
            )
        return reward
    from prefkit.rl.rewards import load_reward

    specs = list(reward) if isinstance(reward, list | tuple) else [reward]
    return load_reward(
        specs,
        options.weights,
        policy_tokenizer=tokenizer,
        device=device,
        uncertainty_penalty=options.uncertainty_penalty,
        timeout_s=options.timeout_s,
        retries=options.retries,
        api_key=options.api_key,
    )


def rl(
    prompts: Sequence[str | PromptItem | Mapping[str, Any]],
    model: nn.Module | str | os.PathLike[str],
    tokenizer: Any,
    reward: Any,
    out_dir: str | os.PathLike[str],
    config: RLConfig | None = None,
    train_config: TrainConfig | None = None,
    *,
    reward_options: RewardOptions | None = None,
    ref_model: nn.Module | str | os.PathLike[str] | None = None,
    resume: bool = True,
    callbacks: Sequence[TrainCallback] = (),
    optimizer_factory: OptimizerFactory | None = None,
) -> RLResult:
    """Train ``model`` online on ``prompts`` against ``reward``; see the module docstring.

    ``reward`` is a :class:`prefkit.rl.rewards.Reward`, or what
    :func:`prefkit.rl.rewards.load_reward` takes: a spec (a reward-model folder,
    ``python:module:function``, an ``http://`` URL), a Python callable of TRL's
    reward-function shape, or a list of them (weights and server settings in
    ``reward_options``).
    ``train_config.batch_size`` is prompts per optimizer step and ``epochs`` passes
    over the prompts (unless ``config.max_steps``). Metrics go to
    ``out_dir/metrics.jsonl``, checkpoints to ``out_dir/checkpoints`` and the model to
    ``out_dir/model``. Checkpoints are written every ``checkpoint_every_steps`` (a
    multiple of ``num_iterations``), or else after every pass over the prompts, and at
    the end. Started again with the same arguments after an interruption, the run
    resumes from its last checkpoint and ends as the uninterrupted run would.
    """
    config = config or RLConfig()
    if config.algo == "iterative_dpo":
        raise UserInputError(
            "rl: iterative_dpo runs in rounds of generate -> score -> pairs -> DPO; call "
            "prefkit.rl.iterative.iterative_dpo with this config"
        )
    train_config = train_config or TrainConfig(batch_size=8)
    if train_config.early_stopping_patience is not None:
        raise UserInputError("rl: there is no evaluation set, so early stopping cannot be used")
    every = train_config.checkpoint_every_steps
    if every is not None and every % config.num_iterations:
        raise UserInputError(
            f"rl: checkpoint_every_steps ({every}) must be a multiple of num_iterations "
            f"({config.num_iterations}): checkpoints are written between generation batches"
        )
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=False)
    from prefkit.align.trainer import (
        _training_device,
        _wrap_lora,
        load_causal_lm,
        save_aligned_model,
    )

    if not isinstance(model, nn.Module):
        model = load_causal_lm(model)
    if ref_model is not None and not isinstance(ref_model, nn.Module):
        ref_model = load_causal_lm(ref_model)
    if ref_model is not None and not config.needs_reference:
        raise UserInputError(
            "rl: beta is 0 (or the loss uses no reference): drop ref_model (--ref)"
        )
    max_prompt_length = prompt_length_limit(config, model)
    encoded, prompt_stats = encode_prompts(
        prompts, tokenizer, max_prompt_length=max_prompt_length, chat_template=config.chat_template
    )
    device = _training_device(train_config)
    reward_object = _as_reward(reward, reward_options or RewardOptions(), tokenizer, str(device))

    use_adapter_reference = False
    if config.lora:
        model = _wrap_lora(model, config)  # type: ignore[arg-type]
        use_adapter_reference = config.needs_reference and ref_model is None
    elif config.needs_reference and ref_model is None:
        ref_model = copy.deepcopy(model)  # the policy before training
    if ref_model is not None:
        ref_model.requires_grad_(False)
        ref_model.eval()
    if config.shared_prompt:
        for role, scored in (("model", model), ("reference", ref_model)):
            implementation = _attention_implementation(scored)
            if implementation is not None and implementation.startswith("flash"):
                raise UserInputError(
                    f"rl: the {role} uses {implementation!r} attention, which takes no 4D "
                    "attention mask, so the shared-prompt pass cannot run; pass "
                    "--no-shared-prompt (shared_prompt=False) or load it with "
                    "attn_implementation='sdpa'"
                )

    # The loop sees one epoch of steps; without checkpoint_every_steps, a checkpoint is written
    # after each pass over the prompts, as the loop does at each epoch's end.
    every_pass = math.ceil(len(encoded) / train_config.batch_size) * config.num_iterations
    loop_config = dataclasses.replace(
        train_config,
        epochs=1,
        group_by_length=False,
        checkpoint_every_steps=train_config.checkpoint_every_steps or every_pass,
    )
    task = RLTask(
        encoded,
        reward_object,
        config,
        train_config,
        tokenizer,
        model,
        reference_model=ref_model,
        use_adapter_reference=use_adapter_reference,
    )
    step_seconds = [0.0]

    def count_time(event: TrainEvent) -> None:
        if event.kind == "step":
            step_seconds[0] += event.metrics["num_examples"] / event.metrics["examples_per_s"]

    try:
        result = train(
            model,
            task,
            loop_config,
            out_dir,
            resume=resume,
            optimizer_factory=optimizer_factory,
            callbacks=[count_time, *callbacks],
        )
    finally:
        close = getattr(reward_object, "close", None)
        if close is not None and reward_object is not reward:
            close()
    model_dir = None
    if config.save_model and int(os.environ.get("RANK", "0")) == 0:
        model_dir = save_aligned_model(
            model, tokenizer, Path(out_dir) / "model", merge_lora=config.merge_lora
        )
    rollout_seconds = task.generation_seconds + task.reward_seconds
    return RLResult(
        train=result,
        prompts=prompt_stats,
        model=model,
        model_dir=model_dir,
        generation_seconds=task.generation_seconds,
        reward_seconds=task.reward_seconds,
        train_seconds=max(step_seconds[0] - rollout_seconds, 0.0),
        truncated_completions=task.truncated_completions,
    )
