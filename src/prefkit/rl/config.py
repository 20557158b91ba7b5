"""Settings of online alignment (:func:`prefkit.rl.trainer.rl`), beside the loop's TrainConfig.

:class:`RLConfig` holds what is particular to online RL (sampling, the algorithm,
its advantage, KL and loss settings, LoRA, saving); the training loop's
:class:`~prefkit.train.loop.TrainConfig` holds the rest, with ``batch_size``
counted in *prompts* per optimizer step and ``epochs`` in passes over the prompts.

Settings that only some algorithms use default to ``None`` (the algorithm's own
default, resolved in ``__post_init__``); setting one that the chosen algorithm
does not use is an error, so nothing is accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from prefkit.errors import UserInputError

__all__ = ["ALGORITHMS", "POLICY_GRADIENT_ALGORITHMS", "RLConfig"]

Algorithm = Literal["grpo", "rloo", "remax", "reinforce_pp", "online_dpo", "iterative_dpo"]
ALGORITHMS: tuple[str, ...] = (
    "grpo",
    "rloo",
    "remax",
    "reinforce_pp",
    "online_dpo",
    "iterative_dpo",
)
POLICY_GRADIENT_ALGORITHMS: tuple[str, ...] = ("grpo", "rloo", "remax", "reinforce_pp")

# Settings used by the policy-gradient algorithms only, and by online_dpo only.
_POLICY_GRADIENT_ONLY = (
    "kl_estimator",
    "kl_in",
    "kl_ratio_correction",
    "clip_low",
    "clip_high",
    "loss_aggregation",
)
_ONLINE_DPO_ONLY = ("dpo_loss", "dpo_loss_args")
# Settings used by iterative_dpo only.
_ITERATIVE_ONLY = ("rounds", "round_reference")


@dataclass
class RLConfig:
    """Settings of online alignment beyond the training loop's; validated on construction."""

    algo: Algorithm = "grpo"
    """grpo (group-normalised advantages), rloo (leave-one-out baseline), remax (greedy baseline,
    one extra greedy generation per prompt), reinforce_pp (globally whitened returns) or
    online_dpo (two samples per prompt, ranked by the reward, a DPO-family loss on the pair) or
    iterative_dpo (rounds of generate -> score -> best-worst pairs -> offline DPO on them, as
    RLHFlow's online-RLHF; see prefkit.rl.iterative)."""
    num_generations: int | None = None
    """Samples per prompt; None: 4 (online_dpo: 2, the only value it takes). grpo, rloo and
    iterative_dpo need at least 2."""
    max_new_tokens: int = 64
    """Most tokens generated per completion; completions cut here are counted (finish 'length')."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1 = off)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = off)."""
    max_prompt_length: int | None = None
    """Most prompt tokens; longer prompts keep their last tokens (counted). None: the model's
    context minus max_new_tokens."""
    chat_template: bool = True
    """Render conversation prompts with the tokenizer's chat template (else as 'role: content' text)."""
    max_steps: int | None = None
    """Optimizer steps to run; None: enough for the loop's epochs over the prompts. iterative_dpo:
    optimizer steps of each round's DPO (None: the loop's epochs over the round's pairs)."""
    num_iterations: int = 1
    """Optimizer steps on each batch of generations (PPO epochs); beyond the first, the
    importance ratio against the log-probs at generation time is clipped."""
    beta: float = 0.04
    """KL coefficient to the reference (0: no reference is loaded, no KL); for online_dpo the
    loss's beta (it must then be > 0 when the loss uses a reference); for iterative_dpo the
    beta of each round's DPO-family loss."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """Per-token KL estimator (Schulman 2020); None: k3 with kl_in=loss, k1 with kl_in=reward."""
    kl_in: Literal["loss", "reward"] | None = None
    """Where the KL goes: a loss term beta * KL ('loss'), or subtracted from the reward before the
    advantage ('reward'). None: loss for grpo, reward for rloo, remax and reinforce_pp."""
    kl_ratio_correction: bool | None = None
    """With kl_in=loss: multiply each token's KL by the importance ratio pi / pi_old, which makes
    its gradient the unbiased reverse-KL gradient even where the ratio is 1 (DeepSeek-V3.2, TRL's
    use_bias_correction_kl). None: on with kl_in=loss."""
    scale_rewards: Literal["group", "batch", "none"] | None = None
    """grpo only: divide the centred rewards by the group's std, the batch's std, or not at all
    (Dr. GRPO). None: group."""
    clip_low: float | None = None
    """Lower clip range of the importance ratio (1 - clip_low); None: 0.2."""
    clip_high: float | None = None
    """Upper clip range of the importance ratio (1 + clip_high, DAPO's clip-higher); None: 0.2."""
    loss_aggregation: Literal["token-mean", "sequence-mean", "constant"] | None = None
    """How token losses become the step's loss: over every completion token of the step
    (token-mean, DAPO), per-sequence means averaged (sequence-mean, GRPO), or the sum over
    (sequences x max_new_tokens) (constant, Dr. GRPO). None: token-mean."""
    reward_clip: float | None = None
    """Clamp every reward to [-reward_clip, reward_clip] before the advantage; None: no clipping."""
    missing_eos_penalty: float = 0.0
    """Subtract this from the reward of every completion that did not end with EOS."""
    dpo_loss: str | None = None
    """online_dpo and iterative_dpo only: a loss of prefkit.losses.preference (sigmoid = DPO,
    ipo, ...; online_dpo: a paired one; iterative_dpo: any that trains on pairs, e.g. kto on
    the pairs split into thumbs); None: sigmoid."""
    dpo_loss_args: dict[str, float] = field(default_factory=dict)
    """online_dpo and iterative_dpo only: hyperparameters of dpo_loss besides beta (beta comes
    from --beta)."""
    rounds: int | None = None
    """iterative_dpo only: rounds of generate -> score -> pairs -> DPO; None: 3."""
    round_reference: Literal["start", "original"] | None = None
    """iterative_dpo only: the reference of each round's DPO, the policy the round starts from
    ('start', as RLHFlow's online-RLHF) or the original model ('original'). None: start."""
    generation_batch_size: int = 64
    """Sequences per generate call (and rows per no-gradient log-prob pass)."""
    shared_prompt: bool = True
    """Score each prompt once, with its samples packed after it in one row (a 4D attention mask:
    needs sdpa or eager attention, not flash-attention), in every log-prob pass (training,
    reference, generation time); the log-probs are those of one prompt + completion row per
    sample, with fewer tokens through the model. Off: one row per sample."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; the reference is the adapter-disabled model."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: 'all-linear' or comma-separated names such as q_proj,v_proj."""
    merge_lora: bool = True
    """Save the model with the LoRA adapters merged into the weights (else save the adapters alone)."""
    save_model: bool = True
    """Save the final model and tokenizer under OUT/model."""

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise UserInputError(
                f"RLConfig: algo must be one of {list(ALGORITHMS)}, got {self.algo!r}."
            )
        policy_gradient = self.algo in POLICY_GRADIENT_ALGORITHMS
        unused = _ONLINE_DPO_ONLY if policy_gradient else _POLICY_GRADIENT_ONLY
        if self.algo != "grpo":
            unused = (*unused, "scale_rewards")
        if self.algo != "iterative_dpo":
            unused = (*unused, *_ITERATIVE_ONLY)
        for name in unused:
            value = getattr(self, name)
            if value is not None and value != {}:
                raise UserInputError(
                    f"RLConfig: {name} = {value!r} is not used by algo {self.algo!r}; leave it unset."
                )
        self._require_int("max_new_tokens", 1)
        self._require_int("top_k", 0)
        self._require_int("num_iterations", 1)
        self._require_int("generation_batch_size", 1)
        self._require_int("lora_r", 1)
        for name in ("num_generations", "max_prompt_length", "max_steps", "rounds"):
            if getattr(self, name) is not None:
                self._require_int(name, 1)
        generations = self.generations
        if self.algo == "online_dpo" and generations != 2:
            raise UserInputError(
                f"RLConfig: online_dpo ranks two samples per prompt; num_generations must be 2, "
                f"got {generations}."
            )
        if self.algo in ("grpo", "rloo", "iterative_dpo") and generations < 2:
            raise UserInputError(
                f"RLConfig: {self.algo} compares the samples of a prompt with each other; "
                f"num_generations must be >= 2, got {generations}."
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserInputError(
                f"RLConfig: temperature must be > 0 (RL learns from samples), got {self.temperature}."
            )
        if not 0 < self.top_p <= 1:
            raise UserInputError(f"RLConfig: top_p must be in (0, 1], got {self.top_p}.")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise UserInputError(f"RLConfig: beta must be >= 0, got {self.beta}.")
        for name in ("clip_low", "clip_high"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserInputError(f"RLConfig: {name} must be >= 0, got {value}.")
        if self.clip_low is not None and self.clip_low >= 1:
            raise UserInputError(f"RLConfig: clip_low must be < 1, got {self.clip_low}.")
        if self.reward_clip is not None and not self.reward_clip > 0:
            raise UserInputError(f"RLConfig: reward_clip must be > 0, got {self.reward_clip}.")
        if not (math.isfinite(self.missing_eos_penalty) and self.missing_eos_penalty >= 0):
            raise UserInputError(
                f"RLConfig: missing_eos_penalty must be >= 0, got {self.missing_eos_penalty}."
            )
        if not 0 <= self.lora_dropout < 1:
            raise UserInputError(
                f"RLConfig: lora_dropout must be in [0, 1), got {self.lora_dropout}."
            )
        if self.kl_ratio_correction is not None and (self.kl_placement != "loss" or self.beta == 0):
            raise UserInputError(
                "RLConfig: kl_ratio_correction applies to a KL loss term (kl_in=loss, beta > 0); "
                "leave it unset."
            )
        if self.algo == "online_dpo":
            self.dpo_loss_config()  # unknown losses and arguments fail here
        if self.algo == "iterative_dpo":
            self._check_iterative()

    def _check_iterative(self) -> None:
        if self.num_iterations != 1:
            raise UserInputError(
                f"RLConfig: num_iterations = {self.num_iterations} is not used by iterative_dpo "
                "(each round trains on its pairs for --epochs or --max-steps); leave it at 1."
            )
        if self.round_reference not in (None, "start", "original"):
            raise UserInputError(
                f"RLConfig: round_reference must be 'start' or 'original', got "
                f"{self.round_reference!r}."
            )
        if not self.save_model:
            raise UserInputError(
                "RLConfig: iterative_dpo saves every round's model (the next round generates "
                "from it); save_model cannot be turned off."
            )
        if self.lora and not self.merge_lora:
            raise UserInputError(
                "RLConfig: iterative_dpo merges each round's LoRA adapters into the model the "
                "next round starts from; merge_lora cannot be turned off."
            )
        self.align_config(max_prompt_length=1)  # unknown losses and arguments fail here
        if self.round_reference == "original" and not self.needs_reference:
            raise UserInputError(
                f"RLConfig: loss {self.dpo_loss!r} uses no reference, so round_reference "
                "does not apply; leave it unset."
            )

    def _require_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UserInputError(
                f"RLConfig: {name} must be an integer >= {minimum}, got {value!r}."
            )

    # -- the values in effect (algorithm defaults resolved)

    @property
    def generations(self) -> int:
        """Samples per prompt in effect."""
        if self.num_generations is not None:
            return self.num_generations
        return 2 if self.algo == "online_dpo" else 4

    @property
    def kl_placement(self) -> Literal["loss", "reward"]:
        if self.kl_in is not None:
            return self.kl_in
        return "loss" if self.algo == "grpo" else "reward"

    @property
    def kl(self) -> Literal["k1", "k2", "k3"]:
        if self.kl_estimator is not None:
            return self.kl_estimator
        return "k3" if self.kl_placement == "loss" else "k1"

    @property
    def kl_in_reward(self) -> bool:
        """Whether a policy-gradient algorithm subtracts beta * KL from the reward."""
        policy_gradient = self.algo in POLICY_GRADIENT_ALGORITHMS
        return policy_gradient and self.beta > 0 and self.kl_placement == "reward"

    @property
    def kl_in_loss(self) -> bool:
        """Whether a policy-gradient algorithm adds beta * KL to the loss."""
        policy_gradient = self.algo in POLICY_GRADIENT_ALGORITHMS
        return policy_gradient and self.beta > 0 and self.kl_placement == "loss"

    @property
    def ratio_corrected_kl(self) -> bool:
        return self.kl_ratio_correction is not False

    @property
    def reward_scaling(self) -> Literal["group", "batch", "none"]:
        return self.scale_rewards or "group"

    @property
    def clip_range(self) -> tuple[float, float]:
        low = 0.2 if self.clip_low is None else self.clip_low
        high = 0.2 if self.clip_high is None else self.clip_high
        return low, high

    @property
    def aggregation(self) -> Literal["token-mean", "sequence-mean", "constant"]:
        return self.loss_aggregation or "token-mean"

    @property
    def num_rounds(self) -> int:
        """iterative_dpo: rounds in effect."""
        return 3 if self.rounds is None else self.rounds

    @property
    def needs_reference(self) -> bool:
        """Whether a reference model is scored (a KL term, or online_dpo with a reference loss)."""
        if self.algo == "iterative_dpo":
            from prefkit.losses.preference import LOSSES

            return LOSSES[self.dpo_loss or "sigmoid"].uses_reference
        if self.algo == "online_dpo":
            return self.dpo_loss_spec().uses_reference
        return self.beta > 0

    def sampling_config(self, seed: int) -> Any:
        from prefkit.generate.config import SamplingConfig

        return SamplingConfig(
            num_samples=self.generations,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            seed=seed,
        )

    def dpo_loss_spec(self) -> Any:
        from prefkit.losses.preference import LOSSES

        name = self.dpo_loss or "sigmoid"
        spec = LOSSES.get(name)
        if spec is None or spec.kind != "paired" or spec.extra_inputs:
            paired = sorted(
                n for n, s in LOSSES.items() if s.kind == "paired" and not s.extra_inputs
            )
            raise UserInputError(
                f"RLConfig: dpo_loss {name!r} is not a paired loss without running state; "
                f"choose one of {paired}."
            )
        return spec

    def dpo_loss_config(self) -> Any:
        """The paired loss's config: dpo_loss_args, with beta from :attr:`beta` when it has one."""
        spec = self.dpo_loss_spec()
        accepted = {item.name for item in dataclasses.fields(spec.config_type)}
        arguments: dict[str, Any] = dict(self.dpo_loss_args)
        if "beta" in arguments:
            raise UserInputError(
                "RLConfig: give the loss's beta as beta (--beta), not in dpo_loss_args."
            )
        unknown = sorted(set(arguments) - accepted)
        if unknown:
            raise UserInputError(
                f"RLConfig: loss {spec.name!r} does not take {unknown}; its arguments are "
                f"{sorted(accepted)}."
            )
        if "beta" in accepted:
            arguments["beta"] = self.beta
        try:
            return spec.config_type(**arguments)
        except ValueError as error:
            raise UserInputError(f"RLConfig: loss {spec.name!r}: {error}") from error

    def align_config(self, *, max_prompt_length: int) -> Any:
        """iterative_dpo: the :class:`~prefkit.align.trainer.AlignConfig` of each round's DPO.

        The loss is dpo_loss with dpo_loss_args and beta; prompts keep their last
        ``max_prompt_length`` tokens and completions their first max_new_tokens (+ EOS),
        as they were generated. Reference log-probs are computed once per round, in
        memory (not in the disk cache: each round has a new reference)."""
        from prefkit.align.trainer import AlignConfig
        from prefkit.losses.preference import LOSSES

        name = self.dpo_loss or "sigmoid"
        spec = LOSSES.get(name)
        if spec is None:
            raise UserInputError(
                f"RLConfig: unknown dpo_loss {name!r}; the losses are {sorted(LOSSES)}."
            )
        if spec.kind == "listwise":
            raise UserInputError(
                f"RLConfig: dpo_loss {name!r} is a listwise loss, but iterative_dpo trains on "
                "best-worst pairs; choose a paired or unpaired loss."
            )
        accepted = {item.name for item in dataclasses.fields(spec.config_type)}
        arguments: dict[str, Any] = dict(self.dpo_loss_args)
        if "beta" in arguments:
            raise UserInputError(
                "RLConfig: give the loss's beta as beta (--beta), not in dpo_loss_args."
            )
        if "beta" in accepted:
            arguments["beta"] = self.beta
        try:
            return AlignConfig(
                loss=name,
                loss_args=arguments,
                max_prompt_length=max_prompt_length,
                max_length=max_prompt_length + self.max_new_tokens + 1,
                precompute_ref=True,
                cache_ref=False,
                lora=self.lora,
                lora_r=self.lora_r,
                lora_alpha=self.lora_alpha,
                lora_dropout=self.lora_dropout,
                lora_target_modules=self.lora_target_modules,
                merge_lora=True,
            )
        except UserInputError as error:
            raise UserInputError(f"RLConfig: {error}") from error
