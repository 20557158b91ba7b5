"""Hand-worked values, signs, gradients, stability and invariance of prefkit.losses.preference.

Unless a test says otherwise, the pair is the one built by ``_pair()``:

    policy: chosen -5, rejected -8;  reference: chosen -6, rejected -7
    -> chosen log-ratio h_c = 1, rejected log-ratio h_r = -1
    chosen length 2 tokens, rejected length 4 tokens

Useful values: logsigmoid(0.2) = -0.5981388693815918, logsigmoid(-0.2) = -0.7981388693815918
(they differ by exactly 0.2), logsigmoid(0.1) = -0.6443966600735709,
logsigmoid(-0.1) = -0.7443966600735709, sigmoid(0.1) = 0.52497918747894,
sigmoid(0.2) = 0.549833997312478.
"""

from __future__ import annotations

import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import top_level_imports
from prefkit.losses import preference
from prefkit.losses.preference import (
    LOSSES,
    BetaConfig,
    CPOConfig,
    DiscoPOPConfig,
    ExoPairConfig,
    IPOConfig,
    KTOConfig,
    ListwiseLogps,
    LossTerm,
    ORPOConfig,
    PairedLogps,
    RobustConfig,
    RunningMean,
    SFTConfig,
    SimPOConfig,
    SmoothedConfig,
    UnpairedLogps,
    aot,
    aot_unpaired,
    apo_down,
    apo_zero,
    bco,
    bco_pair,
    cdpo,
    cpo,
    discopop,
    dpo_sigmoid,
    exo_pair,
    hinge,
    ipo,
    kto,
    lipo_lambda,
    make_loss,
    nca_pair,
    orpo,
    robust,
    sft,
    sigmoid_norm,
    simpo,
    sppo_hard,
    weighted_sum,
)

DTYPE = torch.float64


def _tensor(values: list[float], dtype: torch.dtype = DTYPE) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def _pair(dtype: torch.dtype = DTYPE) -> PairedLogps:
    return PairedLogps(
        policy_chosen_logps=_tensor([-5.0], dtype),
        policy_rejected_logps=_tensor([-8.0], dtype),
        ref_chosen_logps=_tensor([-6.0], dtype),
        ref_rejected_logps=_tensor([-7.0], dtype),
        chosen_lengths=torch.tensor([2]),
        rejected_lengths=torch.tensor([4]),
    )


def _value(output) -> float:
    return output.losses.item()


# ---------------------------------------------------------------------------
# hand-worked values


def test_sigmoid_hand_worked():
    """beta=0.1, h_c=1, h_r=-1 -> logits 0.1 * 2 = 0.2 -> -logsigmoid(0.2) = 0.598139.

    Rewards: 0.1 * 1 = 0.1 and 0.1 * -1 = -0.1.
    """
    out = dpo_sigmoid(_pair(), BetaConfig(beta=0.1))
    assert _value(out) == pytest.approx(0.5981388693815918, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)
    assert not out.chosen_rewards.requires_grad


def test_cdpo_hand_worked():
    """eps=0.1, logits 0.2: 0.9 * 0.598139 + 0.1 * 0.798139 = 0.538325 + 0.079814 = 0.618139."""
    out = cdpo(_pair(), SmoothedConfig(beta=0.1, label_smoothing=0.1))
    assert _value(out) == pytest.approx(0.6181388693815918, abs=1e-12)


def test_robust_hand_worked_and_differs_from_cdpo():
    """eps=0.1, logits 0.2: (0.9 * 0.598139 - 0.1 * 0.798139) / (1 - 0.2) = 0.458511 / 0.8 = 0.573139.

    cDPO gives 0.618139 on the same input: the two losses are not the same.
    """
    out = robust(_pair(), RobustConfig(beta=0.1, label_smoothing=0.1))
    assert _value(out) == pytest.approx(0.5731388693815918, abs=1e-12)
    smoothed = cdpo(_pair(), SmoothedConfig(beta=0.1, label_smoothing=0.1))
    assert abs(_value(out) - _value(smoothed)) > 0.04


def test_robust_and_cdpo_reduce_to_dpo_without_smoothing():
    """eps=0: both are -logsigmoid(0.2) = 0.598139."""
    dpo = _value(dpo_sigmoid(_pair()))
    assert _value(robust(_pair(), RobustConfig(label_smoothing=0.0))) == pytest.approx(dpo)
    assert _value(cdpo(_pair(), SmoothedConfig(label_smoothing=0.0))) == pytest.approx(dpo)


def test_ipo_hand_worked_paper_and_length_normalised():
    """tau = beta = 0.1 -> target gap 1 / (2 * 0.1) = 5.

    Paper (sums): gap = 1 - (-1) = 2 -> (2 - 5)^2 = 9.
    Length-normalised (TRL): gap = 1/2 - (-1/4) = 0.75 -> (0.75 - 5)^2 = 18.0625.
    """
    assert _value(ipo(_pair(), IPOConfig(beta=0.1))) == pytest.approx(9.0)
    normalised = ipo(_pair(), IPOConfig(beta=0.1, length_normalized=True))
    assert _value(normalised) == pytest.approx(18.0625)


