"""Tests for prefkit.losses.reward: hand-worked values, gradients, stability, shapes.

Notation in the docstrings: d = r_a - r_b, sp(x) = softplus(x) = log(1 + e^x),
so -log sigmoid(d) = sp(-d). Useful constants:
    sp(-1) = log(1 + e^-1) = 0.3132616875
    sp(1)  = log(1 + e)    = 1.3132616875
    sp(2)  = log(1 + e^2)  = 2.1269280110
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck

from conftest import top_level_imports
from prefkit.losses import reward as R

SP_MINUS_1 = math.log1p(math.exp(-1.0))  # 0.3132616875
SP_1 = math.log1p(math.e)  # 1.3132616875
SP_2 = math.log1p(math.exp(2.0))  # 2.1269280110


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def assert_close(actual: torch.Tensor, expected: list[float], atol: float = 1e-9) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0
    )


# ---------------------------------------------------------------------------
# module hygiene


def test_module_imports_only_torch_and_stdlib():
    """The loss module is pure math: its top-level imports are torch and stdlib only."""
    imported = top_level_imports(Path(R.__file__))
    assert imported <= {"__future__", "dataclasses", "torch"}, imported


def test_metrics_are_detached_and_per_example():
    rewards_a = torch.randn(4, requires_grad=True)
    rewards_b = torch.randn(4, requires_grad=True)
    outcomes = torch.tensor([0, 1, 2, 0])
    outputs = [
        R.bradley_terry_loss(rewards_a, rewards_b),
        R.soft_label_loss(rewards_a, rewards_b, 0.5),
        R.davidson_tie_loss(rewards_a, rewards_b, outcomes, torch.tensor(0.0)),
        R.rao_kupper_tie_loss(rewards_a, rewards_b, outcomes, 0.5),
        R.reward_centering_penalty(rewards_a, rewards_b, 0.1),
        R.plackett_luce_loss(
            torch.randn(4, 3, requires_grad=True), torch.randn(4, 3), torch.ones(4, 3, dtype=bool)
        ),
    ]
    for output in outputs:
        assert output.losses.shape == (4,)
        assert output.losses.requires_grad
        for name, value in output.metrics.items():
            assert not value.requires_grad, name
            assert value.shape == (4,), name


# ---------------------------------------------------------------------------
# Bradley-Terry and variants: hand-worked values


def test_bradley_terry_hand_values():
    """chosen - rejected = d = [1, -1, 0]:
    d = 1  -> -log sigmoid(1)  = log(1 + e^-1) = 0.3132616875
    d = -1 -> -log sigmoid(-1) = log(1 + e)    = 1.3132616875
    d = 0  -> log 2 = 0.6931471806
    A swapped argument order would give [1.313, 0.313, 0.693].
    """
    output = R.bradley_terry_loss(f64(1.0, 0.0, 3.0), f64(0.0, 1.0, 3.0))
    assert_close(output.losses, [SP_MINUS_1, SP_1, math.log(2)])
    assert_close(output.metrics["reward_margin"], [1.0, -1.0, 0.0])
    assert_close(output.metrics["accuracy"], [1.0, 0.0, 0.0])


def test_bradley_terry_margin_hand_values():
    """The margin is subtracted from d (Llama 2, eq. 2):
    chosen 2, rejected 0, m = 1: -log sigmoid(2 - 0 - 1) = sp(-1) = 0.3132616875
    chosen 0, rejected 0, m = 1: -log sigmoid(0 - 0 - 1) = sp(1)  = 1.3132616875
    Adding the margin instead would give sp(-3) = 0.0486 and sp(-1) = 0.3133.
    """
    output = R.bradley_terry_margin_loss(f64(2.0, 0.0), f64(0.0, 0.0), f64(1.0, 1.0))
    assert_close(output.losses, [SP_MINUS_1, SP_1])
    assert_close(output.metrics["reward_margin"], [2.0, 0.0])
    scalar = R.bradley_terry_margin_loss(f64(2.0, 0.0), f64(0.0, 0.0), 1.0)
    assert_close(scalar.losses, [SP_MINUS_1, SP_1])


def test_bradley_terry_margin_zero_is_bradley_terry():
    chosen, rejected = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(
        R.bradley_terry_margin_loss(chosen, rejected, 0.0).losses,
        R.bradley_terry_loss(chosen, rejected).losses,
    )


def test_strength_scaled_hand_values():
    """-m log sigmoid(d):
    d = 1,  m = 3: 3 * 0.3132616875 = 0.9397850626
    d = 1,  m = 1: 0.3132616875
    d = -1, m = 2: 2 * 1.3132616875 = 2.6265233750
    """
    output = R.strength_scaled_bradley_terry_loss(
        f64(1.0, 1.0, 0.0), f64(0.0, 0.0, 1.0), f64(3.0, 1.0, 2.0)
    )
    assert_close(output.losses, [3 * SP_MINUS_1, SP_MINUS_1, 2 * SP_1])


def test_strength_scaled_rejects_negative_strength():
    with pytest.raises(ValueError, match="non-negative"):
        R.strength_scaled_bradley_terry_loss(f64(1.0), f64(0.0), f64(-1.0))


def test_soft_label_hand_values():
    """-p log sigmoid(d) - (1 - p) log sigmoid(-d) = p sp(-d) + (1 - p) sp(d):
    p = 0.75, d = 1:  0.75 * 0.3132616875 + 0.25 * 1.3132616875 = 0.5632616875
    p = 0.75, d = -1: 0.75 * 1.3132616875 + 0.25 * 0.3132616875 = 1.0632616875
    p = 0.5,  d = 0:  log 2
    Swapping a and b exchanges the first two values.
    """
    output = R.soft_label_loss(f64(1.0, 0.0, 2.0), f64(0.0, 1.0, 2.0), f64(0.75, 0.75, 0.5))
    assert_close(output.losses, [0.5632616875182228, 1.0632616875182228, math.log(2)])


def test_soft_label_with_hard_votes_is_bradley_terry():
    """p = 1 is BT with a chosen; p = 0 is BT with b chosen."""
    rewards_a = torch.randn(16, dtype=torch.float64)
    rewards_b = torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(
        R.soft_label_loss(rewards_a, rewards_b, 1.0).losses,
        R.bradley_terry_loss(rewards_a, rewards_b).losses,
    )
    torch.testing.assert_close(
        R.soft_label_loss(rewards_a, rewards_b, torch.zeros(16, dtype=torch.float64)).losses,
        R.bradley_terry_loss(rewards_b, rewards_a).losses,
    )


def test_soft_label_rejects_out_of_range_fraction():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        R.soft_label_loss(f64(1.0), f64(0.0), f64(1.5))


def test_reward_centering_hand_values_and_combination():
    """c (r_a + r_b)^2 with c = 0.1:
    r = (1, 2):  0.1 * 9 = 0.9
    r = (1, -1): 0
    Added to BT before a mean, the total is mean(BT) + c * mean((r_a + r_b)^2).
    """
    rewards_a, rewards_b = f64(1.0, 1.0), f64(2.0, -1.0)
    penalty = R.reward_centering_penalty(rewards_a, rewards_b, 0.1)
    assert_close(penalty.losses, [0.9, 0.0])
    assert_close(penalty.metrics["reward_sum"], [3.0, 0.0])
    bt = R.bradley_terry_loss(rewards_a, rewards_b)
    total = (bt.losses + penalty.losses).mean()
    expected = bt.losses.mean() + 0.1 * ((rewards_a + rewards_b) ** 2).mean()
    torch.testing.assert_close(total, expected)


def test_reward_centering_rejects_negative_coefficient():
    with pytest.raises(ValueError, match="coefficient"):
        R.reward_centering_penalty(f64(1.0), f64(0.0), -0.1)


# ---------------------------------------------------------------------------
# ties: Davidson and Rao-Kupper


def test_davidson_hand_values():
    """Davidson, P proportional to [e^(d/2), e^(-d/2), nu]:
    nu = 1, d = 2: Z = e + e^-1 + 1 = 4.0861612696, log Z = 1.4076059644
        a wins: log Z - 1 = 0.4076059644
        b wins: log Z + 1 = 2.4076059644
        tie:    log Z - 0 = 1.4076059644
    nu = 1, d = 0: all three outcomes have probability 1/3 -> log 3 = 1.0986122887
    nu = 2, d = 0: Z = 1 + 1 + 2 = 4; P(tie) = 1/2, P(a) = 1/4 -> a wins costs log 4
    """
    log_z = math.log(math.e + math.exp(-1) + 1)
    output = R.davidson_tie_loss(
        f64(2.0, 2.0, 2.0, 0.0), f64(0.0, 0.0, 0.0, 0.0), torch.tensor([0, 1, 2, 2]), 0.0
    )
    assert_close(output.losses, [log_z - 1, log_z + 1, log_z, math.log(3)])
    assert_close(output.metrics["accuracy"], [1.0, 0.0, 0.0, 0.0])

    per_example_nu = R.davidson_tie_loss(
        f64(0.0, 0.0), f64(0.0, 0.0), torch.tensor([0, 2]), f64(math.log(2), math.log(2))
    )
    assert_close(per_example_nu.losses, [math.log(4), math.log(2)])
    assert_close(per_example_nu.metrics["tie_probability"], [0.5, 0.5])


def test_davidson_with_nu_zero_is_bradley_terry():
    """nu = 0 (log_nu = -inf): a tie has probability 0 and wins are plain BT."""
    rewards_a = torch.randn(16, dtype=torch.float64)
    rewards_b = torch.randn(16, dtype=torch.float64)
    a_wins = R.davidson_tie_loss(rewards_a, rewards_b, torch.zeros(16, dtype=torch.long), -math.inf)
    b_wins = R.davidson_tie_loss(rewards_a, rewards_b, torch.ones(16, dtype=torch.long), -math.inf)
    torch.testing.assert_close(a_wins.losses, R.bradley_terry_loss(rewards_a, rewards_b).losses)
    torch.testing.assert_close(b_wins.losses, R.bradley_terry_loss(rewards_b, rewards_a).losses)
    probs = R.davidson_probs(rewards_a, rewards_b, -math.inf)
    assert torch.equal(probs[:, R.OUTCOME_TIE], torch.zeros(16, dtype=torch.float64))


def test_davidson_keeps_bradley_terry_odds_and_peaks_at_equal_rewards():
    """P(a) / P(b) = e^d whatever nu; P(tie) is largest at d = 0 and symmetric in d."""
    margins = f64(-3.0, -1.0, 0.0, 1.0, 3.0)
    for log_nu in (-2.0, 0.0, 2.0):
        log_probs = R.davidson_log_probs(margins, torch.zeros_like(margins), log_nu)
        torch.testing.assert_close(log_probs[:, 0] - log_probs[:, 1], margins)
        tie = log_probs[:, 2].exp()
        assert tie.argmax().item() == 2
        torch.testing.assert_close(tie, tie.flip(0))


def test_rao_kupper_hand_values():
    """Rao-Kupper with eta = log theta = 1 (theta = e), d = 1:
    P(a) = sigmoid(d - eta) = sigmoid(0) = 1/2             -> log 2 = 0.6931471806
    P(b) = sigmoid(-d - eta) = sigmoid(-2) = 0.1192029220  -> sp(2) = 2.1269280110
    P(tie) = (theta^2 - 1) P(a) P(b) = 6.3890560989 * 0.5 * 0.1192029220
           = 0.3807970780 = 1 - P(a) - P(b)                -> 0.9654886495
    """
    output = R.rao_kupper_tie_loss(
        f64(1.0, 1.0, 1.0), f64(0.0, 0.0, 0.0), torch.tensor([0, 1, 2]), 1.0
    )
    assert_close(output.losses, [math.log(2), SP_2, 0.9654886494717768])
    assert_close(output.metrics["tie_probability"], [0.3807970779778824] * 3)


def test_rao_kupper_rejects_theta_at_most_one():
    with pytest.raises(ValueError, match="log_theta must be > 0"):
        R.rao_kupper_tie_loss(f64(1.0), f64(0.0), torch.tensor([0]), 0.0)


@pytest.mark.parametrize("model", [R.davidson_probs, R.rao_kupper_probs])
def test_outcome_probabilities_sum_to_one(model):
    generator = torch.Generator().manual_seed(0)
    rewards_a = 5 * torch.randn(64, dtype=torch.float64, generator=generator)
    rewards_b = 5 * torch.randn(64, dtype=torch.float64, generator=generator)
    tie_parameter = torch.rand(64, dtype=torch.float64, generator=generator) + 0.1
    probs = model(rewards_a, rewards_b, tie_parameter)
    assert probs.shape == (64, 3)
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(64, dtype=torch.float64))


# ---------------------------------------------------------------------------
# Plackett-Luce


def test_plackett_luce_hand_values_with_tie_and_missing_item():
    """Items (score, human score): 0 = (1, 2), 1 = (0, 1), 2 = (2, 1), 3 = (5, missing).
    Item 3 is skipped (its score 5 would dominate every choice set otherwise).
    Group {0} chosen first from {0, 1, 2}:
        1 - log(e + 1 + e^2) = 1 - log 11.1073379 = 1 - 2.4076059644 = -1.4076059644
    Group {1, 2} (tied): each chosen from the items not ranked above it, {1, 2}:
        log(e^0 + e^2) = 2.1269280110
        (0 - 2.1269280110) + (2 - 2.1269280110) = -2.2538560221
    loss = 1.4076059644 + 2.2538560221 = 3.6614619865
    Reading human scores as lower = better would put {1, 2} first and give another value.
    """
    scores = f64(1.0, 0.0, 2.0, 5.0).unsqueeze(0)
    human_scores = f64(2.0, 1.0, 1.0, math.nan).unsqueeze(0)
    mask = torch.tensor([[True, True, True, False]])
    output = R.plackett_luce_loss(scores, human_scores, mask)
    assert_close(output.losses, [3.6614619865303246])
    assert_close(output.metrics["num_ranked"], [3.0])
    # ordered pairs: (0 > 1) correct since 1 > 0; (0 > 2) wrong since 1 < 2
    assert_close(output.metrics["num_ordered_pairs"], [2.0])
    assert_close(output.metrics["num_correct_pairs"], [1.0])


def test_plackett_luce_hand_values_without_ties():
    """Ranking 0 > 1 > 2 with scores [1, 0, 2]:
    choose 0 from {0, 1, 2}: 1 - log(e + 1 + e^2) = -1.4076059644
    choose 1 from {1, 2}:    0 - log(1 + e^2)     = -2.1269280110
    choose 2 from {2}:       0
    loss = 3.5345339755. The reverse ranking 2 > 1 > 0:
    choose 2 from all: 2 - 2.4076059644; choose 1 from {0, 1}: 0 - log(e + 1) = -1.3132616875
    loss = 0.4076059644 + 1.3132616875 = 1.7208676519
    """
    scores = f64(1.0, 0.0, 2.0).unsqueeze(0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    forward = R.plackett_luce_loss(scores, f64(3.0, 2.0, 1.0).unsqueeze(0), mask)
    reverse = R.plackett_luce_loss(scores, f64(1.0, 2.0, 3.0).unsqueeze(0), mask)
    assert_close(forward.losses, [3.5345339754873525])
    assert_close(reverse.losses, [1.7208676519626032])


def test_plackett_luce_batch_matches_lists_one_at_a_time():
    """Vectorised over lists of different lengths, ties and missing items, and
    invariant to the order in which items are stored."""
    generator = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    human_scores = torch.randint(0, 3, (6, 5), generator=generator).to(torch.float64)
    mask = torch.rand(6, 5, generator=generator) > 0.3
    mask[0] = False
    mask[1] = torch.tensor([True, False, False, False, False])
    batch = R.plackett_luce_loss(scores, human_scores, mask).losses
    for row in range(6):
        present = mask[row]
        permutation = torch.randperm(int(present.sum()), generator=generator)
        single = R.plackett_luce_loss(
            scores[row, present][permutation].unsqueeze(0),
            human_scores[row, present][permutation].unsqueeze(0),
            torch.ones(1, int(present.sum()), dtype=torch.bool),
        ).losses
        torch.testing.assert_close(batch[row : row + 1], single)
    assert batch[0].item() == 0.0 and batch[1].item() == 0.0


def test_plackett_luce_pairs_equal_bradley_terry():
    """A two-item list is a pair: PL is -log sigmoid(s_better - s_worse)."""
    scores = torch.randn(8, 2, dtype=torch.float64)
    output = R.plackett_luce_loss(
        scores, f64(1.0, 0.0).expand(8, 2), torch.ones(8, 2, dtype=torch.bool)
    )
    torch.testing.assert_close(
        output.losses, R.bradley_terry_loss(scores[:, 0], scores[:, 1]).losses
    )


# ---------------------------------------------------------------------------
# rating regression


def test_rating_regression_hand_values_and_missing():
    """Row 0: observed attributes 0 and 2: ((1 - 0)^2 + (3 - 5)^2) / 2 = (1 + 4) / 2 = 2.5
    Row 1: nothing observed -> loss 0, flagged in no_observed, zero (not NaN) gradient.
    The NaN targets sit at unobserved positions and must not leak.
    """
    predictions = f64(1.0, 2.0, 3.0, 0.0, 0.0, 0.0).reshape(2, 3).requires_grad_()
    targets = f64(0.0, math.nan, 5.0, math.nan, math.nan, math.nan).reshape(2, 3)
    observed = torch.tensor([[True, False, True], [False, False, False]])
    output = R.rating_regression_loss(predictions, targets, observed)
    assert_close(output.losses.detach(), [2.5, 0.0])
    assert_close(output.metrics["num_observed"], [2.0, 0.0])
    assert_close(output.metrics["no_observed"], [0.0, 1.0])
    output.losses.sum().backward()
    # d/dp of mean over 2 observed of (p - t)^2 is (p - t): [1, 0, -2]
    assert_close(predictions.grad, [[1.0, 0.0, -2.0], [0.0, 0.0, 0.0]])


def test_rating_regression_rejects_missing_observed_target():
    with pytest.raises(ValueError, match="finite wherever observed"):
        R.rating_regression_loss(
            f64(1.0).reshape(1, 1), f64(math.nan).reshape(1, 1), torch.ones(1, 1, dtype=torch.bool)
        )


# ---------------------------------------------------------------------------
# gradients


def _pair(batch_size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch_size, dtype=torch.float64, generator=generator).requires_grad_(),
        torch.randn(batch_size, dtype=torch.float64, generator=generator).requires_grad_(),
    )


def test_gradcheck_pairwise_losses():
    rewards_a, rewards_b = _pair()
    margins = f64(0.5, 1.0, 0.0, 2.0).requires_grad_()
    strengths = f64(1.0, 2.0, 3.0, 0.5).requires_grad_()
    fractions = f64(0.1, 0.3, 0.5, 0.9).requires_grad_()
    checks = [
        (lambda a, b: R.bradley_terry_loss(a, b).losses, (rewards_a, rewards_b)),
        (
            lambda a, b, m: R.bradley_terry_margin_loss(a, b, m).losses,
            (rewards_a, rewards_b, margins),
        ),
        (
            lambda a, b, m: R.strength_scaled_bradley_terry_loss(a, b, m).losses,
            (rewards_a, rewards_b, strengths),
        ),
        (lambda a, b, p: R.soft_label_loss(a, b, p).losses, (rewards_a, rewards_b, fractions)),
        (lambda a, b: R.reward_centering_penalty(a, b, 0.1).losses, (rewards_a, rewards_b)),
    ]
    for function, inputs in checks:
        assert gradcheck(function, inputs)


def test_gradcheck_tie_losses_including_tie_parameter():
    rewards_a, rewards_b = _pair(6)
    outcomes = torch.tensor([0, 1, 2, 0, 1, 2])
    log_nu = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    per_example_log_nu = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64).requires_grad_()
    log_theta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for tie_parameter in (log_nu, per_example_log_nu):
        assert gradcheck(
            lambda a, b, t: R.davidson_tie_loss(a, b, outcomes, t).losses,
            (rewards_a, rewards_b, tie_parameter),
        )
    assert gradcheck(
        lambda a, b, t: R.rao_kupper_tie_loss(a, b, outcomes, t).losses,
        (rewards_a, rewards_b, log_theta),
    )
    # a small eta, where log(theta^2 - 1) is steep
    assert gradcheck(
        lambda a, b, t: R.rao_kupper_tie_loss(a, b, outcomes, t).losses,
        (rewards_a, rewards_b, torch.tensor(0.05, dtype=torch.float64, requires_grad=True)),
    )


def test_gradcheck_plackett_luce_with_ties_and_missing():
    scores = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    scores.requires_grad_()
    human_scores = f64(2.0, 1.0, 1.0, 0.0, 3.0, 3.0, 3.0, 3.0, 1.0, 2.0, 3.0, 4.0).reshape(3, 4)
    mask = torch.tensor(
        [[True, True, True, False], [True, True, False, True], [True, False, True, True]]
    )
    assert gradcheck(lambda s: R.plackett_luce_loss(s, human_scores, mask).losses, (scores,))


def test_gradcheck_rating_regression():
    predictions = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(3, 4, dtype=torch.float64)
    observed = torch.tensor(
        [[True, False, True, True], [False, False, False, False], [True, True, True, True]]
    )
    targets[~observed] = math.nan
    assert gradcheck(
        lambda p: R.rating_regression_loss(p, targets, observed).losses, (predictions,)
    )


# ---------------------------------------------------------------------------
# numerical stability in float32


def _losses_at_huge_margins(rewards_a: torch.Tensor, rewards_b: torch.Tensor) -> list:
    outcomes = torch.tensor([0, 1, 2, 0])
    log_nu = torch.tensor(0.0, requires_grad=True)
    log_theta = torch.tensor(0.5, requires_grad=True)
    return [
        (R.bradley_terry_loss(rewards_a, rewards_b), ()),
        (R.bradley_terry_margin_loss(rewards_a, rewards_b, 1.0), ()),
        (R.strength_scaled_bradley_terry_loss(rewards_a, rewards_b, 2.0), ()),
        (R.soft_label_loss(rewards_a, rewards_b, 0.25), ()),
        (R.reward_centering_penalty(rewards_a, rewards_b, 0.01), ()),
        (R.davidson_tie_loss(rewards_a, rewards_b, outcomes, log_nu), (log_nu,)),
        (R.rao_kupper_tie_loss(rewards_a, rewards_b, outcomes, log_theta), (log_theta,)),
    ]


NUM_HUGE_MARGIN_CASES = 7


@pytest.mark.parametrize("case", range(NUM_HUGE_MARGIN_CASES))
def test_float32_huge_margins_give_finite_losses_and_gradients(case):
    """|d| = 1000 in float32: exp(1000) overflows, so any log(1 + exp(.)) would be inf."""
    rewards_a = torch.tensor([500.0, -500.0, 500.0, -500.0], requires_grad=True)
    rewards_b = torch.tensor([-500.0, 500.0, -500.0, 500.0], requires_grad=True)
    cases = _losses_at_huge_margins(rewards_a, rewards_b)
    assert len(cases) == NUM_HUGE_MARGIN_CASES
    output, extra_inputs = cases[case]
    assert output.losses.dtype == torch.float32
    assert bool(torch.isfinite(output.losses).all()), output.losses
    gradients = torch.autograd.grad(output.losses.sum(), [rewards_a, rewards_b, *extra_inputs])
    for gradient in gradients:
        assert bool(torch.isfinite(gradient).all()), gradients


def test_float32_bradley_terry_at_huge_margins_is_exact():
    """d = 1000: loss sp(-1000) = 0 (to float32), gradient 0;
    d = -1000: loss sp(1000) = 1000, gradient w.r.t. chosen -sigmoid(1000) = -1."""
    rewards_a = torch.tensor([500.0, -500.0], requires_grad=True)
    rewards_b = torch.tensor([-500.0, 500.0], requires_grad=True)
    losses = R.bradley_terry_loss(rewards_a, rewards_b).losses
    assert_close(losses.detach(), [0.0, 1000.0], atol=1e-3)
    losses.sum().backward()
    assert_close(rewards_a.grad, [0.0, -1.0], atol=1e-6)


def test_float32_plackett_luce_huge_scores():
    scores = torch.tensor(
        [[1000.0, -1000.0, 0.0, 3.0], [-1000.0, 1000.0, 0.0, 3.0]], requires_grad=True
    )
    human_scores = torch.tensor([[3.0, 2.0, 2.0, 0.0], [3.0, 2.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    losses = R.plackett_luce_loss(scores, human_scores, mask).losses
    assert bool(torch.isfinite(losses).all())
    # row 0: choose 0 from {0, 1, 2}: 1000 - lse(1000, -1000, 0) = 0; the tied group
    #   {1, 2} has choice set {1, 2}, lse(-1000, 0) = 0: item 1 costs 1000, item 2 costs 0
    # row 1: choose 0: -1000 - 1000 -> costs 2000; {1, 2}: lse(1000, 0) = 1000:
    #   item 1 costs 0, item 2 costs 1000 -> 3000 in all
    assert_close(losses.detach(), [1000.0, 3000.0], atol=1e-2)
    (gradient,) = torch.autograd.grad(losses.sum(), scores)
    assert bool(torch.isfinite(gradient).all())


# ---------------------------------------------------------------------------
# shapes and arguments


BAD_CALLS = {
    "rewards with a head dimension": lambda: R.bradley_terry_loss(
        torch.zeros(3, 1), torch.zeros(3, 1)
    ),
    "rewards of different lengths": lambda: R.bradley_terry_loss(torch.zeros(3), torch.zeros(4)),
    "integer rewards": lambda: R.bradley_terry_loss(
        torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    ),
    "margins of the wrong length": lambda: R.bradley_terry_margin_loss(
        torch.zeros(3), torch.zeros(3), torch.zeros(2)
    ),
    "fractions of the wrong length": lambda: R.soft_label_loss(
        torch.zeros(3), torch.zeros(3), torch.zeros(3, 1)
    ),
    "outcomes of the wrong length": lambda: R.davidson_tie_loss(
        torch.zeros(3), torch.zeros(3), torch.zeros(2, dtype=torch.long), 0.0
    ),
    "float outcomes": lambda: R.davidson_tie_loss(
        torch.zeros(3), torch.zeros(3), torch.zeros(3), 0.0
    ),
    "outcome code 3": lambda: R.rao_kupper_tie_loss(
        torch.zeros(1), torch.zeros(1), torch.tensor([3]), 0.5
    ),
    "negative outcome code": lambda: R.davidson_tie_loss(
        torch.zeros(1), torch.zeros(1), torch.tensor([-1]), 0.0
    ),
    "log_nu of the wrong length": lambda: R.davidson_tie_loss(
        torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.long), torch.zeros(2)
    ),
    "1-D Plackett-Luce scores": lambda: R.plackett_luce_loss(
        torch.zeros(3), torch.zeros(3), torch.ones(3, dtype=torch.bool)
    ),
    "Plackett-Luce human scores of another shape": lambda: R.plackett_luce_loss(
        torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool)
    ),
    "Plackett-Luce float mask": lambda: R.plackett_luce_loss(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3)
    ),
    "Plackett-Luce NaN human score where present": lambda: R.plackett_luce_loss(
        torch.zeros(1, 2), torch.tensor([[1.0, math.nan]]), torch.ones(1, 2, dtype=torch.bool)
    ),
    "rating mask of another shape": lambda: R.rating_regression_loss(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool)
    ),
}


@pytest.mark.parametrize("description", list(BAD_CALLS))
def test_bad_inputs_raise_value_error(description):
    with pytest.raises(ValueError):
        BAD_CALLS[description]()


def test_shape_error_message_names_argument_and_shapes():
    with pytest.raises(
        ValueError,
        match=r"rejected_rewards must have the same shape as chosen_rewards \(3,\), got \(4,\)",
    ):
        R.bradley_terry_loss(torch.zeros(3), torch.zeros(4))
