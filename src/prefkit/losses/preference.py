"""Policy-optimisation losses: the DPO family, reference-free, unpaired and listwise.

Every loss is a small pure function of per-sequence log-probabilities:

- inputs are a typed container (:class:`PairedLogps`, :class:`UnpairedLogps`,
  :class:`ListwiseLogps`) of log-probs **summed over the completion tokens**, plus
  completion lengths where a loss normalises by length;
- hyperparameters are a frozen config dataclass, validated on construction; a
  loss given a config of another type raises, so an argument is never accepted
  and ignored (``dpo_sigmoid(logps, SmoothedConfig(...))`` is an error, not DPO
  with a silently dropped ``label_smoothing``);
- the output holds the per-example loss ``(B,)`` attached to the graph, and
  detached per-example diagnostics; the caller reduces (``losses.mean()``), so
  gradient accumulation and sharding stay exact. The only losses whose
  per-example values depend on the rest of the batch are ``aot`` and
  ``aot_unpaired``, which match quantiles across the batch by sorting.

Rewards reported by the reference-based losses are DPO's implicit rewards
beta * log(pi / pi_ref) of each completion, whatever the loss, so reward margins
and accuracies compare across losses (TRL reports the same quantity). SimPO, CPO
and ORPO report beta * log pi (length-averaged for SimPO and ORPO), as TRL does.

:data:`LOSSES` maps each name to a :class:`LossSpec`: its function, config type
and input kind, whether it uses a reference, which extra inputs it reads, and the
:class:`LossState` that supplies them across steps (KTO's KL estimate, BCO's
reward shift); :func:`register_loss` adds a loss.
:func:`make_loss` builds a configured loss from a name and keyword arguments,
rejecting unknown arguments and bad values before any data is seen.
:func:`weighted_sum` combines paired losses (e.g. DPO + SFT, the RPO recipe).

Departures from the papers, and differences from TRL 1.16:

- ``ipo``: the paper's eq. 17 uses sequence log-ratios (sums over tokens), which
  is the default here. TRL divides each log-ratio by its completion length before
  the square; ``IPOConfig(length_normalized=True)`` reproduces that.
- ``sft``, and the NLL terms of ``cpo`` and ``orpo``: the per-example NLL is the
  mean over that example's chosen completion tokens. TRL averages over all chosen
  tokens of the batch, which weights long completions more; the two agree when
  the chosen lengths are equal, and TRL's value is the length-weighted mean of the
  per-example values here. TRL's ORPO NLL also scores the prompt tokens; here
  only the completion is scored, as in every loss of this module.
- ``bco_pair``: Jung et al. shift the rewards by delta, a running mean of the
  rewards; TRL 1.16 drops the shift. Pass ``reward_shift=0`` to reproduce TRL.
  The running mean is kept by the caller (:class:`RunningMean`, or the
  registered :class:`RewardShift`), over the batches seen *before* the current
  one. The paper's underlying-distribution matching (a density-ratio
  classifier) is not implemented.
- ``hinge``: SLiC's calibration loss compares policy log-probs with a margin
  delta. As in TRL, the log-probs are replaced by log-ratios against the
  reference and the margin is 1 / beta, scaled by beta: relu(1 - beta * h).
- ``cdpo``: the label-smoothed DPO of Mitchell (2023); TRL 1.16's ``sigmoid`` has
  no label smoothing and no separate cDPO, so ``cdpo`` is checked only by hand.
- ``sppo_hard``: SPPO (eq. 4.7 of Algorithm 1) regresses the log-ratio onto
  eta * (P - 1/2) with P a win probability from a preference model; this is the
  hard variant with P = 1 for the chosen and 0 for the rejected response, and
  eta = 1 / beta (as TRL).
- ``exo_pair``: one temperature beta for the policy's distribution over the
  pair, as TRL.
- ``discopop``: sigmoid(rho / tau) * exp(-rho) is computed as
  exp(logsigmoid(rho / tau) - rho), the same value without the overflow that
  turns inf * 0 into NaN at large negative rho.
- ``orpo``: log(1 - exp(x)) of a length-averaged log-prob x is undefined at x = 0
  (probability one); x is clamped to -tiny (tiny: the smallest normal float).
- ``kto``: the KL estimate z0 comes from the caller (in the paper and TRL, the
  mean log-ratio of mismatched prompt/completion pairs in the batch); it is
  detached and clamped at 0 here, as TRL does.
- ``lipo_lambda``: the per-list loss is a sum over the list's ordered pairs, not
  normalised by the number of pairs; ranks come from the detached scores, ties
  broken by position.
- ``aot``, ``aot_unpaired``: the sorting-based empirical form with a logistic
  link, as TRL, including its optional label smoothing (0 by default).
- Not implemented: TRL's f-divergence variants, LD-DPO (``ld_alpha``), WPO
  weighting, AlphaPO's reward transform in CPO, and label smoothing for
  ``cpo``/``simpo``.

This module imports only torch and the standard library.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "BatchContext",
    "BetaConfig",
    "CPOConfig",
    "DiscoPOPConfig",
    "ExoPairConfig",
    "IPOConfig",
    "KTOConfig",
    "ListwiseLogps",
    "ListwiseLossOutput",
    "LossSpec",
    "LossState",
    "LossTerm",
    "MismatchedKLEstimate",
    "ORPOConfig",
    "PairedLogps",
    "PreferenceLossOutput",
    "RewardShift",
    "RobustConfig",
    "RunningMean",
    "SFTConfig",
    "SimPOConfig",
    "SmoothedConfig",
    "StepContext",
    "UnpairedLogps",
    "UnpairedLossOutput",
    "aot",
    "aot_unpaired",
    "apo_down",
    "apo_zero",
    "bco",
    "bco_pair",
    "cdpo",
    "cpo",
    "discopop",
    "dpo_sigmoid",
    "exo_pair",
    "hinge",
    "ipo",
    "kto",
    "lipo_lambda",
    "make_loss",
    "nca_pair",
    "orpo",
    "register_loss",
    "robust",
    "sft",
    "sigmoid_norm",
    "simpo",
    "sppo_hard",
    "unregister_loss",
    "weighted_sum",
]


# ---------------------------------------------------------------------------
# input containers


def _check_vector(name: str, value: object, *, floating: bool) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(value).__name__}")
    if value.dim() != 1:
        raise ValueError(f"{name} must have shape (B,), got {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of log-probs, got {value.dtype}")
    return value


def _check_same_length(named: Mapping[str, Tensor]) -> int:
    sizes = {name: tensor.shape[0] for name, tensor in named.items()}
    batch_size = next(iter(sizes.values()))
    if any(size != batch_size for size in sizes.values()):
        raise ValueError(f"all inputs must have the same batch size B, got {sizes}")
    if batch_size == 0:
        raise ValueError("inputs are empty (B = 0); pass at least one example")
    return batch_size


def _check_lengths(name: str, lengths: Tensor) -> None:
    if not bool((lengths > 0).all()):
        raise ValueError(
            f"{name} must count the completion tokens of each example and be > 0, got "
            f"{lengths.tolist()}; drop examples whose completion was truncated away"
        )


@dataclass(frozen=True)
class PairedLogps:
    """Per-sequence log-probs of a batch of B (prompt, chosen, rejected) triples.

    Log-probs are summed over the completion tokens only (prompt and padding
    excluded). Fields a loss does not need may be left as ``None``; a loss that
    needs a missing field raises and names it. A field a loss does not read is
    allowed: the container describes the batch, which several losses may share
    (see :func:`weighted_sum`); it is the configs that must not carry unused
    arguments.
    """

    policy_chosen_logps: Tensor
    """(B,) log pi(chosen | prompt) under the policy being trained."""
    policy_rejected_logps: Tensor
    """(B,) log pi(rejected | prompt) under the policy being trained."""
    ref_chosen_logps: Tensor | None = None
    """(B,) log pi_ref(chosen | prompt) under the frozen reference (reference-based losses)."""
    ref_rejected_logps: Tensor | None = None
    """(B,) log pi_ref(rejected | prompt) under the frozen reference."""
    chosen_lengths: Tensor | None = None
    """(B,) number of completion tokens of each chosen response, > 0 (length-normalised losses)."""
    rejected_lengths: Tensor | None = None
    """(B,) number of completion tokens in each rejected response (> 0)."""

    def __post_init__(self) -> None:
        named = {
            "policy_chosen_logps": _check_vector(
                "policy_chosen_logps", self.policy_chosen_logps, floating=True
            ),
            "policy_rejected_logps": _check_vector(
                "policy_rejected_logps", self.policy_rejected_logps, floating=True
            ),
        }
        if (self.ref_chosen_logps is None) != (self.ref_rejected_logps is None):
            raise ValueError(
                "pass both ref_chosen_logps and ref_rejected_logps, or neither; got only one"
            )
        if self.ref_chosen_logps is not None and self.ref_rejected_logps is not None:
            named["ref_chosen_logps"] = _check_vector(
                "ref_chosen_logps", self.ref_chosen_logps, floating=True
            )
            named["ref_rejected_logps"] = _check_vector(
                "ref_rejected_logps", self.ref_rejected_logps, floating=True
            )
        if (self.chosen_lengths is None) != (self.rejected_lengths is None):
            raise ValueError(
                "pass both chosen_lengths and rejected_lengths, or neither; got only one"
            )
        if self.chosen_lengths is not None and self.rejected_lengths is not None:
            named["chosen_lengths"] = _check_vector(
                "chosen_lengths", self.chosen_lengths, floating=False
            )
            named["rejected_lengths"] = _check_vector(
                "rejected_lengths", self.rejected_lengths, floating=False
            )
            _check_lengths("chosen_lengths", self.chosen_lengths)
            _check_lengths("rejected_lengths", self.rejected_lengths)
        _check_same_length(named)

    @property
    def num_pairs(self) -> int:
        return self.policy_chosen_logps.shape[0]

    def reference(self, loss_name: str) -> tuple[Tensor, Tensor]:
        """(B,) chosen and rejected reference log-probs; raises if they are missing."""
        if self.ref_chosen_logps is None or self.ref_rejected_logps is None:
            raise ValueError(
                f"{loss_name} needs reference log-probs, but PairedLogps.ref_chosen_logps and "
                "ref_rejected_logps are None; compute them with the reference model, or use a "
                "reference-free loss (simpo, cpo, orpo)"
            )
        return self.ref_chosen_logps, self.ref_rejected_logps

    def logratios(self, loss_name: str) -> tuple[Tensor, Tensor]:
        """(B,) chosen and rejected log(pi / pi_ref); raises if the reference is missing."""
        ref_chosen_logps, ref_rejected_logps = self.reference(loss_name)
        return (
            self.policy_chosen_logps - ref_chosen_logps,
            self.policy_rejected_logps - ref_rejected_logps,
        )

    def lengths(self, loss_name: str) -> tuple[Tensor, Tensor]:
        """(B,) chosen and rejected lengths as floats of the log-prob dtype; raises if missing."""
        if self.chosen_lengths is None or self.rejected_lengths is None:
            raise ValueError(
                f"{loss_name} normalises by completion length, but PairedLogps.chosen_lengths and "
                "rejected_lengths are None; pass the number of completion tokens of each response"
            )
        dtype = self.policy_chosen_logps.dtype
        return self.chosen_lengths.to(dtype), self.rejected_lengths.to(dtype)


@dataclass(frozen=True)
class UnpairedLogps:
    """Per-sequence log-probs of B (prompt, completion, thumbs up/down) examples."""

    policy_logps: Tensor
    """(B,) log pi(completion | prompt) under the policy, summed over completion tokens."""
    ref_logps: Tensor
    """(B,) log pi_ref(completion | prompt) under the frozen reference."""
    is_desirable: Tensor
    """(B,) bool: True for a desirable (thumbs-up) completion, False for an undesirable one."""

    def __post_init__(self) -> None:
        _check_vector("policy_logps", self.policy_logps, floating=True)
        _check_vector("ref_logps", self.ref_logps, floating=True)
        _check_vector("is_desirable", self.is_desirable, floating=False)
        if self.is_desirable.dtype != torch.bool:
            raise TypeError(f"is_desirable must be a bool tensor, got {self.is_desirable.dtype}")
        _check_same_length(
            {
                "policy_logps": self.policy_logps,
                "ref_logps": self.ref_logps,
                "is_desirable": self.is_desirable,
            }
        )


@dataclass(frozen=True)
class ListwiseLogps:
    """Per-sequence log-probs of B prompts, each with a list of up to N graded responses."""

    policy_logps: Tensor
    """(B, N) log pi(response | prompt) under the policy; values at masked slots are not read."""
    ref_logps: Tensor
    """(B, N) log pi_ref(response | prompt) under the frozen reference."""
    labels: Tensor
    """(B, N) graded relevance of each response, higher is better (e.g. a score in [0, 1])."""
    mask: Tensor
    """(B, N) bool: True where a response is present; lists shorter than N are padded with False."""

    def __post_init__(self) -> None:
        named = {
            "policy_logps": self.policy_logps,
            "ref_logps": self.ref_logps,
            "labels": self.labels,
            "mask": self.mask,
        }
        for name, value in named.items():
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor of shape (B, N), got {type(value).__name__}"
                )
            if value.dim() != 2:
                raise ValueError(f"{name} must have shape (B, N), got {tuple(value.shape)}")
        shapes = {name: tuple(value.shape) for name, value in named.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"all inputs must have the same shape (B, N), got {shapes}")
        if self.policy_logps.shape[0] == 0:
            raise ValueError("inputs are empty (B = 0); pass at least one list")
        for name in ("policy_logps", "ref_logps", "labels"):
            if not named[name].is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {named[name].dtype}")
        if self.mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {self.mask.dtype}")


# ---------------------------------------------------------------------------
# outputs


def _check_detached(named: Mapping[str, Tensor]) -> None:
    for name, value in named.items():
        if value.requires_grad:
            raise ValueError(f"{name} is a diagnostic and must be detached")


@dataclass(frozen=True)
class PreferenceLossOutput:
    """Per-example losses of a paired loss, with detached diagnostics; the caller reduces."""

    losses: Tensor
    """(B,) per-example loss, attached to the autograd graph."""
    chosen_rewards: Tensor
    """(B,) detached reward of each chosen response (defined in the module docstring)."""
    rejected_rewards: Tensor
    """(B,) detached reward of each rejected response."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """Detached per-example diagnostics, each (B,)."""

    def __post_init__(self) -> None:
        _check_detached(
            {
                "chosen_rewards": self.chosen_rewards,
                "rejected_rewards": self.rejected_rewards,
                **self.metrics,
            }
        )


@dataclass(frozen=True)
class UnpairedLossOutput:
    """Per-example losses of an unpaired (thumbs) loss, with detached diagnostics."""

    losses: Tensor
    """(B,) per-example loss, attached to the autograd graph."""
    rewards: Tensor
    """(B,) detached implicit reward beta * log(pi / pi_ref) of each completion."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """Detached per-example diagnostics, each (B,)."""

    def __post_init__(self) -> None:
        _check_detached({"rewards": self.rewards, **self.metrics})


@dataclass(frozen=True)
class ListwiseLossOutput:
    """Per-list losses of a listwise loss, with detached diagnostics."""

    losses: Tensor
    """(B,) per-list loss, attached to the autograd graph."""
    rewards: Tensor
    """(B, N) detached implicit reward beta * log(pi / pi_ref), 0 at masked slots."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """Detached per-list diagnostics, each (B,)."""

    def __post_init__(self) -> None:
        _check_detached({"rewards": self.rewards, **self.metrics})


# ---------------------------------------------------------------------------
# configs


def _check_range(
    name: str, value: float, low: float, high: float = math.inf, *, low_open: bool = False
) -> None:
    """value must be a finite real number in [low, high), or (low, high) when low_open."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    above_low = is_number and (value > low if low_open else value >= low)
    if not (is_number and math.isfinite(value) and above_low and value < high):
        interval = f"{'(' if low_open else '['}{low}, {high})"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")