def test_hinge_hand_worked():
    """relu(1 - 0.2) = 0.8; with h_c = 11 the logits are 1.2 and the loss is 0."""
    assert _value(hinge(_pair())) == pytest.approx(0.8)
    far = PairedLogps(_tensor([5.0]), _tensor([-8.0]), _tensor([-6.0]), _tensor([-7.0]))
    assert _value(hinge(far)) == 0.0


def test_exo_pair_hand_worked():
    """eps=1e-3, logits 0.2; q = (sigmoid(0.2), sigmoid(-0.2)) = (0.549834, 0.450166).

    0.549834 * (-0.598139 - log(0.999)) + 0.450166 * (-0.798139 - log(0.001))
    = 0.549834 * (-0.598139 + 0.0010005) + 0.450166 * (-0.798139 + 6.907755) = 2.422015
    """
    out = exo_pair(_pair(), ExoPairConfig(beta=0.1, label_smoothing=1e-3))
    assert _value(out) == pytest.approx(2.422014620661648, abs=1e-12)


def test_nca_pair_hand_worked():
    """scores 0.1 * 1 = 0.1 and 0.1 * -1 = -0.1.

    -logsigmoid(0.1) - 0.5 logsigmoid(-0.1) - 0.5 logsigmoid(0.1)
    = 0.644397 + 0.372198 + 0.322198 = 1.338793
    """
    assert _value(nca_pair(_pair())) == pytest.approx(1.3387933201471418, abs=1e-12)


def test_bco_pair_hand_worked():
    """Rewards 0.1 and -0.1.

    delta = 0: -logsigmoid(0.1) - logsigmoid(0.1) = 2 * 0.644397 = 1.288793.
    delta = 0.05: -logsigmoid(0.1 - 0.05) - logsigmoid(-(-0.1 - 0.05)) = 1.289417.
    """
    out = bco_pair(_pair(), torch.tensor(0.0), BetaConfig(beta=0.1))
    assert _value(out) == pytest.approx(1.2887933201471418, abs=1e-12)
    shifted = bco_pair(_pair(), torch.tensor(0.05, dtype=DTYPE), BetaConfig(beta=0.1))
    assert _value(shifted) == pytest.approx(1.2894166958028184, abs=1e-12)


def test_sppo_hard_hand_worked():
    """Targets +-1 / (2 * 0.1) = +-5: (1 - 5)^2 + (-1 + 5)^2 = 16 + 16 = 32."""
    assert _value(sppo_hard(_pair())) == pytest.approx(32.0)


def test_apo_zero_hand_worked():
    """(1 - sigmoid(0.1)) + sigmoid(-0.1) = 2 * 0.475021 = 0.950042."""
    assert _value(apo_zero(_pair())) == pytest.approx(0.95004162504212, abs=1e-12)


def test_apo_down_hand_worked():
    """sigmoid(0.1) + (1 - sigmoid(0.1 * (1 - (-1)))) = 0.524979 + 0.450166 = 0.975145."""
    assert _value(apo_down(_pair())) == pytest.approx(0.9751451901664621, abs=1e-12)


def _two_pairs() -> PairedLogps:
    """Pair A is _pair(); pair B has policy (-4, -3) and reference (-3, -5)."""
    return PairedLogps(
        policy_chosen_logps=_tensor([-5.0, -4.0]),
        policy_rejected_logps=_tensor([-8.0, -3.0]),
        ref_chosen_logps=_tensor([-6.0, -3.0]),
        ref_rejected_logps=_tensor([-7.0, -5.0]),
    )


def test_aot_hand_worked():
    """Policy margins chosen - rejected: A 3, B -1 -> sorted [-1, 3].

    Reference margins: A 1, B 2 -> sorted [1, 2]. Differences [-2, 1], logits [-0.2, 0.1]
    -> losses [-logsigmoid(-0.2), -logsigmoid(0.1)] = [0.798139, 0.644397]. Paired DPO
    would use logits [0.2, -0.3] instead.
    """
    out = aot(_two_pairs(), SmoothedConfig(beta=0.1))
    expected = _tensor([0.7981388693815918, 0.6443966600735709])
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=1e-12)


def test_aot_unpaired_hand_worked():
    """Chosen log-ratios: A 1, B -1 -> sorted [-1, 1]; rejected: A -1, B 2 -> sorted [-1, 2].

    Differences [0, -1], logits [0, -0.1] -> [log 2, -logsigmoid(-0.1)] = [0.693147, 0.744397].
    """
    out = aot_unpaired(_two_pairs(), SmoothedConfig(beta=0.1))
    expected = _tensor([math.log(2), 0.7443966600735709])
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=1e-12)


def test_aot_on_one_pair_is_cdpo():
    """With B = 1 sorting does nothing: both AOT losses equal cDPO's on the same pair."""
    config = SmoothedConfig(beta=0.1, label_smoothing=0.2)
    reference = _value(cdpo(_pair(), config))
    assert _value(aot(_pair(), config)) == pytest.approx(reference)
    assert _value(aot_unpaired(_pair(), config)) == pytest.approx(reference)


