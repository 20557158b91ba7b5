"""Online-RL pieces: advantages, per-token KL estimators, the clipped policy loss, reductions.

Every function is a small pure function of tensors. Shapes: ``P`` prompts, ``G``
samples per prompt, ``B`` sequences, ``T`` completion tokens; a ``mask`` is a
bool ``(B, T)`` tensor, true on completion tokens and false on prompt and padding
tokens. Values at masked-out positions never reach a result: they are replaced
before any ``exp`` or square, so a padding position holding ``inf`` or ``nan``
changes nothing, and every per-token output is exactly 0 there.

Departures from the papers, and differences from TRL:

- ``grpo_advantages``: the standard deviation is the unbiased one (Bessel's
  correction), as TRL's ``GRPOTrainer``; the GRPO paper does not say which.
  ``eps`` is added to the standard deviation, as TRL (1e-4 there and here).
- ``reinforce_pp_advantages``: as OpenRLHF, the per-token reward is
  ``-beta * kl_t`` with the sequence reward added on the last completion token,
  the return is the undiscounted sum of the rewards from that token on, and the
  returns are whitened over every completion token of the batch.
- ``kl_per_token``: ``k3`` is computed as ``expm1(-d) + d`` and clamped at 0, so
  rounding cannot make it negative; ``k2`` is a square and ``k1`` may be negative
  (it is unbiased but not a divergence sample by sample).

This module imports only torch and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]
KLEstimator = Literal["k1", "k2", "k3"]
LossAggregation = Literal["token-mean", "sequence-mean", "constant"]


def _check_mask(values: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if values.shape != mask.shape:
        raise ValueError(
            f"values have shape {tuple(values.shape)} but the mask has {tuple(mask.shape)}"
        )


def _check_groups(rewards: torch.Tensor, minimum: int) -> None:
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must have shape (prompts, samples per prompt), got {tuple(rewards.shape)}"
        )
    if rewards.shape[1] < minimum:
        raise ValueError(
            f"this advantage needs at least {minimum} samples per prompt, got {rewards.shape[1]}"
        )


def clip_rewards(rewards: torch.Tensor, limit: float) -> torch.Tensor:
    """Clamp rewards to ``[-limit, limit]`` (``limit`` > 0), before any advantage."""
    if not limit > 0:
        raise ValueError(f"the reward clip limit must be > 0, got {limit}")
    return rewards.clamp(-limit, limit)


def _valid_mask(rewards: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(rewards, dtype=torch.bool)
    _check_mask(rewards, valid)
    return valid


def grpo_advantages(
    rewards: torch.Tensor,
    scale_rewards: ScaleRewards = "group",
    eps: float = 1e-4,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """GRPO group-normalised advantages ``(P, G)`` from rewards ``(P, G)``.

    ``group``: (r - mean of the group) / (std of the group + eps), Shao et al. 2024
    (DeepSeekMath), section 4.1.2; ``batch``: divide by the std of every reward of
    the batch instead; ``none``: no division (Dr. GRPO, Liu et al. 2025, section 3.1).
    ``valid`` ``(P, G)`` bool marks the samples that have a reward; the others
    (a reward function answered None) count in no mean or std and get advantage 0.
    A group with one valid sample has no spread and gets 0.
    """
    _check_groups(rewards, 2)
    valid = _valid_mask(rewards, valid)
    zeros = torch.zeros_like(rewards)
    kept = torch.where(valid, rewards, zeros)
    counts = valid.sum(dim=1, keepdim=True)
    means = kept.sum(dim=1, keepdim=True) / counts.clamp_min(1)
    centered = torch.where(valid, rewards - means, zeros)
    if scale_rewards == "none":
        return centered  # Dr. GRPO: A_i = r_i - mean(r), no std division
    if scale_rewards == "group":
        # DeepSeekMath 4.1.2: (r_i - mean(r)) / std(r), std with Bessel's correction as TRL
        variance = centered.square().sum(dim=1, keepdim=True) / (counts - 1).clamp_min(1)
    elif scale_rewards == "batch":
        batch_mean = kept.sum() / valid.sum().clamp_min(1)
        batch_centered = torch.where(valid, rewards - batch_mean, zeros)
        variance = batch_centered.square().sum() / (valid.sum() - 1).clamp_min(1)
    else:
        raise ValueError(f"scale_rewards must be group, batch or none, got {scale_rewards!r}")
    # a zero advantage stays 0 even at eps = 0 (a group of one sample: 0 / 0)
    return torch.where(centered == 0, zeros, centered / (variance.sqrt() + eps))


def rloo_advantages(rewards: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO leave-one-out advantages ``(P, G)``: ``r_i - mean_{j != i} r_j``.

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free"), the
    RLOO estimator of Ahmadian et al. 2024 ("Back to Basics"), section 3.
    ``valid`` ``(P, G)`` bool marks the samples that have a reward: the others
    are in no baseline and get advantage 0, as does a valid sample with no other
    valid sample in its group.
    """
    _check_groups(rewards, 2)
    valid = _valid_mask(rewards, valid)
    zeros = torch.zeros_like(rewards)
    kept = torch.where(valid, rewards, zeros)
    others = valid.sum(dim=1, keepdim=True) - 1  # valid samples besides this one
    others_mean = (kept.sum(dim=1, keepdim=True) - kept) / others.clamp_min(1)
    # RLOO: r_i - 1/(k-1) sum_{j!=i} r_j
    return torch.where(valid & (others > 0), rewards - others_mean, zeros)


