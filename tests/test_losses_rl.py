"""Hand-worked values, masking and invariance of prefkit.losses.rl.

Useful values: exp(-0.5) = 0.6065306597126334, e = 2.718281828459045,
sqrt(1.6) = 1.2649110640673518, sqrt(0.136) = 0.36878177829171543.
"""

from __future__ import annotations

import math

import pytest
import torch

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
    whiten,
)

D = torch.float64


def _close(actual: torch.Tensor, expected: list) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=D), rtol=1e-9, atol=1e-12)


def test_grpo_group_scaling() -> None:
    """Rows [1, 2, 3] (mean 2, unbiased std 1) and [0, 0, 0] (std 0: all zero, no division by 0)."""
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=D)
    _close(grpo_advantages(rewards, "group", eps=0.0)[:1], [[-1.0, 0.0, 1.0]])
    _close(grpo_advantages(rewards, "group"), [[-1 / 1.0001, 0.0, 1 / 1.0001], [0.0, 0.0, 0.0]])


def test_grpo_batch_scaling_and_none() -> None:
    """Batch std of [1, 2, 3, 0, 0, 0]: mean 1, squared deviations sum to 8, 8 / 5 = 1.6."""
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=D)
    std = math.sqrt(1.6)
    _close(grpo_advantages(rewards, "batch", eps=0.0), [[-1 / std, 0.0, 1 / std], [0.0] * 3])
    _close(grpo_advantages(rewards, "none"), [[-1.0, 0.0, 1.0], [0.0] * 3])
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo_advantages(rewards, "rank")  # type: ignore[arg-type]


def test_rloo_leave_one_out() -> None:
    """[1, 2, 3]: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5; [0, 4]: -4, 4."""
    _close(rloo_advantages(torch.tensor([[1.0, 2.0, 3.0]], dtype=D)), [[-1.5, 0.0, 1.5]])
    _close(rloo_advantages(torch.tensor([[0.0, 4.0]], dtype=D)), [[-4.0, 4.0]])
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(torch.tensor([[1.0]]))


def test_samples_without_reward_are_left_out_of_their_group() -> None:
    """Row [1, none, 3, 2] is the group [1, 3, 2] (mean 2, std 1, leave-one-out means 2.5, 1.5, 2);
    row [5, none] has one valid sample: no spread, no baseline, advantage 0."""
    rewards = torch.tensor(
        [[1.0, math.nan, 3.0, 2.0], [5.0, math.nan, math.nan, math.nan]], dtype=D
    )
    valid = ~rewards.isnan()
    _close(grpo_advantages(rewards, "group", 0.0, valid), [[-1.0, 0.0, 1.0, 0.0], [0.0] * 4])
    _close(rloo_advantages(rewards, valid), [[-1.5, 0.0, 1.5, 0.0], [0.0] * 4])
    # batch: valid rewards 1, 3, 2, 5 (mean 2.75, squared deviations 3.0625 + 0.0625 + 0.5625 + 5.0625 = 8.75)
    std = math.sqrt(8.75 / 3)
    _close(
        grpo_advantages(rewards, "batch", 0.0, valid), [[-1 / std, 0.0, 1 / std, 0.0], [0.0] * 4]
    )


def test_missing_eos_penalty() -> None:
    rewards = torch.tensor([1.0, 2.0], dtype=D)
    _close(missing_eos_penalty(rewards, torch.tensor([True, False]), 0.5), [1.0, 1.5])
    with pytest.raises(ValueError, match=">= 0"):
        missing_eos_penalty(rewards, torch.tensor([True, False]), -1.0)