def test_discopop_hand_worked():
    """rho = 0.2, tau = 0.05: sigmoid(rho / tau) = sigmoid(4) = 0.982014, exp(-0.2) = 0.818731.

    0.598139 * (1 - 0.982014) + 0.818731 * 0.982014 = 0.010758 + 0.804005 = 0.814763
    """
    out = discopop(_pair(), DiscoPOPConfig(beta=0.1, tau=0.05))
    assert _value(out) == pytest.approx(0.8147631411418853, abs=1e-12)


def test_sigmoid_norm_hand_worked():
    """Per-token log-ratios 1 / 2 and -1 / 4: logits 0.1 * 0.75 = 0.075 -> 0.656350."""
    assert _value(sigmoid_norm(_pair())) == pytest.approx(0.6563501408267951, abs=1e-12)


def test_sft_hand_worked():
    """-(-5) / 2 = 2.5 per chosen token; rewards are the mean log-probs -2.5 and -8 / 4 = -2."""
    out = sft(_pair())
    assert _value(out) == pytest.approx(2.5)
    assert out.chosen_rewards.item() == pytest.approx(-2.5)
    assert out.rejected_rewards.item() == pytest.approx(-2.0)


def test_simpo_hand_worked():
    """beta=2, gamma=1: mean log-probs -5/2 = -2.5 and -8/4 = -2.

    2 * (-2.5) - 2 * (-2) - 1 = -2 -> -logsigmoid(-2) = 2.126928. The reference is not used.
    """
    out = simpo(_pair(), SimPOConfig(beta=2.0, gamma=1.0))
    assert _value(out) == pytest.approx(2.1269280110429727, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(-5.0)


def test_cpo_hand_worked():
    """beta=0.1: -logsigmoid(0.1 * (-5 + 8)) = -logsigmoid(0.3) = 0.554355; NLL 5 / 2 = 2.5.

    nll_weight=1: 0.554355 + 2.5 = 3.054355; nll_weight=0: 0.554355.
    """
    out = cpo(_pair(), CPOConfig(beta=0.1, nll_weight=1.0))
    assert _value(out) == pytest.approx(3.0543552444685274, abs=1e-12)
    assert out.metrics["nll"].item() == pytest.approx(2.5)
    no_nll = cpo(_pair(), CPOConfig(beta=0.1, nll_weight=0.0))
    assert _value(no_nll) == pytest.approx(0.5543552444685271, abs=1e-12)


def test_orpo_hand_worked():
    """Mean log-probs p_c = -2.5, p_r = -2.

    log odds = p - log(1 - exp(p)): -2.5 + 0.085650 = -2.414350 and -2 + 0.145413 = -1.854587;
    log odds ratio -0.559763; -logsigmoid(-0.559763) = 1.011695.
    lambda = 0.1: 2.5 + 0.1 * 1.011695 = 2.601169.
    """
    out = orpo(_pair(), ORPOConfig(odds_ratio_weight=0.1))
    assert _value(out) == pytest.approx(2.6011694578124978, abs=1e-12)
    assert out.metrics["log_odds_ratio"].item() == pytest.approx(-0.5597629741268209, abs=1e-12)


def _thumbs(dtype: torch.dtype = DTYPE) -> UnpairedLogps:
    """A desirable completion with log-ratio 1 and an undesirable one with log-ratio -1."""
    return UnpairedLogps(
        policy_logps=_tensor([-5.0, -8.0], dtype),
        ref_logps=_tensor([-6.0, -7.0], dtype),
        is_desirable=torch.tensor([True, False]),
    )


def test_kto_hand_worked():
    """beta=0.1, z0 = 0.5 -> beta * z0 = 0.05; rewards 0.1 and -0.1.

    desirable:   lambda_D * (1 - sigmoid(0.1 - 0.05)) = 2 * 0.487503 = 0.975005
    undesirable: lambda_U * (1 - sigmoid(0.05 - (-0.1))) = 1.5 * 0.462570 = 0.693855
    """
    config = KTOConfig(beta=0.1, desirable_weight=2.0, undesirable_weight=1.5)
    out = kto(_thumbs(), torch.tensor(0.5), config)
    expected = _tensor([0.9750052070315792, 0.6938552319843757])
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.rewards, _tensor([0.1, -0.1]))


def test_kto_clamps_and_detaches_the_kl_estimate():
    """A negative z0 is clamped to 0: both losses are 1 - sigmoid(0.1) = 0.475021; no gradient to z0."""
    kl_estimate = torch.tensor(-3.0, dtype=DTYPE, requires_grad=True)
    out = kto(_thumbs(), kl_estimate)
    torch.testing.assert_close(out.losses, _tensor([0.47502081252106, 0.47502081252106]))
    assert not out.losses.requires_grad


def test_bco_hand_worked():
    """beta=0.1, delta=0.05; rewards 0.1 (desirable) and -0.1 (undesirable).

    -logsigmoid(0.1 - 0.05) = 0.668460 and -logsigmoid(-(-0.1 - 0.05)) = 0.620957.
    """
    out = bco(_thumbs(), torch.tensor(0.05, dtype=DTYPE), BetaConfig(beta=0.1))
    expected = _tensor([0.6684596480132863, 0.6209570477895321])
    torch.testing.assert_close(out.losses, expected, rtol=0, atol=1e-12)