def missing_eos_penalty(
    rewards: torch.Tensor, ended_with_eos: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Subtract ``penalty`` (>= 0) from the reward of every completion cut before its EOS, as TRL."""
    if not penalty >= 0:
        raise ValueError(f"the missing-EOS penalty must be >= 0, got {penalty}")
    if ended_with_eos.dtype != torch.bool or ended_with_eos.shape != rewards.shape:
        raise ValueError("ended_with_eos must be a bool tensor of the rewards' shape")
    return torch.where(ended_with_eos, rewards, rewards - penalty)


def remax_advantages(rewards: torch.Tensor, greedy_rewards: torch.Tensor) -> torch.Tensor:
    """ReMax advantages ``(P, G)``: each sample's reward minus its prompt's greedy reward ``(P,)``.

    Li et al. 2023 (ReMax), Algorithm 1: the baseline is the reward of the greedy
    completion of the same prompt.
    """
    _check_groups(rewards, 1)
    if greedy_rewards.shape != rewards.shape[:1]:
        raise ValueError(
            f"greedy_rewards must have shape ({rewards.shape[0]},), got {tuple(greedy_rewards.shape)}"
        )
    return rewards - greedy_rewards[:, None]  # ReMax Algorithm 1: r(x, y) - r(x, y_greedy)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(values - mean) / (std + eps) over the masked-in positions; 0 elsewhere.

    The std is the population one (no Bessel correction), over every masked-in
    value of the tensor, so the statistics are global across the batch.
    """
    _check_mask(values, mask)
    count = mask.sum()
    if count == 0:
        raise ValueError("whiten needs at least one masked-in value")
    kept = torch.where(mask, values, torch.zeros_like(values))
    mean = kept.sum() / count
    centered = torch.where(mask, values - mean, torch.zeros_like(values))
    std = (centered.square().sum() / count).sqrt()
    return centered / (std + eps)


def reinforce_pp_advantages(
    sequence_rewards: torch.Tensor,
    token_kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++ per-token advantages ``(B, T)``: globally whitened returns.

    Hu 2025 (REINFORCE++), as implemented in OpenRLHF: the token reward is ``-beta * kl_t`` plus the
    sequence reward ``(B,)`` on the last completion token; the return is the sum of
    the rewards from the token on (gamma = 1); the returns are whitened over every
    completion token of the batch. Every row needs one completion token.
    """
    _check_mask(token_kl, mask)
    if not mask.any(dim=1).all():
        raise ValueError("every sequence needs at least one completion token")
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(dim=1).values  # (B,)
    token_rewards = torch.where(mask, -beta * token_kl, torch.zeros_like(token_kl))
    final = torch.zeros_like(token_rewards)
    final[torch.arange(mask.shape[0]), last] = sequence_rewards.to(token_rewards.dtype)
    token_rewards = token_rewards + final
    returns = token_rewards.flip(1).cumsum(1).flip(1)  # G_t = sum_{s >= t} r_s
    return whiten(returns, mask, eps)  # REINFORCE++: global advantage normalisation


def kl_per_token(
    logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: KLEstimator
) -> torch.Tensor:
    """Per-token estimate ``(B, T)`` of KL(pi || pi_ref) on tokens sampled from pi; 0 on masked-out tokens.

    With d = log pi - log pi_ref (Schulman 2020, "Approximating KL Divergence"):
    k1 = d (unbiased, may be negative), k2 = d^2 / 2 (biased, >= 0),
    k3 = exp(-d) - 1 + d (unbiased, >= 0).
    """
    _check_mask(logps, mask)
    _check_mask(ref_logps, mask)
    zeros = torch.zeros_like(logps)
    log_ratio = torch.where(mask, logps - ref_logps, zeros)  # padding never reaches exp
    if estimator == "k1":
        return log_ratio  # Schulman 2020: k1 = log(q/p) with q = pi, p = pi_ref
    if estimator == "k2":
        return 0.5 * log_ratio.square()  # Schulman 2020: k2 = (log(p/q))^2 / 2
    if estimator == "k3":
        # Schulman 2020: k3 = (p/q - 1) - log(p/q), p/q = exp(-d); expm1 keeps precision near d = 0
        return (torch.expm1(-log_ratio) + log_ratio).clamp_min(0.0)
    raise ValueError(f"estimator must be k1, k2 or k3, got {estimator!r}")


@dataclass(frozen=True)
class PolicyLossOutput:
    """The clipped policy loss of a batch.

    Attributes:
        token_losses: ``(B, T)`` per-token loss attached to the graph, 0 on masked-out tokens.
        ratios: ``(B, T)`` detached importance ratios pi / pi_old, 1 on masked-out tokens.
        clipped: ``(B, T)`` bool, true where the clipped term was the active one.
    """

    token_losses: torch.Tensor
    ratios: torch.Tensor
    clipped: torch.Tensor


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> PolicyLossOutput:
    """PPO's clipped surrogate per token, against the log-probs at generation time.

    ``advantages`` is ``(B,)`` (one per sequence, broadcast over its tokens) or
    ``(B, T)``. Loss = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)
    with rho = exp(logps - old_logps): Schulman et al. 2017, eq. 7; separate low
    and high limits are DAPO's clip-higher (Yu et al. 2025, section 3.1).
    """
    _check_mask(logps, mask)
    _check_mask(old_logps, mask)
    if not (clip_low >= 0 and clip_high >= 0):
        raise ValueError(f"clip limits must be >= 0, got {clip_low} and {clip_high}")
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logps)
    if advantages.shape != logps.shape:
        raise ValueError(
            f"advantages must have shape ({logps.shape[0]},) or {tuple(logps.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    advantages = torch.where(mask, advantages.detach(), torch.zeros_like(logps))
    log_ratio = torch.where(mask, logps - old_logps.detach(), torch.zeros_like(logps))
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped_term = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    token_losses = -torch.minimum(unclipped, clipped_term)  # PPO eq. 7 (negated: we minimise)
    token_losses = torch.where(mask, token_losses, torch.zeros_like(token_losses))
    clipped = mask & (clipped_term < unclipped)
    return PolicyLossOutput(token_losses, ratio.detach(), clipped)


def aggregate_loss(
    token_losses: torch.Tensor,
    mask: torch.Tensor,
    mode: LossAggregation,
    *,
    num_tokens: int | None = None,
    num_sequences: int | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Reduce per-token losses ``(B, T)`` to a scalar.

    - ``token-mean``: sum over every completion token / ``num_tokens`` (DAPO's token-level
      loss, Yu et al. 2025, section 3.3);
    - ``sequence-mean``: each sequence's mean over its tokens, summed and divided
      by ``num_sequences`` (GRPO, Shao et al. 2024, eq. 3);
    - ``constant``: sum over every token / (``num_sequences`` * ``max_length``)
      (Dr. GRPO, Liu et al. 2025, section 3.1).

    The normalisers default to this batch's token count, sequence count and width
    ``T``. When one optimizer step is split into micro-batches (gradient
    accumulation, or processes), pass the whole step's values: the micro-batch
    results then sum to the whole batch's loss.
    """
    _check_mask(token_losses, mask)
    kept = torch.where(mask, token_losses, torch.zeros_like(token_losses))
    sequences = num_sequences if num_sequences is not None else token_losses.shape[0]
    if mode == "token-mean":
        tokens = num_tokens if num_tokens is not None else int(mask.sum())
        return kept.sum() / max(tokens, 1)
    if mode == "sequence-mean":
        lengths = mask.sum(dim=1).clamp_min(1)
        # GRPO eq. 3: 1/G sum_i 1/|o_i| sum_t
        return (kept.sum(dim=1) / lengths).sum() / max(sequences, 1)
    if mode == "constant":
        width = max_length if max_length is not None else token_losses.shape[1]
        return kept.sum() / max(sequences * width, 1)  # Dr. GRPO: divide by a constant
    raise ValueError(f"mode must be token-mean, sequence-mean or constant, got {mode!r}")