def test_remax_greedy_baseline() -> None:
    """Prompt 0: samples 1, 3, greedy 2 -> -1, 1; prompt 1: samples 0, 0, greedy -1 -> 1, 1."""
    rewards = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=D)
    _close(remax_advantages(rewards, torch.tensor([2.0, -1.0], dtype=D)), [[-1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="greedy_rewards"):
        remax_advantages(rewards, torch.tensor([2.0], dtype=D))


def test_clip_rewards() -> None:
    _close(clip_rewards(torch.tensor([-7.0, 0.5, 9.0], dtype=D), 5.0), [-5.0, 0.5, 5.0])
    with pytest.raises(ValueError, match="> 0"):
        clip_rewards(torch.tensor([1.0]), 0.0)


def test_whiten_ignores_padding() -> None:
    """Kept values 1 and 3: mean 2, population std 1 -> -1, 1; padding (nan) -> 0."""
    values = torch.tensor([[1.0, math.nan], [3.0, math.inf]], dtype=D)
    mask = torch.tensor([[True, False], [True, False]])
    _close(whiten(values, mask, eps=0.0), [[-1.0, 0.0], [1.0, 0.0]])


def test_reinforce_pp_returns_and_global_whitening() -> None:
    """beta 1, rewards 1 and 2, kl row 0 = [0.1, 0.2, pad], row 1 = [0, 0, 0.5].

    Token rewards: row 0 [-0.1, -0.2 + 1, 0], row 1 [0, 0, -0.5 + 2];
    returns: row 0 [0.7, 0.8], row 1 [1.5, 1.5, 1.5]; mean 6 / 5 = 1.2,
    deviations [-0.5, -0.4, 0.3, 0.3, 0.3], variance 0.68 / 5 = 0.136.
    """
    kl = torch.tensor([[0.1, 0.2, math.nan], [0.0, 0.0, 0.5]], dtype=D)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = reinforce_pp_advantages(torch.tensor([1.0, 2.0], dtype=D), kl, mask, 1.0, 0.0)
    std = math.sqrt(0.136)
    _close(advantages, [[-0.5 / std, -0.4 / std, 0.0], [0.3 / std] * 3])


def test_kl_estimators_by_hand() -> None:
    """d = log pi - log pi_ref = [0.5, -1]; k3 = exp(-d) - 1 + d."""
    logps = torch.tensor([[-1.0, -2.0, 0.0]], dtype=D)
    ref_logps = torch.tensor([[-1.5, -1.0, -50.0]], dtype=D)
    mask = torch.tensor([[True, True, False]])
    _close(kl_per_token(logps, ref_logps, mask, "k1"), [[0.5, -1.0, 0.0]])
    _close(kl_per_token(logps, ref_logps, mask, "k2"), [[0.125, 0.5, 0.0]])
    _close(
        kl_per_token(logps, ref_logps, mask, "k3"),
        [[0.6065306597126334 - 0.5, math.e - 2.0, 0.0]],
    )
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_per_token(logps, ref_logps, mask, "k4")  # type: ignore[arg-type]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_does_not_depend_on_padding(estimator: str) -> None:
    """The same two sequences padded to width 3 and to width 7 with garbage give the same KL and gradient."""
    generator = torch.Generator().manual_seed(0)
    lengths = [3, 1]
    policy = [torch.randn(n, generator=generator, dtype=D) for n in lengths]
    reference = [torch.randn(n, generator=generator, dtype=D) for n in lengths]

    def padded(width: int, fill: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logps = torch.full((2, width), fill, dtype=D)
        ref = torch.full((2, width), -fill, dtype=D)
        mask = torch.zeros(2, width, dtype=torch.bool)
        for row, n in enumerate(lengths):
            logps[row, :n], ref[row, :n], mask[row, :n] = policy[row], reference[row], True
        return logps.requires_grad_(), ref, mask

    totals, grads = [], []
    for width, fill in [(3, 0.0), (7, 1e4), (7, math.inf)]:
        logps, ref, mask = padded(width, fill)
        kl = kl_per_token(logps, ref, mask, estimator)  # type: ignore[arg-type]
        assert torch.all(kl[~mask] == 0)
        kl.sum().backward()
        totals.append(kl.sum(dim=1).detach())
        grads.append(logps.grad[:, :3].clone())
        assert torch.isfinite(logps.grad).all() and torch.all(logps.grad[~mask] == 0)
    for total, grad in zip(totals[1:], grads[1:], strict=True):
        torch.testing.assert_close(total, totals[0], rtol=0, atol=0)
        torch.testing.assert_close(grad, grads[0], rtol=0, atol=0)


def test_k2_and_k3_never_negative_while_k1_can_be() -> None:
    """Small log-ratios in float32: the naive exp(-d) - 1 + d rounds below 0; k3 here never does."""
    d = torch.linspace(-1e-3, 1e-3, 20001, dtype=torch.float32).reshape(1, -1)
    zeros = torch.zeros_like(d)
    mask = torch.ones_like(d, dtype=torch.bool)
    naive = torch.exp(-d) - 1 + d
    assert (naive < 0).any()
    assert (kl_per_token(d, zeros, mask, "k3") >= 0).all()
    assert (kl_per_token(d, zeros, mask, "k2") >= 0).all()
    assert (kl_per_token(d, zeros, mask, "k1") < 0).any()


def test_clipped_policy_loss_by_hand() -> None:
    """old log-probs 0, ratios 1.5, 0.5, 1.1 (padding last), clip 0.2.

    A = 1:  min(1.5, 1.2) = 1.2 (clipped), min(0.5, 0.8) = 0.5, min(1.1, 1.1) = 1.1 -> losses -1.2, -0.5, -1.1.
    A = -1: min(-1.5, -1.2) = -1.5, min(-0.5, -0.8) = -0.8 (clipped), -1.1 -> losses 1.5, 0.8, 1.1.
    d loss / d logp = -rho * A where unclipped, 0 where clipped.
    """
    ratios = torch.tensor([1.5, 0.5, 1.1], dtype=D)
    logps = torch.cat([ratios.log(), torch.tensor([math.inf], dtype=D)]).repeat(2, 1)
    logps.requires_grad_()
    old = torch.tensor([0.0, 0.0, 0.0, -math.inf], dtype=D).repeat(2, 1)
    mask = torch.tensor([True, True, True, False]).repeat(2, 1)
    out = clipped_policy_loss(logps, old, torch.tensor([1.0, -1.0], dtype=D), mask)
    _close(out.token_losses.detach(), [[-1.2, -0.5, -1.1, 0.0], [1.5, 0.8, 1.1, 0.0]])
    assert out.clipped.tolist() == [[True, False, False, False], [False, True, False, False]]
    out.token_losses.sum().backward()
    _close(logps.grad, [[0.0, -0.5, -1.1, 0.0], [1.5, 0.0, 1.1, 0.0]])


def test_clipped_policy_loss_asymmetric_clip_and_token_advantages() -> None:
    """clip_high 0.28 (DAPO): ratio 1.25 with A = 1 is inside the range -> loss -1.25, not clipped."""
    logps = torch.tensor([[math.log(1.25), math.log(1.25)]], dtype=D)
    mask = torch.ones(1, 2, dtype=torch.bool)
    advantages = torch.tensor([[1.0, 2.0]], dtype=D)
    out = clipped_policy_loss(logps, torch.zeros_like(logps), advantages, mask, 0.2, 0.28)
    _close(out.token_losses, [[-1.25, -2.5]])
    assert not out.clipped.any()


def test_aggregation_by_hand() -> None:
    """Losses row 0 [1, 2, pad], row 1 [3, pad, pad]: token-mean 6 / 3, sequence-mean (1.5 + 3) / 2, constant 6 / (2 * 3)."""
    losses = torch.tensor([[1.0, 2.0, math.nan], [3.0, math.nan, math.nan]], dtype=D)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert aggregate_loss(losses, mask, "token-mean").item() == 2.0
    assert aggregate_loss(losses, mask, "sequence-mean").item() == 2.25
    assert aggregate_loss(losses, mask, "constant").item() == 1.0
    assert aggregate_loss(losses, mask, "constant", max_length=6).item() == 0.5


@pytest.mark.parametrize("mode", ["token-mean", "sequence-mean", "constant"])
def test_aggregation_invariant_to_micro_batches_and_ranks(mode: str) -> None:
    """One step of 6 sequences split into 3 micro-batches (or ranks), each padded to its own width,
    with the step's normalisers, sums to the whole batch's loss."""
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 1, 3, 2, 4, 4]
    values = [torch.randn(n, generator=generator, dtype=D) for n in lengths]

    def batch(rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(lengths[i] for i in rows)
        losses = torch.full((len(rows), width), math.nan, dtype=D)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for k, i in enumerate(rows):
            losses[k, : lengths[i]], mask[k, : lengths[i]] = values[i], True
        return losses, mask

    norms = {"num_tokens": sum(lengths), "num_sequences": len(lengths), "max_length": 5}
    whole = aggregate_loss(*batch(list(range(6))), mode, **norms)  # type: ignore[arg-type]
    parts = sum(
        aggregate_loss(*batch(rows), mode, **norms)  # type: ignore[arg-type]
        for rows in ([0, 1], [2, 3], [4, 5])
    )
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(whole)