def test_lipo_lambda_hand_worked_two_responses():
    """Labels (1, 0), log-ratios (1, -1), beta 0.1 -> scores (0.1, -0.1), ranks (1, 2).

    Delta = |(2^1 - 1) - (2^0 - 1)| * |1 / log2(2) - 1 / log2(3)| = 1 * 0.369070;
    loss = 0.369070 * -logsigmoid(0.2) = 0.369070 * 0.598139 = 0.220755.
    """
    logps = ListwiseLogps(
        policy_logps=_tensor([[-5.0, -8.0]]),
        ref_logps=_tensor([[-6.0, -7.0]]),
        labels=_tensor([[1.0, 0.0]]),
        mask=torch.tensor([[True, True]]),
    )
    out = lipo_lambda(logps, BetaConfig(beta=0.1))
    assert _value(out) == pytest.approx(0.22075525992115386, abs=1e-12)
    assert out.metrics["num_pairs"].item() == 1


def _three_responses() -> ListwiseLogps:
    """Labels (1, 0.5, 0), log-ratios (1, -1, 0), one padded slot; a second list of one response."""
    return ListwiseLogps(
        policy_logps=_tensor([[-5.0, -8.0, -4.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]),
        ref_logps=_tensor([[-6.0, -7.0, -4.0, 0.0], [-2.0, 0.0, 0.0, 0.0]]),
        labels=_tensor([[1.0, 0.5, 0.0, 9.0], [1.0, 0.0, 0.0, 0.0]]),
        mask=torch.tensor([[True, True, True, False], [True, False, False, False]]),
    )


def test_lipo_lambda_hand_worked_three_responses_with_padding():
    """Scores (0.1, -0.1, 0) rank (1, 3, 2); gains 2^label - 1 = (1, 0.414214, 0).

    (0, 1): |1 - 0.414214| * |1/log2(2) - 1/log2(4)| = 0.585786 * 0.5     = 0.292893, x 0.598139
    (0, 2): |1 - 0|        * |1/log2(2) - 1/log2(3)| = 1 * 0.369070       = 0.369070, x 0.644397
    (1, 2): |0.414214 - 0| * |1/log2(4) - 1/log2(3)| = 0.414214 * 0.130930 = 0.054233, x 0.744397
    total 0.175189 + 0.237828 + 0.040371 = 0.453389. The padded slot (label 9) is ignored;
    the one-response list has no pair and loss 0.
    """
    out = lipo_lambda(_three_responses(), BetaConfig(beta=0.1))
    torch.testing.assert_close(out.losses, _tensor([0.45338922735744097, 0.0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.metrics["num_pairs"], _tensor([3.0, 0.0]))
    assert out.rewards[0, 3].item() == 0.0


def test_rpo_weighted_sum_hand_worked():
    """RPO = DPO + alpha * SFT with alpha = 0.5: 0.598139 + 0.5 * 2.5 = 1.848139."""
    terms = [LossTerm("sigmoid", 1.0, BetaConfig(beta=0.1)), LossTerm("sft", 0.5)]
    out = weighted_sum(_pair(), terms)
    assert _value(out) == pytest.approx(1.8481388693815918, abs=1e-12)
    assert out.metrics["sigmoid/loss"].item() == pytest.approx(0.5981388693815918)
    assert out.metrics["sft/loss"].item() == pytest.approx(2.5)
    assert out.chosen_rewards.item() == pytest.approx(0.1)


def test_weighted_sum_keeps_each_parts_metrics():
    """CPO's parts appear under its name: cpo/preference = 0.554355 and cpo/nll = 2.5."""
    out = weighted_sum(_pair(), [LossTerm("cpo", 2.0), LossTerm("sigmoid", 1.0)])
    assert out.metrics["cpo/preference"].item() == pytest.approx(0.5543552444685271)
    assert out.metrics["cpo/nll"].item() == pytest.approx(2.5)
    assert _value(out) == pytest.approx(2 * 3.0543552444685274 + 0.5981388693815918)


# ---------------------------------------------------------------------------
# signs: improving the chosen response lowers the loss


PAIRED_CASES = {
    "sigmoid": (dpo_sigmoid, BetaConfig()),
    "cdpo": (cdpo, SmoothedConfig(label_smoothing=0.1)),
    "robust": (robust, RobustConfig()),
    "ipo": (ipo, IPOConfig()),
    "ipo_length_normalized": (ipo, IPOConfig(length_normalized=True)),
    "hinge": (hinge, BetaConfig()),
    "exo_pair": (exo_pair, ExoPairConfig()),
    "nca_pair": (nca_pair, BetaConfig()),
    "sppo_hard": (sppo_hard, BetaConfig()),
    "apo_zero": (apo_zero, BetaConfig()),
    "apo_down": (apo_down, BetaConfig()),
    "aot": (aot, SmoothedConfig()),
    "aot_unpaired": (aot_unpaired, SmoothedConfig()),
    "discopop": (discopop, DiscoPOPConfig()),
    "sigmoid_norm": (sigmoid_norm, BetaConfig()),
    "sft": (sft, SFTConfig()),
    "simpo": (simpo, SimPOConfig()),
    "cpo": (cpo, CPOConfig()),
    "orpo": (orpo, ORPOConfig()),
}


def _paired_gradients(name: str) -> tuple[float, float]:
    function, config = PAIRED_CASES[name]
    chosen = _tensor([-5.0]).requires_grad_()
    rejected = _tensor([-8.0]).requires_grad_()
    logps = PairedLogps(
        chosen, rejected, _tensor([-6.0]), _tensor([-7.0]), torch.tensor([2]), torch.tensor([4])
    )
    function(logps, config).losses.sum().backward()
    rejected_grad = 0.0 if rejected.grad is None else rejected.grad.item()  # SFT ignores it
    return chosen.grad.item(), rejected_grad


@pytest.mark.parametrize("name", sorted(set(PAIRED_CASES) - {"apo_down"}))
def test_raising_chosen_logp_lowers_the_loss(name):
    """At the base pair, d loss / d log pi(chosen) < 0 and d loss / d log pi(rejected) >= 0.

    SFT ignores the rejected response, so its rejected gradient is exactly 0.
    """
    chosen_grad, rejected_grad = _paired_gradients(name)
    assert chosen_grad < 0
    if name == "sft":
        assert rejected_grad == 0.0
    else:
        assert rejected_grad > 0


def test_apo_down_lowers_the_chosen_likelihood():
    """APO-down is for chosen responses worse than the policy's own: at the base pair both
    gradients are positive (lower both likelihoods), and lowering the rejected one helps more.

    d/dh_c = 0.1 * sigmoid'(0.1) - 0.1 * sigmoid'(0.2) = 0.1 * (0.249376 - 0.247517) > 0.
    """
    chosen_grad, rejected_grad = _paired_gradients("apo_down")
    assert chosen_grad == pytest.approx(0.1 * (0.24937604019289197 - 0.24751657271185995))
    assert rejected_grad > chosen_grad > 0


@pytest.mark.parametrize("name", ["kto", "bco"])
def test_unpaired_signs(name):
    """Raising a desirable completion's log-prob lowers the loss; an undesirable one's raises it."""
    policy = _tensor([-5.0, -8.0]).requires_grad_()
    logps = UnpairedLogps(policy, _tensor([-6.0, -7.0]), torch.tensor([True, False]))
    if name == "kto":
        out = kto(logps, torch.tensor(0.2))
    else:
        out = bco(logps, torch.tensor(0.0))
    out.losses.sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]


def test_lipo_lambda_signs():
    """Raising the best response's log-prob lowers the loss; raising the worst one's raises it."""
    logps = _three_responses()
    policy = logps.policy_logps.clone().requires_grad_()
    lipo_lambda(
        ListwiseLogps(policy, logps.ref_logps, logps.labels, logps.mask)
    ).losses.sum().backward()
    assert policy.grad[0, 0] < 0 < policy.grad[0, 2]
    assert policy.grad[0, 3] == 0.0 and policy.grad[1].abs().sum() == 0.0


# ---------------------------------------------------------------------------
# gradients


def _random_pairs(batch_size: int, seed: int, dtype: torch.dtype = DTYPE) -> PairedLogps:
    generator = torch.Generator().manual_seed(seed)

    def logps() -> torch.Tensor:
        return -torch.rand(batch_size, generator=generator, dtype=dtype) * 20 - 0.5

    return PairedLogps(
        policy_chosen_logps=logps(),
        policy_rejected_logps=logps(),
        ref_chosen_logps=logps(),
        ref_rejected_logps=logps(),
        chosen_lengths=torch.randint(1, 12, (batch_size,), generator=generator),
        rejected_lengths=torch.randint(1, 12, (batch_size,), generator=generator),
    )


@pytest.mark.parametrize("name", ["sigmoid", "robust", "exo_pair", "discopop", "orpo", "simpo"])
def test_gradcheck_paired(name):
    function, config = PAIRED_CASES[name]
    base = _random_pairs(4, seed=3)

    def loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        logps = PairedLogps(
            chosen,
            rejected,
            base.ref_chosen_logps,
            base.ref_rejected_logps,
            base.chosen_lengths,
            base.rejected_lengths,
        )
        return function(logps, config).losses

    inputs = (
        base.policy_chosen_logps.clone().requires_grad_(),
        base.policy_rejected_logps.clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(loss, inputs)


def test_gradcheck_orpo_on_both_sides_of_the_log1mexp_branch():
    """Mean log-probs -0.1 and -0.69 (near branch) and -0.7 and -3 (far branch)."""
    lengths = torch.tensor([1, 1])

    def loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        return orpo(PairedLogps(chosen, rejected, None, None, lengths, lengths)).losses

    inputs = (
        _tensor([-0.1, -0.7]).requires_grad_(),
        _tensor([-0.69, -3.0]).requires_grad_(),
    )
    assert torch.autograd.gradcheck(loss, inputs)


def test_gradcheck_unpaired_and_listwise():
    thumbs = _thumbs()
    assert torch.autograd.gradcheck(
        lambda policy: (
            kto(
                UnpairedLogps(policy, thumbs.ref_logps, thumbs.is_desirable), torch.tensor(0.3)
            ).losses
        ),
        (thumbs.policy_logps.clone().requires_grad_(),),
    )
    lists = _three_responses()
    assert torch.autograd.gradcheck(
        lambda policy: (
            lipo_lambda(ListwiseLogps(policy, lists.ref_logps, lists.labels, lists.mask)).losses
        ),
        (lists.policy_logps.clone().requires_grad_(),),
    )


# ---------------------------------------------------------------------------
# stability in float32


def _huge_pairs(sign: float) -> PairedLogps:
    """Log-ratios of +-1e4 in float32 (logits +-2000 at beta 0.1); lengths 1."""
    return PairedLogps(
        policy_chosen_logps=_tensor([sign * 1e4 - 1.0], torch.float32).requires_grad_(),
        policy_rejected_logps=_tensor([-sign * 1e4 - 1.0], torch.float32).requires_grad_(),
        ref_chosen_logps=_tensor([-1.0], torch.float32),
        ref_rejected_logps=_tensor([-1.0], torch.float32),
        chosen_lengths=torch.tensor([1]),
        rejected_lengths=torch.tensor([1]),
    )


def test_naive_softplus_overflows_where_the_losses_do_not():
    """log(1 + exp(2000)) is inf in float32; -logsigmoid(-2000) is 2000. The test below can fail."""
    logits = torch.tensor([-2000.0])
    assert torch.isinf(torch.log(1 + torch.exp(-logits))).all()
    assert -F.logsigmoid(logits).item() == 2000.0


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("name", sorted(set(PAIRED_CASES) - {"orpo"}))
def test_stable_at_huge_log_ratios_in_float32(name, sign):
    """Losses and gradients stay finite at log-ratios of +-1e4 (probabilities underflow long before)."""
    function, config = PAIRED_CASES[name]
    logps = _huge_pairs(sign)
    losses = function(logps, config).losses
    assert torch.isfinite(losses).all(), losses
    losses.sum().backward()
    for logp in (logps.policy_chosen_logps, logps.policy_rejected_logps):
        assert logp.grad is None or torch.isfinite(logp.grad).all()


def test_dpo_in_float32_matches_the_asymptotes():
    """Wrong way round by 2000 logits the loss is 2000; the right way round it is 0."""
    assert _value(dpo_sigmoid(_huge_pairs(-1.0))) == pytest.approx(2000.0)
    assert _value(dpo_sigmoid(_huge_pairs(1.0))) == 0.0
    # discopop at rho = -2000: the logistic part is 2000 and exp(-rho) * sigmoid(rho / tau) is 0
    assert _value(discopop(_huge_pairs(-1.0))) == pytest.approx(2000.0)


@pytest.mark.parametrize(
    "chosen_mean, rejected_mean",
    [(-1e-7, -30.0), (0.0, -1.0), (-1e4, -1e-3), (-0.6931, -0.6932)],
)
def test_orpo_stable_in_float32(chosen_mean, rejected_mean):
    """Log-probs at, near and far below 0, and on both sides of -log 2: finite loss and gradients."""
    chosen = _tensor([chosen_mean], torch.float32).requires_grad_()
    rejected = _tensor([rejected_mean], torch.float32).requires_grad_()
    lengths = torch.tensor([1])
    out = orpo(PairedLogps(chosen, rejected, None, None, lengths, lengths))
    assert torch.isfinite(out.losses).all()
    out.losses.sum().backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()


def test_unpaired_and_listwise_stable_in_float32():
    big = _tensor([1e4, -1e4, 1e4, -1e4], torch.float32).requires_grad_()
    thumbs = UnpairedLogps(big, torch.zeros(4), torch.tensor([True, True, False, False]))
    for out in (kto(thumbs, torch.tensor(5.0)), bco(thumbs, torch.tensor(-3.0))):
        assert torch.isfinite(out.losses).all()
    lists = ListwiseLogps(
        big.reshape(1, 4),
        torch.zeros(1, 4),
        _tensor([[3.0, 2.0, 1.0, 0.0]], torch.float32),
        torch.ones(1, 4, dtype=torch.bool),
    )
    out = lipo_lambda(lists)
    assert torch.isfinite(out.losses).all()
    out.losses.sum().backward()
    assert torch.isfinite(big.grad).all()


# ---------------------------------------------------------------------------
# arguments a loss does not use are rejected


def test_make_loss_rejects_an_argument_the_loss_does_not_take():
    with pytest.raises(TypeError, match="does not take \\['label_smoothing'\\]"):
        make_loss("sigmoid", beta=0.1, label_smoothing=0.1)
    with pytest.raises(TypeError, match="does not take \\['beta'\\]"):
        make_loss("sft", beta=0.1)
    with pytest.raises(TypeError, match="gamma"):
        make_loss("orpo", gamma=1.0)


def test_a_loss_rejects_a_config_of_another_loss():
    """DPO given a config with label_smoothing would ignore it: it raises instead."""
    with pytest.raises(TypeError, match="sigmoid takes a BetaConfig, got SmoothedConfig"):
        dpo_sigmoid(_pair(), SmoothedConfig(label_smoothing=0.1))
    with pytest.raises(TypeError, match="IPOConfig"):
        ipo(_pair(), BetaConfig())


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("sigmoid", {"beta": 0.0}),
        ("sigmoid", {"beta": float("nan")}),
        ("sigmoid", {"beta": True}),
        ("robust", {"label_smoothing": 0.5}),
        ("cdpo", {"label_smoothing": -0.1}),
        ("exo_pair", {"label_smoothing": 0.0}),
        ("discopop", {"tau": 0.0}),
        ("simpo", {"gamma": -1.0}),
        ("cpo", {"nll_weight": -1.0}),
        ("kto", {"desirable_weight": 0.0}),
    ],
)
def test_make_loss_validates_values_eagerly(name, kwargs):
    with pytest.raises(ValueError):
        make_loss(name, **kwargs)


def test_ipo_length_normalized_must_be_a_bool():
    with pytest.raises(TypeError, match="length_normalized"):
        IPOConfig(length_normalized=1)


def test_unknown_loss_name_lists_the_losses():
    with pytest.raises(ValueError, match="unknown loss 'dpo'.*'sigmoid'"):
        make_loss("dpo")


def test_loss_terms_are_validated():
    with pytest.raises(ValueError, match="unpaired"):
        LossTerm("kto")
    with pytest.raises(ValueError, match="reward_shift"):
        LossTerm("bco_pair")
    with pytest.raises(ValueError, match="weight"):
        LossTerm("sft", 0.0)
    with pytest.raises(TypeError, match="BetaConfig"):
        LossTerm("sigmoid", 1.0, SFTConfig())
    with pytest.raises(ValueError, match="once"):
        weighted_sum(_pair(), [LossTerm("sft"), LossTerm("sft")])
    with pytest.raises(ValueError, match="at least one"):
        weighted_sum(_pair(), [])


# ---------------------------------------------------------------------------
# containers


def test_paired_logps_validation():
    one = _tensor([-1.0])
    with pytest.raises(ValueError, match="same batch size"):
        PairedLogps(one, _tensor([-1.0, -2.0]))
    with pytest.raises(ValueError, match="both ref_chosen_logps and ref_rejected_logps"):
        PairedLogps(one, one, ref_chosen_logps=one)
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        PairedLogps(one.reshape(1, 1), one)
    with pytest.raises(TypeError, match="floating-point"):
        PairedLogps(torch.tensor([1]), one)
    with pytest.raises(ValueError, match="chosen_lengths .* > 0"):
        PairedLogps(one, one, chosen_lengths=torch.tensor([0]), rejected_lengths=torch.tensor([1]))
    with pytest.raises(ValueError, match="empty"):
        PairedLogps(_tensor([]), _tensor([]))


def test_missing_inputs_are_named():
    no_reference = PairedLogps(_tensor([-1.0]), _tensor([-2.0]))
    with pytest.raises(ValueError, match="sigmoid needs reference log-probs"):
        dpo_sigmoid(no_reference)
    with pytest.raises(ValueError, match="simpo normalises by completion length"):
        simpo(no_reference)
    no_lengths = PairedLogps(_tensor([-1.0]), _tensor([-2.0]), _tensor([-1.0]), _tensor([-1.0]))
    with pytest.raises(ValueError, match="ipo with length_normalized=True"):
        ipo(no_lengths, IPOConfig(length_normalized=True))
    with pytest.raises(ValueError, match="reward_shift must be a 0-dim tensor"):
        bco_pair(_pair(), torch.zeros(1))


def test_unpaired_and_listwise_validation():
    with pytest.raises(TypeError, match="is_desirable must be a bool"):
        UnpairedLogps(_tensor([-1.0]), _tensor([-1.0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="same shape"):
        ListwiseLogps(
            torch.zeros(1, 3, dtype=DTYPE),
            torch.zeros(1, 2, dtype=DTYPE),
            torch.zeros(1, 3, dtype=DTYPE),
            torch.ones(1, 3, dtype=torch.bool),
        )


# ---------------------------------------------------------------------------
# invariance: a batch mean equals the mean of examples computed one by one


def _split(logps: PairedLogps) -> list[PairedLogps]:
    return [
        PairedLogps(
            logps.policy_chosen_logps[i : i + 1],
            logps.policy_rejected_logps[i : i + 1],
            logps.ref_chosen_logps[i : i + 1],
            logps.ref_rejected_logps[i : i + 1],
            logps.chosen_lengths[i : i + 1],
            logps.rejected_lengths[i : i + 1],
        )
        for i in range(logps.num_pairs)
    ]


BATCH_INDEPENDENT = sorted(set(PAIRED_CASES) - {"aot", "aot_unpaired"})


@pytest.mark.parametrize("name", BATCH_INDEPENDENT)
def test_batch_of_8_equals_examples_one_by_one(name):
    function, config = PAIRED_CASES[name]
    batch = _random_pairs(8, seed=11)
    together = function(batch, config)
    one_by_one = [function(part, config) for part in _split(batch)]
    losses = torch.cat([out.losses for out in one_by_one])
    torch.testing.assert_close(together.losses, losses, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together.losses.mean(), losses.mean(), rtol=1e-12, atol=1e-12)
    rewards = torch.cat([out.chosen_rewards for out in one_by_one])
    torch.testing.assert_close(together.chosen_rewards, rewards)


def test_unpaired_and_listwise_batches_equal_examples_one_by_one():
    generator = torch.Generator().manual_seed(5)
    policy, ref = -torch.rand(2, 8, generator=generator, dtype=DTYPE) * 10
    desirable = torch.rand(8, generator=generator) > 0.5
    thumbs = UnpairedLogps(policy, ref, desirable)
    for run in (
        lambda logps: kto(logps, torch.tensor(0.4), KTOConfig(desirable_weight=1.3)),
        lambda logps: bco(logps, torch.tensor(-0.2)),
    ):
        together = run(thumbs).losses
        parts = [
            run(UnpairedLogps(policy[i : i + 1], ref[i : i + 1], desirable[i : i + 1])).losses
            for i in range(8)
        ]
        torch.testing.assert_close(together, torch.cat(parts), rtol=1e-12, atol=1e-12)

    lists = ListwiseLogps(
        -torch.rand(8, 5, generator=generator, dtype=DTYPE) * 10,
        -torch.rand(8, 5, generator=generator, dtype=DTYPE) * 10,
        torch.randint(0, 4, (8, 5), generator=generator).to(DTYPE) / 3,
        torch.rand(8, 5, generator=generator) > 0.3,
    )
    together = lipo_lambda(lists).losses
    parts = [
        lipo_lambda(
            ListwiseLogps(
                lists.policy_logps[i : i + 1],
                lists.ref_logps[i : i + 1],
                lists.labels[i : i + 1],
                lists.mask[i : i + 1],
            )
        ).losses
        for i in range(8)
    ]
    torch.testing.assert_close(together, torch.cat(parts), rtol=1e-12, atol=1e-12)


def test_aot_depends_on_the_batch_as_documented():
    """Sorting couples examples: the batch losses differ from the one-by-one losses."""
    batch = _random_pairs(8, seed=11)
    together = aot(batch).losses
    one_by_one = torch.cat([aot(part).losses for part in _split(batch)])
    assert not torch.allclose(together, one_by_one)


# ---------------------------------------------------------------------------
# running mean (BCO's delta)


def test_running_mean_is_exact_and_resumes():
    """Values 1, 2, 3 then 10: mean 2 after the first update, (6 + 10) / 4 = 4 after the second."""
    running = RunningMean()
    assert running.mean == 0.0 and running.count == 0
    running.update(torch.tensor([1.0, 2.0, 3.0]))
    assert running.mean == pytest.approx(2.0)
    saved = running.state_dict()
    running.update(torch.tensor([10.0]))
    assert running.mean == pytest.approx(4.0) and running.count == 4

    resumed = RunningMean()
    resumed.load_state_dict(saved)
    resumed.update(torch.tensor([10.0]))
    assert resumed.state_dict() == running.state_dict()


def test_running_mean_takes_sums_and_counts():
    """Sums 3 over 2 values, then 10 over 2: mean 1.5, then 13 / 4 = 3.25, as update() gives."""
    running = RunningMean()
    running.add_sum(3.0, 2)
    assert running.mean == 1.5
    running.add_sum(0.0, 0)  # a rank or step without values changes nothing
    running.add_sum(10.0, 2)
    assert (running.mean, running.count) == (3.25, 4)
    by_values = RunningMean()
    by_values.update(torch.tensor([1.0, 2.0]))
    by_values.update(torch.tensor([4.0, 6.0]))
    assert by_values.state_dict() == running.state_dict()
    with pytest.raises(ValueError, match="count must be an integer"):
        running.add_sum(1.0, -1)
    with pytest.raises(ValueError, match="non-finite"):
        running.add_sum(float("inf"), 1)


def test_running_mean_rejects_bad_state_and_values():
    running = RunningMean()
    with pytest.raises(ValueError, match="keys"):
        running.load_state_dict({"mean": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        running.update(torch.tensor([float("nan")]))


# ---------------------------------------------------------------------------
# registry and module hygiene


def test_registry_covers_every_loss_with_a_uniform_signature():
    expected = {
        "sigmoid", "cdpo", "robust", "ipo", "hinge", "exo_pair", "nca_pair", "bco_pair",
        "sppo_hard", "apo_zero", "apo_down", "aot", "aot_unpaired", "discopop", "sigmoid_norm",
        "sft", "simpo", "cpo", "orpo", "kto", "bco", "lipo_lambda",
    }  # fmt: skip
    assert set(LOSSES) == expected
    for spec in LOSSES.values():
        parameters = list(inspect.signature(spec.function).parameters)
        assert parameters == ["logps", *spec.extra_inputs, "config"], spec.name
        spec.config_type()  # every config has valid defaults


def test_make_loss_binds_the_config():
    """make_loss("sigmoid", beta=0.5) on h_c=1, h_r=-1: -logsigmoid(1) = 0.313262."""
    loss = make_loss("sigmoid", beta=0.5)
    assert _value(loss(_pair())) == pytest.approx(0.31326168751822286, abs=1e-12)
    assert _value(make_loss("bco_pair")(_pair(), torch.tensor(0.0))) == pytest.approx(
        1.2887933201471418
    )


def test_module_imports_only_torch_and_the_standard_library():
    imported = top_level_imports(Path(preference.__file__))
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == {"torch"}