@dataclass(frozen=True)
class BetaConfig:
    """Config of a loss whose only hyperparameter is beta."""

    beta: float = 0.1
    """Inverse temperature on the log-ratios; larger beta keeps the policy nearer the reference."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)


@dataclass(frozen=True)
class SmoothedConfig:
    """Config of a logistic loss with label smoothing (cdpo, aot, aot_unpaired)."""

    beta: float = 0.1
    """Inverse temperature on the log-ratios."""
    label_smoothing: float = 0.0
    """Assumed probability that a preference label is flipped, in [0, 0.5)."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)


@dataclass(frozen=True)
class RobustConfig:
    """Config of robust DPO (Chowdhury et al. 2024)."""

    beta: float = 0.1
    """Inverse temperature on the log-ratios."""
    label_smoothing: float = 0.1
    """Known flip rate epsilon of the labels, in [0, 0.5); the loss divides by 1 - 2 epsilon."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)


@dataclass(frozen=True)
class IPOConfig:
    """Config of IPO (Azar et al. 2023)."""

    beta: float = 0.1
    """The regularisation strength tau of the paper; the target log-ratio gap is 1 / (2 tau)."""
    length_normalized: bool = False
    """Divide each log-ratio by its completion length first (TRL's variant, needs lengths).

    False follows the paper (sequence log-ratios)."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        if not isinstance(self.length_normalized, bool):
            raise TypeError(f"length_normalized must be a bool, got {self.length_normalized!r}")


@dataclass(frozen=True)
class ExoPairConfig:
    """Config of EXO for pairs (Ji et al. 2024)."""

    beta: float = 0.1
    """Inverse temperature of the policy's distribution over the pair."""
    label_smoothing: float = 1e-3
    """Target probability epsilon of the rejected response, in (0, 1); the paper uses 1e-3."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, low_open=True)


@dataclass(frozen=True)
class DiscoPOPConfig:
    """Config of DiscoPOP, the log-ratio modulated loss (Lu et al. 2024)."""

    beta: float = 0.1
    """Inverse temperature on the log-ratios."""
    tau: float = 0.05
    """Temperature of the sigmoid mixing the logistic and exponential parts; the paper uses 0.05."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("tau", self.tau, 0.0, low_open=True)


@dataclass(frozen=True)
class SFTConfig:
    """Config of the SFT term: it has no hyperparameters (weight it with :func:`weighted_sum`)."""


@dataclass(frozen=True)
class SimPOConfig:
    """Config of SimPO (Meng et al. 2024)."""

    beta: float = 2.0
    """Scale of the length-averaged log-probs; SimPO uses larger values than DPO."""
    gamma: float = 1.0
    """Target reward margin gamma >= 0, in the same units as beta times an average log-prob."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("gamma", self.gamma, 0.0)


@dataclass(frozen=True)
class CPOConfig:
    """Config of CPO (Xu et al. 2024)."""

    beta: float = 0.1
    """Inverse temperature on the policy log-prob difference."""
    nll_weight: float = 1.0
    """Weight of the NLL term on the chosen response (TRL's cpo_alpha); 0 drops it."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("nll_weight", self.nll_weight, 0.0)


@dataclass(frozen=True)
class ORPOConfig:
    """Config of ORPO (Hong et al. 2024)."""

    odds_ratio_weight: float = 0.1
    """Weight lambda of the odds-ratio term against the NLL term (TRL calls it beta)."""

    def __post_init__(self) -> None:
        _check_range("odds_ratio_weight", self.odds_ratio_weight, 0.0, low_open=True)


@dataclass(frozen=True)
class KTOConfig:
    """Config of KTO (Ethayarajh et al. 2024)."""

    beta: float = 0.1
    """Inverse temperature on the log-ratios."""
    desirable_weight: float = 1.0
    """lambda_D, the weight of desirable examples."""
    undesirable_weight: float = 1.0
    """lambda_U, the weight of undesirable examples."""

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, low_open=True)
        _check_range("desirable_weight", self.desirable_weight, 0.0, low_open=True)
        _check_range("undesirable_weight", self.undesirable_weight, 0.0, low_open=True)


LossConfig = (
    BetaConfig
    | SmoothedConfig
    | RobustConfig
    | IPOConfig
    | ExoPairConfig
    | DiscoPOPConfig
    | SFTConfig
    | SimPOConfig
    | CPOConfig
    | ORPOConfig
    | KTOConfig
)


ConfigT = TypeVar("ConfigT")


def _resolve_config(config: ConfigT | None, config_type: type[ConfigT], loss_name: str) -> ConfigT:
    if config is None:
        return config_type()
    if type(config) is not config_type:
        raise TypeError(
            f"{loss_name} takes a {config_type.__name__}, got {type(config).__name__}; "
            f"its arguments are {[f.name for f in fields(config_type)]}"
        )
    return config


# ---------------------------------------------------------------------------
# paired losses with a reference model


def _paired_output(
    losses: Tensor, beta: float, chosen_logratios: Tensor, rejected_logratios: Tensor
) -> PreferenceLossOutput:
    """The loss with DPO's implicit rewards beta * log(pi / pi_ref)."""
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=beta * chosen_logratios.detach(),
        rejected_rewards=beta * rejected_logratios.detach(),
    )


