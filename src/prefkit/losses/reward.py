"""Reward-model losses: pairs, ties, votes, rankings and ratings.

Every loss is a pure function of tensors and returns a :class:`LossOutput`:

- ``losses``: the per-example loss, shape ``(B,)``, still attached to the graph.
  The caller reduces it (``.mean()`` over pairs, or a weighted sum); nothing here
  averages over the batch, so gradient accumulation and sharding stay exact.
- ``metrics``: detached per-example diagnostics, each of shape ``(B,)``. Reduce
  them the way the losses are reduced; counts (``num_*``) are meant to be summed,
  so ratios such as pairwise accuracy are formed from summed numerators and
  denominators and stay exact across shards.

Pairwise inputs are 1-D reward tensors of shape ``(B,)``. Listwise and rating
inputs are ``(B, N)`` / ``(B, K)`` with a boolean mask, ``True`` = observed.

Pairwise outcome coding (ties): ``0`` = a wins (:data:`OUTCOME_A_WINS`), ``1`` = b
wins (:data:`OUTCOME_B_WINS`), ``2`` = tie (:data:`OUTCOME_TIE`). The outcome
probability functions return columns in the same order.

Ties: which model to use. prefkit recommends **Davidson (1970)** as the default:

- P(tie) = nu / (nu + 2 cosh(d / 2)) with d = r_a - r_b: a smooth bump that peaks
  at equal rewards and decays like exp(-|d|/2);
- P(a) / P(b) = exp(d) for every nu, so a reward difference keeps exactly its
  Bradley-Terry meaning (Luce's choice axiom holds), and a model trained with
  ties scores pairs on the same scale as one trained without them;
- nu = 0 is exactly Bradley-Terry, and ``log_nu`` ranges over the whole real line,
  so it can be learned as an unconstrained ``nn.Parameter`` (start it at, say,
  ``log(0.5)``) or fixed.

Rao-Kupper (1967) is the threshold model: a wins only if r_a beats r_b by more
than eta = log(theta) >= 0, P(a) = sigmoid(d - eta). Its win odds P(a)/P(b) depend on
theta, so the meaning of a reward difference shifts with the tie parameter, and
the log tie probability has an infinite derivative at theta = 1, so a learned eta
must stay strictly positive (pass ``F.softplus(raw)`` or ``raw.exp()``).

Departures from the papers, and choices the papers leave open:

- Rao-Kupper is parameterised by ``log_theta`` = eta > 0 (theta = 1 is rejected:
  it is plain Bradley-Terry, use :func:`bradley_terry_loss`). Its log tie
  probability needs log(theta^2 - 1) = 2 eta + log(1 - exp(-2 eta)), which no
  logsumexp/softplus expresses; it is computed as ``log(-expm1(-2 eta))``, which
  is accurate for every eta > 0 (Maechler 2012, "Accurately computing
  log(1 - exp(-|a|))").
- Plackett-Luce with ties uses the Breslow approximation (Breslow 1974, from
  the Cox model): every item of a tied group is a separate choice out of the set
  of items not ranked above the group (the group itself included). Without ties
  this is the exact Plackett-Luce negative log-likelihood (ListMLE, Xia et al.
  2008); with ties it replaces the sum over the group's internal orderings by a
  product, a standard, slightly conservative approximation. Missing items are
  removed from the list: they are neither chosen nor part of any choice set. The
  per-list loss is a sum over items, not a mean; ``metrics["num_ranked"]`` gives
  the count for callers who want to normalise.
- Rating regression averages the squared error over the observed attributes of
  each example, so each example weighs the same whatever its number of observed
  attributes; an example with none gets loss 0 and ``metrics["no_observed"]`` = 1.
- Reward centering (Eisenstein et al. 2023) is returned per example as
  c * (r_a + r_b)^2; adding it to a pairwise loss before the caller's mean gives
  the paper's loss + c * mean((r_a + r_b)^2).
- Soft labels: the target is the fraction of annotators preferring a, so ties
  between annotators are expressed as p = 0.5 (Christiano et al. 2017, Sec. 2.2.3).

This module imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OUTCOME_A_WINS",
    "OUTCOME_B_WINS",
    "OUTCOME_TIE",
    "LossOutput",
    "bradley_terry_loss",
    "bradley_terry_margin_loss",
    "davidson_log_probs",
    "davidson_probs",
    "davidson_tie_loss",
    "plackett_luce_loss",
    "rao_kupper_log_probs",
    "rao_kupper_probs",
    "rao_kupper_tie_loss",
    "rating_regression_loss",
    "reward_centering_penalty",
    "soft_label_loss",
    "strength_scaled_bradley_terry_loss",
]

OUTCOME_A_WINS = 0
OUTCOME_B_WINS = 1
OUTCOME_TIE = 2


@dataclass(frozen=True)
class LossOutput:
    """Per-example losses and detached diagnostics; the caller reduces both."""

    losses: Tensor
    """(B,) per-example loss, attached to the autograd graph."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """Detached per-example diagnostics, each (B,)."""


# ---------------------------------------------------------------------------
# validation helpers


def _require_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_pair(name_a: str, rewards_a: Tensor, name_b: str, rewards_b: Tensor) -> int:
    """Check two reward vectors of shape (B,) with B >= 1; return B."""
    _require_tensor(name_a, rewards_a)
    _require_tensor(name_b, rewards_b)
    if rewards_a.ndim != 1:
        raise ValueError(
            f"{name_a} must have shape (B,), got {tuple(rewards_a.shape)}; "
            "squeeze a trailing reward-head dimension first"
        )
    if rewards_b.shape != rewards_a.shape:
        raise ValueError(
            f"{name_b} must have the same shape as {name_a} {tuple(rewards_a.shape)}, "
            f"got {tuple(rewards_b.shape)}"
        )
    if not rewards_a.is_floating_point() or not rewards_b.is_floating_point():
        raise ValueError(
            f"{name_a} and {name_b} must be floating point, "
            f"got {rewards_a.dtype} and {rewards_b.dtype}"
        )
    return rewards_a.shape[0]


def _per_example(name: str, value: Tensor | float, like: Tensor) -> Tensor:
    """A scalar or a (B,) tensor matching ``like`` (B,); floats become tensors."""
    if not isinstance(value, Tensor):
        return torch.as_tensor(float(value), dtype=like.dtype, device=like.device)
    if value.ndim != 0 and value.shape != like.shape:
        raise ValueError(
            f"{name} must be a scalar or have shape {tuple(like.shape)} (one per example), "
            f"got {tuple(value.shape)}"
        )
    return value


def _check_matrix_and_mask(
    name: str, values: Tensor, others: dict[str, Tensor], mask_name: str, mask: Tensor
) -> None:
    """Check ``values`` is (B, N) floating point and ``others`` and ``mask`` match it."""
    _require_tensor(name, values)
    _require_tensor(mask_name, mask)
    if values.ndim != 2:
        raise ValueError(f"{name} must have shape (B, N), got {tuple(values.shape)}")
    if not values.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {values.dtype}")
    for other_name, other in {**others, mask_name: mask}.items():
        _require_tensor(other_name, other)
        if other.shape != values.shape:
            raise ValueError(
                f"{other_name} must have the same shape as {name} {tuple(values.shape)}, "
                f"got {tuple(other.shape)}"
            )
    if mask.dtype != torch.bool:
        raise ValueError(f"{mask_name} must be a bool tensor (True = observed), got {mask.dtype}")


def _pair_metrics(reward_margins: Tensor) -> dict[str, Tensor]:
    reward_margins = reward_margins.detach()
    return {
        "reward_margin": reward_margins,
        "accuracy": (reward_margins > 0).to(reward_margins.dtype),
    }


# ---------------------------------------------------------------------------
# pairwise: Bradley-Terry and its variants


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> LossOutput:
    """Bradley-Terry negative log-likelihood, ``-log sigmoid(r_chosen - r_rejected)``.

    Args:
        chosen_rewards: (B,) rewards of the preferred responses.
        rejected_rewards: (B,) rewards of the other responses.

    Returns:
        ``losses`` (B,); metrics ``reward_margin`` (r_chosen - r_rejected) and
        ``accuracy`` (1.0 where the chosen response has the higher reward).
    """
    _check_pair("chosen_rewards", chosen_rewards, "rejected_rewards", rejected_rewards)
    reward_margins = chosen_rewards - rejected_rewards  # (B,)
    losses = -F.logsigmoid(reward_margins)  # Bradley & Terry 1952; Ouyang et al. 2022, eq. 1
    return LossOutput(losses, _pair_metrics(reward_margins))


def bradley_terry_margin_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margins: Tensor | float
) -> LossOutput:
    """Bradley-Terry with a required margin, ``-log sigmoid(r_chosen - r_rejected - m)``.

    The chosen reward must exceed the rejected one by ``m`` before the loss falls
    below log 2; a larger ``m`` is used for more clearly separated pairs.

    Args:
        chosen_rewards: (B,) rewards of the preferred responses.
        rejected_rewards: (B,) rewards of the other responses.
        margins: () or (B,) margin m, in reward units (a float is accepted).

    Returns:
        ``losses`` (B,); metrics as :func:`bradley_terry_loss` (the margin metric is
        the plain reward difference, without m).
    """
    _check_pair("chosen_rewards", chosen_rewards, "rejected_rewards", rejected_rewards)
    margins = _per_example("margins", margins, chosen_rewards)
    reward_margins = chosen_rewards - rejected_rewards  # (B,)
    losses = -F.logsigmoid(reward_margins - margins)  # Touvron et al. 2023 (Llama 2), eq. 2
    return LossOutput(losses, _pair_metrics(reward_margins))


def strength_scaled_bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, strengths: Tensor | float
) -> LossOutput:
    """Bradley-Terry weighted by preference strength, ``-m log sigmoid(r_chosen - r_rejected)``.

    Equivalent to repeating a pair m times, so "much better" pairs count more.

    Args:
        chosen_rewards: (B,) rewards of the preferred responses.
        rejected_rewards: (B,) rewards of the other responses.
        strengths: () or (B,) non-negative strength m (HelpSteer2-Preference uses
            1, 2, 3 for better / much better / very much better).

    Returns:
        ``losses`` (B,); metrics as :func:`bradley_terry_loss`.
    """
    _check_pair("chosen_rewards", chosen_rewards, "rejected_rewards", rejected_rewards)
    strengths = _per_example("strengths", strengths, chosen_rewards)
    if bool((strengths < 0).any()):
        raise ValueError("strengths must be non-negative: a negative strength flips the preference")
    reward_margins = chosen_rewards - rejected_rewards  # (B,)
    # Wang et al. 2024 (HelpSteer2-Preference), "Scaled Bradley-Terry" loss
    losses = -strengths * F.logsigmoid(reward_margins)
    return LossOutput(losses, _pair_metrics(reward_margins))


def soft_label_loss(
    rewards_a: Tensor, rewards_b: Tensor, prob_a_preferred: Tensor | float
) -> LossOutput:
    """Bradley-Terry with soft targets from annotator votes.

    ``-p log sigmoid(d) - (1 - p) log sigmoid(-d)`` with d = r_a - r_b and p the
    fraction of annotators who preferred a. p = 1 is :func:`bradley_terry_loss`
    with a chosen; p = 0 with b chosen. The minimum over d is at sigmoid(d) = p.

    Args:
        rewards_a: (B,) rewards of response a.
        rewards_b: (B,) rewards of response b.
        prob_a_preferred: () or (B,) fraction in [0, 1] of votes for a.

    Returns:
        ``losses`` (B,); metric ``reward_margin`` (r_a - r_b).
    """
    _check_pair("rewards_a", rewards_a, "rewards_b", rewards_b)
    prob_a_preferred = _per_example("prob_a_preferred", prob_a_preferred, rewards_a)
    if bool(((prob_a_preferred < 0) | (prob_a_preferred > 1)).any()):
        raise ValueError("prob_a_preferred must lie in [0, 1] (the fraction of votes for a)")
    reward_margins = rewards_a - rewards_b  # (B,)
    # Christiano et al. 2017, Sec. 2.2.3: cross-entropy against the label distribution
    losses = -prob_a_preferred * F.logsigmoid(reward_margins) - (
        1 - prob_a_preferred
    ) * F.logsigmoid(-reward_margins)
    return LossOutput(losses, {"reward_margin": reward_margins.detach()})


def reward_centering_penalty(
    rewards_a: Tensor, rewards_b: Tensor, coefficient: float
) -> LossOutput:
    """Reward-centering regulariser ``c * (r_a + r_b)^2`` per example.

    Bradley-Terry losses see only reward differences, so the mean reward drifts
    freely; this pins it near zero. Add ``losses`` to a pairwise loss's ``losses``
    before reducing: with a mean reduction the total is the paper's
    loss + c * mean((r_a + r_b)^2).

    Args:
        rewards_a: (B,) rewards of one response of each pair.
        rewards_b: (B,) rewards of the other.
        coefficient: c >= 0.

    Returns:
        ``losses`` (B,); metric ``reward_sum`` (r_a + r_b).
    """
    _check_pair("rewards_a", rewards_a, "rewards_b", rewards_b)
    if not coefficient >= 0:
        raise ValueError(f"coefficient must be >= 0, got {coefficient}")
    reward_sums = rewards_a + rewards_b  # (B,)
    # Eisenstein et al. 2023 (Helping or Herding), Sec. 2: c * (r_a + r_b)^2, here per example
    losses = coefficient * reward_sums.square()
    return LossOutput(losses, {"reward_sum": reward_sums.detach()})


# ---------------------------------------------------------------------------
# pairwise with ties: Davidson (1970) and Rao-Kupper (1967)


def davidson_log_probs(rewards_a: Tensor, rewards_b: Tensor, log_nu: Tensor | float) -> Tensor:
    """Log outcome probabilities under the Davidson tie model, shape (B, 3).

    Columns follow the outcome coding: [log P(a wins), log P(b wins), log P(tie)],
    with P proportional to [exp(r_a), exp(r_b), nu * exp((r_a + r_b) / 2)].

    Args:
        rewards_a: (B,) rewards of response a.
        rewards_b: (B,) rewards of response b.
        log_nu: () or (B,) log of the tie parameter nu >= 0; ``-inf`` gives
            Bradley-Terry exactly.
    """
    _check_pair("rewards_a", rewards_a, "rewards_b", rewards_b)
    log_nu = _per_example("log_nu", log_nu, rewards_a)
    half_margins = (rewards_a - rewards_b) / 2  # (B,)
    # Davidson 1970: pi_a, pi_b, nu * sqrt(pi_a * pi_b), divided through by sqrt(pi_a * pi_b)
    logits = torch.stack(
        [half_margins, -half_margins, log_nu.to(half_margins.dtype).expand_as(half_margins)],
        dim=-1,
    )  # (B, 3)
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def davidson_probs(rewards_a: Tensor, rewards_b: Tensor, log_nu: Tensor | float) -> Tensor:
    """Outcome probabilities [P(a), P(b), P(tie)] under Davidson, shape (B, 3)."""
    return davidson_log_probs(rewards_a, rewards_b, log_nu).exp()


def rao_kupper_log_probs(rewards_a: Tensor, rewards_b: Tensor, log_theta: Tensor | float) -> Tensor:
    """Log outcome probabilities under the Rao-Kupper tie model, shape (B, 3).

    Columns: [log P(a wins), log P(b wins), log P(tie)] with eta = log theta,
    P(a) = sigmoid(d - eta), P(b) = sigmoid(-d - eta), P(tie) = the rest.

    Args:
        rewards_a: (B,) rewards of response a.
        rewards_b: (B,) rewards of response b.
        log_theta: () or (B,) eta = log theta, strictly positive.
    """
    _check_pair("rewards_a", rewards_a, "rewards_b", rewards_b)
    log_theta = _per_example("log_theta", log_theta, rewards_a)
    if not bool((log_theta > 0).all()):
        raise ValueError(
            "log_theta must be > 0 (theta > 1); theta = 1 allows no ties and is plain "
            "Bradley-Terry. To learn it, pass F.softplus(raw) or raw.exp()."
        )
    reward_margins = rewards_a - rewards_b  # (B,)
    # Rao & Kupper 1967: P(a) = pi_a / (pi_a + theta pi_b) = sigmoid(d - log theta)
    log_prob_a = F.logsigmoid(reward_margins - log_theta)
    log_prob_b = F.logsigmoid(-reward_margins - log_theta)
    # Rao & Kupper 1967: P(tie) = (theta^2 - 1) pi_a pi_b / ((pi_a + theta pi_b)(theta pi_a + pi_b))
    #                           = (theta^2 - 1) P(a) P(b)
    log_theta_sq_minus_one = 2 * log_theta + torch.log(-torch.expm1(-2 * log_theta))
    log_prob_tie = log_theta_sq_minus_one + log_prob_a + log_prob_b
    return torch.stack([log_prob_a, log_prob_b, log_prob_tie], dim=-1)  # (B, 3)


def rao_kupper_probs(rewards_a: Tensor, rewards_b: Tensor, log_theta: Tensor | float) -> Tensor:
    """Outcome probabilities [P(a), P(b), P(tie)] under Rao-Kupper, shape (B, 3)."""
    return rao_kupper_log_probs(rewards_a, rewards_b, log_theta).exp()


def _check_outcomes(outcomes: Tensor, rewards_a: Tensor) -> None:
    _require_tensor("outcomes", outcomes)
    if outcomes.shape != rewards_a.shape:
        raise ValueError(
            f"outcomes must have shape {tuple(rewards_a.shape)} like rewards_a, "
            f"got {tuple(outcomes.shape)}"
        )
    if outcomes.is_floating_point() or outcomes.is_complex() or outcomes.dtype == torch.bool:
        raise ValueError(f"outcomes must be an integer tensor, got {outcomes.dtype}")
    if bool(((outcomes < OUTCOME_A_WINS) | (outcomes > OUTCOME_TIE)).any()):
        raise ValueError("outcomes must be 0 (a wins), 1 (b wins) or 2 (tie)")


def _tie_model_output(log_probs: Tensor, outcomes: Tensor, reward_margins: Tensor) -> LossOutput:
    """Negative log-likelihood of the observed outcomes under (B, 3) log-probabilities."""
    losses = -log_probs.gather(-1, outcomes.long().unsqueeze(-1)).squeeze(-1)  # (B,)
    log_probs = log_probs.detach()
    metrics = {
        "reward_margin": reward_margins.detach(),
        "tie_probability": log_probs[:, OUTCOME_TIE].exp(),
        "accuracy": (log_probs.argmax(dim=-1) == outcomes).to(log_probs.dtype),
    }
    return LossOutput(losses, metrics)


def davidson_tie_loss(
    rewards_a: Tensor, rewards_b: Tensor, outcomes: Tensor, log_nu: Tensor | float
) -> LossOutput:
    """Negative log-likelihood of win / loss / tie under Davidson's model (the default).

    Args:
        rewards_a: (B,) rewards of response a.
        rewards_b: (B,) rewards of response b.
        outcomes: (B,) integer, 0 = a wins, 1 = b wins, 2 = tie.
        log_nu: () or (B,) log nu; a learnable ``nn.Parameter`` or a constant.
            ``-inf`` (nu = 0) gives Bradley-Terry exactly.

    Returns:
        ``losses`` (B,); metrics ``reward_margin``, ``tie_probability`` and
        ``accuracy`` (1.0 where the most probable outcome is the observed one).
    """
    _check_pair("rewards_a", rewards_a, "rewards_b", rewards_b)
    _check_outcomes(outcomes, rewards_a)
    log_probs = davidson_log_probs(rewards_a, rewards_b, log_nu)  # Davidson 1970
    return _tie_model_output(log_probs, outcomes, rewards_a - rewards_b)


def rao_kupper_tie_loss(
    rewards_a: Tensor, rewards_b: Tensor, outcomes: Tensor, log_theta: Tensor | float
) -> LossOutput:
    """Negative log-likelihood of win / loss / tie under the Rao-Kupper model.

    Args:
        rewards_a: (B,) rewards of response a.
        rewards_b: (B,) rewards of response b.
        outcomes: (B,) integer, 0 = a wins, 1 = b wins, 2 = tie.
        log_theta: () or (B,) eta = log theta > 0, the tie threshold in reward units.

    Returns:
        ``losses`` (B,); metrics as :func:`davidson_tie_loss`.
    """
    _check_pair("rewards_a", rewards_a, "rewards_b", rewards_b)
    _check_outcomes(outcomes, rewards_a)
    log_probs = rao_kupper_log_probs(rewards_a, rewards_b, log_theta)  # Rao & Kupper 1967
    return _tie_model_output(log_probs, outcomes, rewards_a - rewards_b)


# ---------------------------------------------------------------------------
# listwise: Plackett-Luce


def plackett_luce_loss(scores: Tensor, human_scores: Tensor, mask: Tensor) -> LossOutput:
    """Plackett-Luce negative log-likelihood of human rankings, ties by Breslow.

    For each list, items are chosen best first; an item i of tied group g costs
    ``logsumexp(s_j for j not ranked above g) - s_i``. Missing items are skipped.
    See the module docstring for the tie treatment.

    Args:
        scores: (B, N) model scores (rewards) of the N items of each list.
        human_scores: (B, N) human scores or ratings, **higher = better**; equal
            values are ties. Ranks where 1 = best must be negated first. Values at
            masked-out positions are ignored (they may be NaN).
        mask: (B, N) bool, True where the item is present.

    Returns:
        ``losses`` (B,) (0 for a list with fewer than two present items); metrics
        ``num_ranked`` (present items), ``num_ordered_pairs`` (present pairs the
        human ranked strictly) and ``num_correct_pairs`` (of those, pairs the
        model orders the same way): pairwise accuracy is
        ``num_correct_pairs.sum() / num_ordered_pairs.sum()``.
    """
    _check_matrix_and_mask("scores", scores, {"human_scores": human_scores}, "mask", mask)
    # float64 keeps integer ranks and any float32/16 score exact, so equal values stay tied
    human_keys = human_scores.to(torch.float64)
    if not bool(torch.isfinite(human_keys[mask]).all()):
        raise ValueError("human_scores must be finite wherever mask is True")

    # Missing items sort first (worst) with a score that contributes exp(-huge) = 0 to
    # every choice set; a finite fill keeps logcumsumexp's backward free of inf - inf.
    sort_keys = human_keys.masked_fill(~mask, float("-inf"))  # (B, N)
    fill = torch.finfo(scores.dtype).min
    masked_scores = scores.masked_fill(~mask, fill)  # (B, N)
    sorted_keys, order = torch.sort(sort_keys, dim=-1)  # ascending: worst first
    sorted_scores = masked_scores.gather(-1, order)  # (B, N)
    sorted_present = mask.gather(-1, order)  # (B, N)

    # log sum of exp(score) over the item and every item ranked at or below it ...
    log_cumulative = torch.logcumsumexp(sorted_scores, dim=-1)  # (B, N)
    # ... extended to the end of its tie group, so tied items share one choice set.
    group_ends = torch.searchsorted(sorted_keys, sorted_keys, right=True) - 1  # (B, N)
    log_choice_sets = log_cumulative.gather(-1, group_ends)  # (B, N)

    # Plackett 1975; Luce 1959; ListMLE (Xia et al. 2008): -sum_i [s_i - log sum_{j in R_i} exp s_j]
    log_choice_probs = torch.where(
        sorted_present, sorted_scores - log_choice_sets, torch.zeros_like(sorted_scores)
    )
    losses = -log_choice_probs.sum(dim=-1)  # (B,)

    with torch.no_grad():
        both_present = mask.unsqueeze(-1) & mask.unsqueeze(-2)  # (B, N, N)
        ordered_pairs = both_present & (human_keys.unsqueeze(-1) > human_keys.unsqueeze(-2))
        correct_pairs = ordered_pairs & (scores.unsqueeze(-1) > scores.unsqueeze(-2))
        metrics = {
            "num_ranked": mask.sum(dim=-1).to(scores.dtype),
            "num_ordered_pairs": ordered_pairs.sum(dim=(-2, -1)).to(scores.dtype),
            "num_correct_pairs": correct_pairs.sum(dim=(-2, -1)).to(scores.dtype),
        }
    return LossOutput(losses, metrics)


# ---------------------------------------------------------------------------
# ratings: regression on attributes


def rating_regression_loss(
    predicted_ratings: Tensor, target_ratings: Tensor, observed: Tensor
) -> LossOutput:
    """Squared error on rating attributes, averaged over each example's observed ones.

    Regression-style reward models (e.g. HelpSteer2's per-attribute ratings) predict
    K attributes per response; ratings an annotator did not give are masked out.

    Args:
        predicted_ratings: (B, K) model predictions.
        target_ratings: (B, K) human ratings; ignored (may be NaN) where not observed.
        observed: (B, K) bool, True where the rating exists.

    Returns:
        ``losses`` (B,), the mean squared error over observed attributes, 0 for an
        example with none; metrics ``num_observed`` and ``no_observed`` (1.0 for
        examples with no observed attribute, whose loss is 0 and carries no gradient).
    """
    _check_matrix_and_mask(
        "predicted_ratings",
        predicted_ratings,
        {"target_ratings": target_ratings},
        "observed",
        observed,
    )
    if not bool(torch.isfinite(target_ratings[observed]).all()):
        raise ValueError("target_ratings must be finite wherever observed is True")
    # where() rather than a multiply, so NaN targets at unobserved positions stay out
    residuals = torch.where(
        observed, predicted_ratings - target_ratings, torch.zeros_like(predicted_ratings)
    )  # (B, K)
    num_observed = observed.sum(dim=-1)  # (B,)
    # Wang et al. 2024 (HelpSteer2), regression reward model: MSE over observed attributes
    losses = residuals.square().sum(dim=-1) / num_observed.clamp(min=1).to(residuals.dtype)
    metrics = {
        "num_observed": num_observed.to(residuals.dtype),
        "no_observed": (num_observed == 0).to(residuals.dtype),
    }
    return LossOutput(losses, metrics)