def _smoothed_logistic(logits: Tensor, label_smoothing: float) -> Tensor:
    """(1 - eps) * -log sigmoid(z) + eps * -log sigmoid(-z): logistic loss on smoothed labels."""
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo_sigmoid(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """DPO: -log sigmoid(beta * (h_chosen - h_rejected)), h = log(pi / pi_ref)."""
    config = _resolve_config(config, BetaConfig, "sigmoid")
    chosen_logratios, rejected_logratios = logps.logratios("sigmoid")  # (B,), (B,)
    logits = config.beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(logits)  # Rafailov et al. 2023, eq. 7
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def cdpo(logps: PairedLogps, config: SmoothedConfig | None = None) -> PreferenceLossOutput:
    """Conservative DPO: DPO's loss against labels smoothed by epsilon."""
    config = _resolve_config(config, SmoothedConfig, "cdpo")
    chosen_logratios, rejected_logratios = logps.logratios("cdpo")
    logits = config.beta * (chosen_logratios - rejected_logratios)
    # (1 - eps) L(h) + eps L(-h), Mitchell 2023, "A note on DPO with noisy preferences"
    losses = _smoothed_logistic(logits, config.label_smoothing)
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def robust(logps: PairedLogps, config: RobustConfig | None = None) -> PreferenceLossOutput:
    """Robust DPO: an unbiased estimate of the clean DPO loss under a known label flip rate."""
    config = _resolve_config(config, RobustConfig, "robust")
    chosen_logratios, rejected_logratios = logps.logratios("robust")
    logits = config.beta * (chosen_logratios - rejected_logratios)
    epsilon = config.label_smoothing
    clean_term = -(1 - epsilon) * F.logsigmoid(logits)
    flipped_term = -epsilon * F.logsigmoid(-logits)
    losses = (clean_term - flipped_term) / (1 - 2 * epsilon)  # Chowdhury et al. 2024, rDPO loss
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def ipo(logps: PairedLogps, config: IPOConfig | None = None) -> PreferenceLossOutput:
    """IPO: squared distance of the log-ratio gap from 1 / (2 tau)."""
    config = _resolve_config(config, IPOConfig, "ipo")
    chosen_logratios, rejected_logratios = logps.logratios("ipo")
    if config.length_normalized:
        chosen_lengths, rejected_lengths = logps.lengths("ipo with length_normalized=True")
        gap = chosen_logratios / chosen_lengths - rejected_logratios / rejected_lengths
    else:
        gap = chosen_logratios - rejected_logratios
    losses = (gap - 1 / (2 * config.beta)) ** 2  # Azar et al. 2023, eq. 17 (beta is tau)
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def hinge(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """SLiC's hinge on the log-ratio gap, margin 1 / beta."""
    config = _resolve_config(config, BetaConfig, "hinge")
    chosen_logratios, rejected_logratios = logps.logratios("hinge")
    logits = config.beta * (chosen_logratios - rejected_logratios)
    losses = torch.relu(1 - logits)  # Zhao et al. 2023, SLiC rank calibration loss, on log-ratios
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def exo_pair(logps: PairedLogps, config: ExoPairConfig | None = None) -> PreferenceLossOutput:
    """EXO for K = 2: KL(policy's distribution over the pair || smoothed target [1 - eps, eps])."""
    config = _resolve_config(config, ExoPairConfig, "exo_pair")
    chosen_logratios, rejected_logratios = logps.logratios("exo_pair")
    logits = config.beta * (chosen_logratios - rejected_logratios)
    epsilon = config.label_smoothing
    # KL(q || p) over the pair, q = softmax of the scaled log-ratios, p = [1 - eps, eps]
    chosen_term = torch.sigmoid(logits) * (F.logsigmoid(logits) - math.log1p(-epsilon))
    rejected_term = torch.sigmoid(-logits) * (F.logsigmoid(-logits) - math.log(epsilon))
    losses = chosen_term + rejected_term  # Ji et al. 2024, eq. 16 with K = 2
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def nca_pair(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """NCA for a pair: raise the chosen reward in absolute terms, lower both against the noise."""
    config = _resolve_config(config, BetaConfig, "nca_pair")
    chosen_logratios, rejected_logratios = logps.logratios("nca_pair")
    chosen_scores = config.beta * chosen_logratios
    rejected_scores = config.beta * rejected_logratios
    noise_term = 0.5 * (F.logsigmoid(-chosen_scores) + F.logsigmoid(-rejected_scores))
    losses = -F.logsigmoid(chosen_scores) - noise_term  # Chen et al. 2024, NCA loss, K = 2
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def bco_pair(
    logps: PairedLogps, reward_shift: Tensor, config: BetaConfig | None = None
) -> PreferenceLossOutput:
    """BCO on pairs: chosen rewards are the positive class, rejected the negative, around delta.

    ``reward_shift`` is delta, a 0-dim tensor: the running mean of the implicit
    rewards (:class:`RunningMean`); it is detached here. 0 reproduces TRL 1.16.
    """
    config = _resolve_config(config, BetaConfig, "bco_pair")
    delta = _check_scalar_input("reward_shift", reward_shift, logps.policy_chosen_logps)
    chosen_logratios, rejected_logratios = logps.logratios("bco_pair")
    chosen_term = -F.logsigmoid(config.beta * chosen_logratios - delta)
    rejected_term = -F.logsigmoid(-(config.beta * rejected_logratios - delta))
    losses = chosen_term + rejected_term  # Jung et al. 2024, BCO loss with shift delta
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def sppo_hard(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """SPPO with hard win probabilities: regress log-ratios onto +-1 / (2 beta)."""
    config = _resolve_config(config, BetaConfig, "sppo_hard")
    chosen_logratios, rejected_logratios = logps.logratios("sppo_hard")
    # eta * (P - 1/2) with eta = 1 / beta, P = 1 for the chosen and 0 for the rejected response
    target = 0.5 / config.beta
    chosen_error = (chosen_logratios - target) ** 2
    rejected_error = (rejected_logratios + target) ** 2
    losses = chosen_error + rejected_error  # Wu et al. 2024, eq. 4.7 of Algorithm 1, hard P
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def apo_zero(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """APO-zero: raise the chosen likelihood and lower the rejected one, against the reference."""
    config = _resolve_config(config, BetaConfig, "apo_zero")
    chosen_logratios, rejected_logratios = logps.logratios("apo_zero")
    chosen_term = torch.sigmoid(-config.beta * chosen_logratios)  # 1 - sigmoid(x) = sigmoid(-x)
    rejected_term = torch.sigmoid(config.beta * rejected_logratios)
    losses = chosen_term + rejected_term  # D'Oosterlinck et al. 2024, eq. 7
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def apo_down(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """APO-down: lower the chosen likelihood, and the rejected one more."""
    config = _resolve_config(config, BetaConfig, "apo_down")
    chosen_logratios, rejected_logratios = logps.logratios("apo_down")
    chosen_term = torch.sigmoid(config.beta * chosen_logratios)
    gap_term = torch.sigmoid(-config.beta * (chosen_logratios - rejected_logratios))
    losses = chosen_term + gap_term  # D'Oosterlinck et al. 2024, eq. 8
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def aot(logps: PairedLogps, config: SmoothedConfig | None = None) -> PreferenceLossOutput:
    """AOT (paired): sorted policy log-prob margins should dominate the sorted reference margins.

    Losses are per quantile of the batch, not per pair: example i's loss depends
    on the whole batch.
    """
    config = _resolve_config(config, SmoothedConfig, "aot")
    chosen_logratios, rejected_logratios = logps.logratios("aot")
    ref_chosen_logps, ref_rejected_logps = logps.reference("aot")
    policy_margins, _ = torch.sort(logps.policy_chosen_logps - logps.policy_rejected_logps)  # (B,)
    ref_margins, _ = torch.sort(ref_chosen_logps - ref_rejected_logps)  # (B,)
    # Sorting both is the optimal transport plan in one dimension: quantile i meets quantile i.
    logits = config.beta * (policy_margins - ref_margins)
    losses = _smoothed_logistic(logits, config.label_smoothing)  # Melnyk et al. 2024, AOT paired
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def aot_unpaired(logps: PairedLogps, config: SmoothedConfig | None = None) -> PreferenceLossOutput:
    """AOT (unpaired): sorted chosen log-ratios should dominate the sorted rejected log-ratios."""
    config = _resolve_config(config, SmoothedConfig, "aot_unpaired")
    chosen_logratios, rejected_logratios = logps.logratios("aot_unpaired")
    chosen_sorted, _ = torch.sort(chosen_logratios)  # (B,)
    rejected_sorted, _ = torch.sort(rejected_logratios)  # (B,)
    logits = config.beta * (chosen_sorted - rejected_sorted)
    losses = _smoothed_logistic(logits, config.label_smoothing)  # Melnyk et al. 2024, AOT unpaired
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def discopop(logps: PairedLogps, config: DiscoPOPConfig | None = None) -> PreferenceLossOutput:
    """DiscoPOP: a blend of the logistic and exponential losses, mixed by sigmoid(rho / tau)."""
    config = _resolve_config(config, DiscoPOPConfig, "discopop")
    chosen_logratios, rejected_logratios = logps.logratios("discopop")
    rho = config.beta * (chosen_logratios - rejected_logratios)
    logistic_part = -F.logsigmoid(rho) * torch.sigmoid(-rho / config.tau)
    # sigmoid(rho / tau) * exp(-rho), in a form that cannot overflow for tau <= 1
    exponential_part = torch.exp(F.logsigmoid(rho / config.tau) - rho)
    losses = logistic_part + exponential_part  # Lu et al. 2024, eq. 5
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def sigmoid_norm(logps: PairedLogps, config: BetaConfig | None = None) -> PreferenceLossOutput:
    """Length-normalised DPO: DPO on log-ratios divided by completion lengths."""
    config = _resolve_config(config, BetaConfig, "sigmoid_norm")
    chosen_logratios, rejected_logratios = logps.logratios("sigmoid_norm")
    chosen_lengths, rejected_lengths = logps.lengths("sigmoid_norm")
    per_token_gap = chosen_logratios / chosen_lengths - rejected_logratios / rejected_lengths
    losses = -F.logsigmoid(config.beta * per_token_gap)  # Rafailov et al. 2023, eq. 7, per token
    return _paired_output(losses, config.beta, chosen_logratios, rejected_logratios)


def sft(logps: PairedLogps, config: SFTConfig | None = None) -> PreferenceLossOutput:
    """NLL of the chosen response, averaged over its tokens (the SFT term of RPO).

    Rewards are the length-averaged policy log-probs of each response.
    """
    _resolve_config(config, SFTConfig, "sft")
    chosen_lengths, rejected_lengths = logps.lengths("sft")
    chosen_mean_logps = logps.policy_chosen_logps / chosen_lengths
    losses = -chosen_mean_logps  # Pang et al. 2024, length-normalised NLL term of the RPO objective
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=chosen_mean_logps.detach(),
        rejected_rewards=(logps.policy_rejected_logps / rejected_lengths).detach(),
    )


# ---------------------------------------------------------------------------
# reference-free paired losses


def simpo(logps: PairedLogps, config: SimPOConfig | None = None) -> PreferenceLossOutput:
    """SimPO: DPO without a reference, on length-averaged log-probs, with a target margin gamma."""
    config = _resolve_config(config, SimPOConfig, "simpo")
    chosen_lengths, rejected_lengths = logps.lengths("simpo")
    chosen_rewards = config.beta * logps.policy_chosen_logps / chosen_lengths
    rejected_rewards = config.beta * logps.policy_rejected_logps / rejected_lengths
    margin = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(margin - config.gamma)  # Meng et al. 2024, eq. 6
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=chosen_rewards.detach(),
        rejected_rewards=rejected_rewards.detach(),
    )


def cpo(logps: PairedLogps, config: CPOConfig | None = None) -> PreferenceLossOutput:
    """CPO: a reference-free DPO term plus a weighted NLL term on the chosen response.

    ``metrics["preference"]`` and ``metrics["nll"]`` hold the two terms
    (the NLL per chosen token); the loss is preference + nll_weight * nll.
    """
    config = _resolve_config(config, CPOConfig, "cpo")
    logits = config.beta * (logps.policy_chosen_logps - logps.policy_rejected_logps)
    preference_losses = -F.logsigmoid(logits)  # Xu et al. 2024, eq. 3 (L_prefer)
    metrics = {"preference": preference_losses.detach()}
    losses = preference_losses
    if config.nll_weight > 0:
        chosen_lengths, _ = logps.lengths("cpo with nll_weight > 0")
        nll = -logps.policy_chosen_logps / chosen_lengths  # L_NLL, per chosen token
        losses = preference_losses + config.nll_weight * nll  # Xu et al. 2024, L_prefer + L_NLL
        metrics["nll"] = nll.detach()
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=config.beta * logps.policy_chosen_logps.detach(),
        rejected_rewards=config.beta * logps.policy_rejected_logps.detach(),
        metrics=metrics,
    )


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler 2012).

    Each branch only sees inputs on its own side, so the branch torch.where
    discards cannot produce inf or NaN gradients.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)  # x = 0 means probability one: odds are infinite
    threshold = -math.log(2)
    far = torch.where(x < threshold, x, threshold)
    near = torch.where(x < threshold, threshold, x)
    return torch.where(x < threshold, torch.log1p(-torch.exp(far)), torch.log(-torch.expm1(near)))


def orpo(logps: PairedLogps, config: ORPOConfig | None = None) -> PreferenceLossOutput:
    """ORPO: NLL of the chosen response plus lambda times -log sigmoid(log odds ratio).

    Odds are computed from length-averaged log-probs p: odds = p / (1 - p).
    ``metrics["nll"]`` and ``metrics["log_odds_ratio"]`` hold the parts.
    """
    config = _resolve_config(config, ORPOConfig, "orpo")
    chosen_lengths, rejected_lengths = logps.lengths("orpo")
    chosen_mean_logps = logps.policy_chosen_logps / chosen_lengths
    rejected_mean_logps = logps.policy_rejected_logps / rejected_lengths
    # log odds(y) = log p - log(1 - p), Hong et al. 2024, eq. 4
    chosen_log_odds = chosen_mean_logps - _log1mexp(chosen_mean_logps)
    rejected_log_odds = rejected_mean_logps - _log1mexp(rejected_mean_logps)
    log_odds_ratio = chosen_log_odds - rejected_log_odds
    nll = -chosen_mean_logps
    odds_ratio_term = -F.logsigmoid(log_odds_ratio)  # Hong et al. 2024, eq. 7
    losses = nll + config.odds_ratio_weight * odds_ratio_term  # Hong et al. 2024, eq. 6
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=config.odds_ratio_weight * chosen_mean_logps.detach(),
        rejected_rewards=config.odds_ratio_weight * rejected_mean_logps.detach(),
        metrics={"nll": nll.detach(), "log_odds_ratio": log_odds_ratio.detach()},
    )


# ---------------------------------------------------------------------------
# unpaired (thumbs) losses


def _check_scalar_input(name: str, value: object, like: Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() != 0:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a 0-dim tensor, got {shape}")
    return value.detach().to(like.dtype)


def kto(
    logps: UnpairedLogps, kl_estimate: Tensor, config: KTOConfig | None = None
) -> UnpairedLossOutput:
    """KTO: prospect-theoretic value of each completion relative to the reference point z0.

    ``kl_estimate`` is z0, a 0-dim tensor: the caller's estimate of
    KL(pi || pi_ref), e.g. the mean log-ratio of mismatched (prompt, completion)
    pairs of the batch. It is detached and clamped at 0 here.
    """
    config = _resolve_config(config, KTOConfig, "kto")
    z0 = _check_scalar_input("kl_estimate", kl_estimate, logps.policy_logps).clamp(min=0)
    rewards = config.beta * (logps.policy_logps - logps.ref_logps)  # (B,)
    signs = logps.is_desirable.to(rewards.dtype) * 2 - 1  # +1 desirable, -1 undesirable
    weights = torch.where(logps.is_desirable, config.desirable_weight, config.undesirable_weight)
    # lambda_y - v(x, y), v = lambda_y * sigmoid(+-beta * (r - z0)); 1 - sigmoid(x) = sigmoid(-x)
    value_gaps = signs * (rewards - config.beta * z0)
    losses = weights.to(rewards.dtype) * torch.sigmoid(-value_gaps)  # Ethayarajh et al. 2024, eq. 8
    return UnpairedLossOutput(losses=losses, rewards=rewards.detach())


def bco(
    logps: UnpairedLogps, reward_shift: Tensor, config: BetaConfig | None = None
) -> UnpairedLossOutput:
    """BCO: a binary classifier on implicit rewards, desirable = positive, shifted by delta.

    ``reward_shift`` is delta, a 0-dim tensor: the running mean of the rewards of
    earlier batches (:class:`RunningMean`); it is detached here.
    """
    config = _resolve_config(config, BetaConfig, "bco")
    delta = _check_scalar_input("reward_shift", reward_shift, logps.policy_logps)
    rewards = config.beta * (logps.policy_logps - logps.ref_logps)  # (B,)
    signs = logps.is_desirable.to(rewards.dtype) * 2 - 1  # desirable is the positive class
    losses = -F.logsigmoid(signs * (rewards - delta))  # Jung et al. 2024, BCO loss with shift delta
    return UnpairedLossOutput(losses=losses, rewards=rewards.detach())


class RunningMean:
    """Exact running mean of every value passed to :meth:`update` (BCO's reward shift delta).

    Use: ``delta = torch.tensor(running.mean)``, compute the loss, then
    ``running.update(output.rewards)`` (gather the rewards across ranks first so
    every rank holds the same mean), or :meth:`add_sum` with their sum and count
    when they were summed elsewhere (over micro-batches and ranks). Save
    :meth:`state_dict` with the checkpoint so a resumed run continues with the
    same delta.
    """

    def __init__(self) -> None:
        self._count = 0
        self._mean = 0.0

    @property
    def count(self) -> int:
        return self._count

    @property
    def mean(self) -> float:
        """The mean of all values seen, 0.0 before the first update."""
        return self._mean

    def update(self, values: Tensor) -> None:
        values = values.detach().to(torch.float64).flatten()
        if values.numel() == 0:
            return
        if not bool(torch.isfinite(values).all()):
            raise ValueError("RunningMean.update got non-finite values; the rewards have diverged")
        self.add_sum(values.sum().item(), values.numel())

    def add_sum(self, total: float, count: int) -> None:
        """Fold in ``count`` values whose sum is ``total``."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"RunningMean.add_sum: count must be an integer >= 0, got {count!r}")
        if count == 0:
            return
        if not math.isfinite(total):
            raise ValueError("RunningMean.add_sum got a non-finite sum; the rewards have diverged")
        seen = self._count + count
        self._mean += (total / count - self._mean) * count / seen
        self._count = seen

    def state_dict(self) -> dict[str, float | int]:
        return {"count": self._count, "mean": self._mean}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        if set(state) != {"count", "mean"}:
            raise ValueError(
                f"RunningMean state must have keys 'count' and 'mean', got {sorted(state)}"
            )
        count, mean = state["count"], state["mean"]
        if not isinstance(count, int) or count < 0 or not math.isfinite(float(mean)):
            raise ValueError(f"RunningMean state is invalid: count={count!r}, mean={mean!r}")
        self._count, self._mean = count, float(mean)


# ---------------------------------------------------------------------------
# listwise


def lipo_lambda(logps: ListwiseLogps, config: BetaConfig | None = None) -> ListwiseLossOutput:
    """LiPO-lambda: pairwise logistic losses over each list, weighted by LambdaRank's NDCG weights.

    For every ordered pair (i, j) of present responses with label_i > label_j the
    loss adds Delta_ij * -log sigmoid(s_i - s_j), with s = beta * log(pi / pi_ref),
    Delta_ij = |G_i - G_j| * |1 / D(rank_i) - 1 / D(rank_j)|, gains
    G = 2**label - 1, discounts D(r) = log2(1 + r) and rank_i the 1-based position
    of response i when the list is sorted by s, highest first.
    ``metrics["num_pairs"]`` counts the ordered pairs of each list.
    """
    config = _resolve_config(config, BetaConfig, "lipo_lambda")
    mask = logps.mask  # (B, N)
    logratios = torch.where(mask, logps.policy_logps - logps.ref_logps, 0.0)  # (B, N), padding -> 0
    scores = config.beta * logratios  # (B, N)
    with torch.no_grad():
        ranking_scores = torch.where(mask, scores, -math.inf)  # padding ranks last
        order = torch.sort(ranking_scores, dim=1, descending=True, stable=True).indices  # (B, N)
        ranks = torch.empty_like(order)
        positions = torch.arange(1, order.shape[1] + 1, device=order.device)
        positions = positions.expand_as(order).contiguous()
        ranks.scatter_(1, order, positions)  # (B, N) 1-based rank of each response
        inverse_discounts = 1.0 / torch.log2(1.0 + ranks.to(scores.dtype))  # (B, N)
        gains = torch.pow(2.0, logps.labels.to(scores.dtype)) - 1.0  # (B, N)
        # Liu et al. 2024, LiPO-lambda weights: |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|
        lambda_weights = (gains[:, :, None] - gains[:, None, :]).abs() * (
            inverse_discounts[:, :, None] - inverse_discounts[:, None, :]
        ).abs()  # (B, N, N)
        preferred = logps.labels[:, :, None] > logps.labels[:, None, :]  # (B, N, N): i over j
        ordered_pairs = preferred & mask[:, :, None] & mask[:, None, :]
        pair_weights = torch.where(ordered_pairs, lambda_weights, 0.0)
    score_gaps = scores[:, :, None] - scores[:, None, :]  # (B, N, N) s_i - s_j
    pair_losses = pair_weights * -F.logsigmoid(score_gaps)  # (B, N, N)
    losses = pair_losses.sum(dim=(1, 2))  # Liu et al. 2024, LiPO-lambda loss
    return ListwiseLossOutput(
        losses=losses,
        rewards=scores.detach(),
        metrics={"num_pairs": ordered_pairs.sum(dim=(1, 2)).to(scores.dtype)},
    )


# ---------------------------------------------------------------------------
# state across optimizer steps
#
# Most losses are pure functions of one batch. A few read a statistic that no
# micro-batch holds alone: KTO's reference point z0 (a KL estimate over the whole
# optimizer step) and BCO's reward shift delta (the running mean of the rewards of
# earlier steps). Such a loss registers a LossState factory (LossSpec.state); a
# trainer creates one state per run and calls its hooks, in this order:
#   before_step(StepContext)      once per optimizer step, before its first micro-batch;
#   inputs(BatchContext)          for every batch, training or evaluation: the loss
#                                 function's extra inputs by name (LossSpec.extra_inputs);
#   after_micro_batch(rewards)    after each training micro-batch;
#   after_step(sum_over_ranks)    once the optimizer has stepped;
#   state_dict / load_state_dict  with each checkpoint (JSON values).
# Statistics over micro-batches and ranks are summed with sum_over_ranks and folded
# in once per step, so they do not change with gradient accumulation or the number
# of processes.


@dataclass(frozen=True)
class StepContext:
    """What :meth:`LossState.before_step` may read about the coming optimizer step."""

    global_batch: Sequence[int]
    """Indices of the step's examples, over all micro-batches and ranks, in batch order."""
    micro_batches: Sequence[Sequence[int]]
    """This rank's share of ``global_batch``, as the micro-batches it will train on."""
    sum_over_ranks: Callable[[Tensor], Tensor]
    """Element-wise sum of a tensor over all ranks (the identity with one process)."""
    mismatched_log_ratios: Callable[[Sequence[tuple[int, int]]], Tensor]
    """``(R,)`` log pi - log pi_ref, without gradient, of the rows ``prompt of example i +
    first completion of example j`` for each ``(i, j)`` given (training examples)."""
    device: torch.device
    """Where the model is."""


@dataclass(frozen=True)
class BatchContext:
    """What :meth:`LossState.inputs` may read about the batch being scored."""

    indices: Sequence[int]
    """Indices of the batch's examples in their set (training or evaluation), in batch order."""
    training: bool
    """True for a training micro-batch, False for an evaluation batch (which changes no state)."""
    like: Tensor
    """A tensor of the policy log-probs' dtype and device, for building inputs."""
    mismatched_log_ratios: Callable[[Sequence[tuple[int, int]]], Tensor]
    """As :attr:`StepContext.mismatched_log_ratios`, over the examples of this batch's set."""


class LossState:
    """A loss's state across steps; every hook does nothing by default, so a state
    defines only the hooks it needs."""

    def before_step(self, step: StepContext) -> None:
        """Prepare the statistics of the coming optimizer step."""

    def inputs(self, batch: BatchContext) -> dict[str, Tensor]:
        """The loss function's extra inputs for ``batch``: exactly the names of the spec's
        ``extra_inputs``, each a tensor the function accepts (0-dim for the built-in ones)."""
        return {}

    def after_micro_batch(self, rewards: Tensor) -> None:
        """Observe the detached rewards ``(M,)`` of every completion of a training micro-batch:
        paired, the B chosen then the B rejected; unpaired, the B completions; listwise,
        the present responses, example by example."""

    def after_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        """Fold the finished step into the state (the same on every rank)."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to continue, as JSON values (empty: nothing)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the keys are checked by the caller)."""


class RewardShift(LossState):
    """BCO's delta (input ``reward_shift``): the exact mean of the rewards of every completion
    trained on in all *earlier* optimizer steps; 0 at step 1.

    Each training micro-batch's rewards are summed; after the optimizer step the
    sums of all micro-batches and ranks fold into :attr:`reward_shift` at once, so
    delta is the same on every rank and does not depend on gradient accumulation
    or the number of processes. Evaluation reads delta and leaves it unchanged.
    Checkpoints hold ``{"reward_shift": {"count": ..., "mean": ...}}``.
    """

    def __init__(self) -> None:
        self.reward_shift = RunningMean()
        """The running mean of the rewards of the finished steps."""
        self._step_totals: Tensor | None = None  # (2,) float64: reward sum and count this step

    def inputs(self, batch: BatchContext) -> dict[str, Tensor]:
        return {"reward_shift": batch.like.new_tensor(self.reward_shift.mean)}

    def after_micro_batch(self, rewards: Tensor) -> None:
        rewards = rewards.detach().double()
        batch_totals = torch.stack([rewards.sum(), rewards.new_tensor(rewards.numel())])
        previous = self._step_totals
        self._step_totals = batch_totals if previous is None else previous + batch_totals

    def after_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        totals = self._step_totals
        if totals is None:  # no example of this step on this rank
            totals = torch.zeros(2, dtype=torch.float64)
        reward_sum, reward_count = sum_over_ranks(totals).tolist()
        self.reward_shift.add_sum(reward_sum, round(reward_count))
        self._step_totals = None

    def state_dict(self) -> dict[str, Any]:
        return {"reward_shift": self.reward_shift.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reward_shift.load_state_dict(state["reward_shift"])


class MismatchedKLEstimate(LossState):
    """KTO's reference point z0 (input ``kl_estimate``): the mean log(pi / pi_ref) of mismatched
    (prompt, completion) pairs, example b's prompt with the first completion of example b - 1
    (the last example for b = 0).

    Training: the pairs of the whole *global batch* of the step, scored by every
    process for its share before the first micro-batch and summed over the ranks,
    so z0 is the same for every micro-batch and process. Evaluation: the pairs of
    each evaluation batch. A batch of one example has no mismatched pair and uses
    z0 = 0. Nothing outlives a step, so checkpoints hold nothing.
    """

    def __init__(self) -> None:
        self._step_estimate: Tensor | None = None
        """z0 of the current optimizer step, set by :meth:`before_step`."""

    def before_step(self, step: StepContext) -> None:
        totals = torch.zeros(2, dtype=torch.float64, device=step.device)  # log-ratio sum, pairs
        if len(step.global_batch) > 1:
            position = {index: number for number, index in enumerate(step.global_batch)}
            for micro_batch in step.micro_batches:
                pairs = [(index, step.global_batch[position[index] - 1]) for index in micro_batch]
                log_ratios = step.mismatched_log_ratios(pairs).double()
                totals += torch.stack([log_ratios.sum(), log_ratios.new_tensor(len(micro_batch))])
        total, count = step.sum_over_ranks(totals).tolist()
        self._step_estimate = torch.tensor(
            total / count if count else 0.0, dtype=torch.float32, device=step.device
        )

    def inputs(self, batch: BatchContext) -> dict[str, Tensor]:
        if batch.training:
            if self._step_estimate is None:
                raise RuntimeError(
                    "the kl_estimate of a training batch is the step's: call before_step(model, "
                    "global_batch, micro_batches, sum_over_ranks) first, as the training loop does"
                )
            return {"kl_estimate": self._step_estimate.to(batch.like.dtype)}
        estimate = batch.like.new_zeros(())
        indices = batch.indices
        if len(indices) > 1:
            pairs = [(indices[b], indices[b - 1]) for b in range(len(indices))]
            estimate = batch.mismatched_log_ratios(pairs).mean().to(batch.like.dtype)
        return {"kl_estimate": estimate}

    def after_step(self, sum_over_ranks: Callable[[Tensor], Tensor]) -> None:
        self._step_estimate = None


# ---------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class LossSpec:
    """What the registry knows about a loss: everything a trainer needs to run it.

    A trainer reads only these fields, so adding a loss is adding one entry
    (:func:`register_loss`); it never tests a loss's name.
    """

    name: str
    """Registry name, e.g. ``"sigmoid"``."""
    function: Callable[..., Any]
    """The loss function: ``function(inputs, *extra_inputs, config=...)``."""
    config_type: type
    """The config dataclass the function takes."""
    kind: Literal["paired", "unpaired", "listwise"]
    """The input container: PairedLogps, UnpairedLogps or ListwiseLogps."""
    extra_inputs: tuple[str, ...] = ()
    """Per-batch tensors the function takes after the container, e.g. ``("reward_shift",)``;
    :attr:`state` supplies them by these names."""
    _: KW_ONLY
    uses_reference: bool = True
    """False for the losses computed from policy log-probs alone (SimPO, CPO, ORPO, SFT): the
    container's reference log-probs are then None and no reference model is used."""
    state: Callable[[], LossState] | None = None
    """Factory of the :class:`LossState` the loss keeps across steps (KTO's KL estimate,
    BCO's reward shift); required when there are extra inputs. A trainer makes one per run."""
    scores_mismatched_pairs: bool = False
    """True when :attr:`state` scores prompt/completion pairs other than the batch's own (KTO's
    KL estimate), so a reference model is kept even when the batch's reference log-probs
    are precomputed."""

    def __post_init__(self) -> None:
        if self.kind not in ("paired", "unpaired", "listwise"):
            raise ValueError(
                f"loss {self.name!r}: kind must be paired, unpaired or listwise, got {self.kind!r}"
            )
        if self.extra_inputs and self.state is None:
            raise ValueError(
                f"loss {self.name!r} takes {list(self.extra_inputs)} but has no state to supply "
                "them; give LossSpec(state=...) a LossState factory whose inputs() returns them"
            )
        if self.scores_mismatched_pairs and not (self.uses_reference and self.state is not None):
            raise ValueError(
                f"loss {self.name!r}: scores_mismatched_pairs needs a reference "
                "(uses_reference=True) and a state that scores the pairs"
            )


_SPECS = (
    LossSpec("sigmoid", dpo_sigmoid, BetaConfig, "paired"),
    LossSpec("cdpo", cdpo, SmoothedConfig, "paired"),
    LossSpec("robust", robust, RobustConfig, "paired"),
    LossSpec("ipo", ipo, IPOConfig, "paired"),
    LossSpec("hinge", hinge, BetaConfig, "paired"),
    LossSpec("exo_pair", exo_pair, ExoPairConfig, "paired"),
    LossSpec("nca_pair", nca_pair, BetaConfig, "paired"),
    LossSpec("bco_pair", bco_pair, BetaConfig, "paired", ("reward_shift",), state=RewardShift),
    LossSpec("sppo_hard", sppo_hard, BetaConfig, "paired"),
    LossSpec("apo_zero", apo_zero, BetaConfig, "paired"),
    LossSpec("apo_down", apo_down, BetaConfig, "paired"),
    LossSpec("aot", aot, SmoothedConfig, "paired"),
    LossSpec("aot_unpaired", aot_unpaired, SmoothedConfig, "paired"),
    LossSpec("discopop", discopop, DiscoPOPConfig, "paired"),
    LossSpec("sigmoid_norm", sigmoid_norm, BetaConfig, "paired"),
    LossSpec("sft", sft, SFTConfig, "paired", uses_reference=False),
    LossSpec("simpo", simpo, SimPOConfig, "paired", uses_reference=False),
    LossSpec("cpo", cpo, CPOConfig, "paired", uses_reference=False),
    LossSpec("orpo", orpo, ORPOConfig, "paired", uses_reference=False),
    LossSpec(
        "kto",
        kto,
        KTOConfig,
        "unpaired",
        ("kl_estimate",),
        state=MismatchedKLEstimate,
        scores_mismatched_pairs=True,
    ),
    LossSpec("bco", bco, BetaConfig, "unpaired", ("reward_shift",), state=RewardShift),
    LossSpec("lipo_lambda", lipo_lambda, BetaConfig, "listwise"),
)

_REGISTRY: dict[str, LossSpec] = {spec.name: spec for spec in _SPECS}

LOSSES: Mapping[str, LossSpec] = types.MappingProxyType(_REGISTRY)
"""Every loss by name (read-only; :func:`register_loss` adds one)."""


def register_loss(spec: LossSpec) -> LossSpec:
    """Add ``spec`` to :data:`LOSSES`, so ``AlignConfig(loss=spec.name)`` and :func:`make_loss`
    find it; a name already registered raises ValueError. Returns ``spec``."""
    if not isinstance(spec, LossSpec):
        raise TypeError(f"register_loss takes a LossSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY:
        raise ValueError(
            f"loss {spec.name!r} is already registered; pick another name or "
            "unregister_loss it first"
        )
    _REGISTRY[spec.name] = spec
    return spec


def unregister_loss(name: str) -> LossSpec:
    """Remove the loss ``name`` from :data:`LOSSES` and return its spec."""
    return _REGISTRY.pop(_lookup(name).name)


def _lookup(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; the losses are {sorted(LOSSES)}")
    return LOSSES[name]


def _build_config(spec: LossSpec, kwargs: Mapping[str, Any]) -> LossConfig:
    accepted = [f.name for f in fields(spec.config_type)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"loss {spec.name!r} does not take {unknown}; its arguments are {accepted}")
    return spec.config_type(**kwargs)


def make_loss(name: str, **kwargs: Any) -> Callable[..., Any]:
    """The loss ``name`` with its config built from ``kwargs`` now, so bad arguments fail early.

    ``make_loss("sigmoid", beta=0.1)(logps)`` is ``dpo_sigmoid(logps, BetaConfig(beta=0.1))``.
    An argument the loss does not take raises TypeError; a bad value raises ValueError.
    """
    spec = _lookup(name)
    config = _build_config(spec, kwargs)
    return functools.partial(spec.function, config=config)


# ---------------------------------------------------------------------------
# combinator


@dataclass(frozen=True)
class LossTerm:
    """One weighted part of :func:`weighted_sum`."""

    name: str
    """Registry name of a paired loss that takes no extra per-batch inputs."""
    weight: float = 1.0
    """Weight of this part in the sum, > 0."""
    config: LossConfig | None = None
    """Config of the part; None uses the loss's defaults."""

    def __post_init__(self) -> None:
        spec = _lookup(self.name)
        if spec.kind != "paired" or spec.extra_inputs:
            raise ValueError(
                "weighted_sum combines paired losses without extra inputs; "
                f"{self.name!r} is {spec.kind}"
                + (f" and takes {list(spec.extra_inputs)}" if spec.extra_inputs else "")
            )
        _check_range("weight", self.weight, 0.0, low_open=True)
        if self.config is not None and type(self.config) is not spec.config_type:
            raise TypeError(
                f"loss {self.name!r} takes a {spec.config_type.__name__}, "
                f"got {type(self.config).__name__}"
            )


def weighted_sum(logps: PairedLogps, terms: Sequence[LossTerm]) -> PreferenceLossOutput:
    """Weighted sum of paired losses on one batch, e.g. RPO = sigmoid + alpha * sft (Pang 2024).

    The rewards are the first term's. ``metrics`` holds, for each term, its
    unweighted per-example loss as ``"<name>/loss"`` and its own metrics as
    ``"<name>/<metric>"``.
    """
    if not terms:
        raise ValueError("weighted_sum needs at least one LossTerm")
    names = [term.name for term in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"each loss may appear once in weighted_sum, got {names}")
    outputs = [LOSSES[term.name].function(logps, config=term.config) for term in terms]
    weighted = [term.weight * output.losses for term, output in zip(terms, outputs)]
    losses = torch.stack(weighted).sum(dim=0)  # (B,)
    metrics: dict[str, Tensor] = {}
    for term, output in zip(terms, outputs):
        metrics[f"{term.name}/loss"] = output.losses.detach()
        metrics.update({f"{term.name}/{key}": value for key, value in output.metrics.items()})
    return PreferenceLossOutput(
        losses=losses,
        chosen_rewards=outputs[0].chosen_rewards,
        rejected_rewards=outputs[0].rejected_rewards,
        metrics=metrics,
    )
