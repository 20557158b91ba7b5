"""prefkit's preference losses agree with TRL's on the same model, batch and settings.

The model is a tiny Llama (hidden 32, 2 layers) with random weights and a word-level
tokenizer built here; the reference model is the same architecture with other weights.
Log-probs are computed here in plain PyTorch (log_softmax of the logits), not with
TRL's fused head, so the checks cover the log-prob convention as well as the loss.

- DPO ``sigmoid``: TRL's DPOTrainer trains one step; its logged first-step loss and
  reward metrics are compared with prefkit's on the same batch and initial weights.
- Every other DPO ``loss_type`` TRL 1.16 shares with prefkit, and KTO: TRL's own
  ``_compute_loss`` runs on a batch from its data loader (no optimiser step).
- CPO, SimPO and ORPO (``trl.experimental``): ``get_batch_loss_metrics`` on a batch.
- BCO: ``trl.experimental.bco`` of TRL 1.0 (TRL 1.16 no longer has it),
  ``get_batch_loss_metrics`` on a batch, against prefkit's trainer task. Under TRL
  1.16 the test runs in a subprocess with TRL 1.0 first on the path; ``make test``
  installs TRL 1.0's files in ``.venv/trl-1.0`` for it.

Where TRL averages an NLL over all chosen tokens of the batch (``sft``, CPO's and
ORPO's NLL terms), prefkit averages per example; TRL's value is then the
length-weighted mean of prefkit's per-example values, and that is what is checked.
TRL batches are sampled in random order, so only batch means (which do not depend on
the order) are compared.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import import_or_skip_outside_ci, skip_or_fail_in_ci

# TRL is the reference these tests exist for: without it they skip, and under CI fail.
trl = import_or_skip_outside_ci("trl", allow_module_level=True)

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, pre_tokenizers  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from prefkit.losses.preference import (  # noqa: E402
    BetaConfig,
    CPOConfig,
    DiscoPOPConfig,
    ExoPairConfig,
    IPOConfig,
    KTOConfig,
    LossTerm,
    ORPOConfig,
    PairedLogps,
    RobustConfig,
    SimPOConfig,
    SmoothedConfig,
    UnpairedLogps,
    aot,
    aot_unpaired,
    apo_down,
    apo_zero,
    bco,
    bco_pair,
    cpo,
    discopop,
    dpo_sigmoid,
    exo_pair,
    hinge,
    ipo,
    kto,
    nca_pair,
    orpo,
    robust,
    sft,
    sigmoid_norm,
    simpo,
    sppo_hard,
    weighted_sum,
)

TOLERANCE = 1e-5
BETA = 0.5  # beta of the DPO loss-type comparisons

WORDS = (
    "the a cat dog bird sat ran flew on over mat rug tree quickly slowly home away and then".split()
)
PROMPTS = ["the cat", "a dog", "the bird", "a cat"]
CHOSEN = [" sat on the mat", " ran home", " flew over the tree and then home", " sat"]
REJECTED = [" ran away", " sat on a rug slowly", " sat", " ran quickly over the rug"]


def _word_level_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "[EOS]": 1, "[UNK]": 2}
    vocab.update({word: index + 3 for index, word in enumerate(WORDS)})
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )


def _tiny_llama(seed: int, vocab_size: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class Tiny:
    """The tokenizer, the initial policy and reference weights, and a folder for trainers."""

    tokenizer: PreTrainedTokenizerFast
    policy: LlamaForCausalLM
    reference: LlamaForCausalLM
    output_dir: str

    def fresh_models(self) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
        """Copies of (policy, reference), so no test sees another's training or patching."""
        return copy.deepcopy(self.policy), copy.deepcopy(self.reference)

    def trainer_args(self, **overrides) -> dict:
        """Arguments shared by every TRL config: one CPU step over the whole data set."""
        return {
            "output_dir": self.output_dir,  # trainers create it even when they save nothing
            "per_device_train_batch_size": len(PROMPTS),
            "max_steps": 1,
            "report_to": [],
            "save_strategy": "no",
            "use_cpu": True,
            "dataloader_num_workers": 0,
            "seed": 0,
            "logging_steps": 1,
            "bf16": False,  # TRL defaults to bf16 autocast, also on CPU
            **overrides,
        }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Tiny:
    tokenizer = _word_level_tokenizer()
    return Tiny(
        tokenizer=tokenizer,
        policy=_tiny_llama(0, len(tokenizer)),
        reference=_tiny_llama(1, len(tokenizer)),  # same architecture, other weights
        output_dir=str(tmp_path_factory.mktemp("trl")),
    )


@torch.no_grad()
def _completion_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) summed log-probs of the completion tokens and (N,) completion lengths.

    Plain PyTorch: token t is scored by the logits at position t - 1. Sequences are
    right-padded, so position ids need no adjustment.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    token_logps = torch.log_softmax(logits.float(), dim=-1)
    token_logps = token_logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (N, T-1)
    scored = completion_mask[:, 1:].bool()
    return (token_logps * scored).sum(dim=-1), scored.sum(dim=-1)


def _paired_from_concatenated(
    policy: torch.nn.Module, reference: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> PairedLogps:
    """PairedLogps of a (2B, T) batch whose first half is chosen and second half rejected."""
    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    policy_logps, lengths = _completion_logps(policy, *inputs)
    chosen_logps, rejected_logps = policy_logps.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    ref_chosen, ref_rejected = _completion_logps(reference, *inputs)[0].chunk(2)
    return PairedLogps(
        chosen_logps, rejected_logps, ref_chosen, ref_rejected, chosen_lengths, rejected_lengths
    )


def _encode_pairs(tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    """This test's own encoding of the pairs: prompt + completion + EOS, right-padded, chosen first."""
    sequences, masks = [], []
    for completions in (CHOSEN, REJECTED):
        for prompt, completion in zip(PROMPTS, completions, strict=True):
            prompt_ids = tokenizer(prompt)["input_ids"]
            completion_ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
            sequences.append(prompt_ids + completion_ids)
            masks.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    width = max(len(ids) for ids in sequences)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids in sequences]),
        "attention_mask": torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences]
        ),
        "completion_mask": torch.tensor([mask + [0] * (width - len(mask)) for mask in masks]),
    }


def _close(actual: float | torch.Tensor, expected: float | torch.Tensor, what: str) -> None:
    actual, expected = float(actual), float(expected)
    assert abs(actual - expected) <= TOLERANCE * max(1.0, abs(expected)), (what, actual, expected)


def _pairs_dataset() -> Dataset:
    return Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})


def _quiet(build):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


# ---------------------------------------------------------------------------
# DPO: one full training step


def _dpo_trainer(tiny: Tiny, policy, reference, **config) -> trl.DPOTrainer:
    args = trl.DPOConfig(**tiny.trainer_args(**config))
    return _quiet(
        lambda: trl.DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=_pairs_dataset(),
            processing_class=tiny.tokenizer,
        )
    )


def test_dpo_sigmoid_first_training_step_matches_trl(tiny):
    """TRL's DPOTrainer trains one step; its logged loss and rewards match prefkit's dpo_sigmoid."""
    policy, reference = tiny.fresh_models()
    logps = _paired_from_concatenated(policy, reference, _encode_pairs(tiny.tokenizer))
    ours = dpo_sigmoid(logps, BetaConfig(beta=0.5))

    trainer = _dpo_trainer(
        tiny, policy, reference, beta=0.5, loss_type=["sigmoid"], learning_rate=1e-3
    )
    before = [parameter.detach().clone() for parameter in policy.parameters()]
    _quiet(trainer.train)
    logged = trainer.state.log_history[0]

    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # it trained
    _close(logged["loss"], ours.losses.mean(), "loss")
    _close(logged["rewards/chosen"], ours.chosen_rewards.mean(), "rewards/chosen")
    _close(logged["rewards/rejected"], ours.rejected_rewards.mean(), "rewards/rejected")
    margins = ours.chosen_rewards - ours.rejected_rewards
    _close(logged["rewards/margins"], margins.mean(), "rewards/margins")
    accuracy = (ours.chosen_rewards > ours.rejected_rewards).double().mean()
    _close(logged["rewards/accuracies"], accuracy, "rewards/accuracies")
    _close(logged["logps/chosen"], logps.policy_chosen_logps.mean(), "logps/chosen")
    assert abs(ours.losses.mean().item() - 0.6931) > 1e-3  # the log-ratios are not all zero


# ---------------------------------------------------------------------------
# DPO loss types: TRL's _compute_loss on one batch


@pytest.fixture(scope="module")
def dpo_setup(tiny):
    """A DPOTrainer on the pairs, one batch from its data loader, and prefkit's PairedLogps of it."""
    trainer = _dpo_trainer(tiny, *tiny.fresh_models(), beta=BETA)
    batch = next(iter(trainer.get_train_dataloader()))
    logps = _paired_from_concatenated(trainer.model, trainer.ref_model, batch)
    return trainer, batch, logps


def _trl_dpo_loss(
    dpo_setup,
    loss_types: list[str],
    weights: list[float],
    beta: float,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> tuple[float, dict[str, float]]:
    """TRL's loss and metrics on the fixture's batch, with the trainer's loss settings replaced."""
    trainer, batch, _ = dpo_setup
    trainer.loss_types, trainer.loss_weights = loss_types, weights
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    trainer.args.discopop_tau = discopop_tau
    trainer._metrics["train"].clear()
    with torch.no_grad():
        loss = trainer._compute_loss(trainer.model, batch, return_outputs=False)
    return loss.item(), {key: values[-1] for key, values in trainer._metrics["train"].items()}


# (TRL loss_type, TRL label_smoothing, prefkit function, config, extra inputs)
DPO_CASES = [
    ("sigmoid", 0.0, dpo_sigmoid, BetaConfig(beta=BETA), ()),
    ("hinge", 0.0, hinge, BetaConfig(beta=BETA), ()),
    ("ipo", 0.0, ipo, IPOConfig(beta=BETA, length_normalized=True), ()),
    ("exo_pair", 1e-3, exo_pair, ExoPairConfig(beta=BETA, label_smoothing=1e-3), ()),
    ("nca_pair", 0.0, nca_pair, BetaConfig(beta=BETA), ()),
    ("robust", 0.2, robust, RobustConfig(beta=BETA, label_smoothing=0.2), ()),
    ("bco_pair", 0.0, bco_pair, BetaConfig(beta=BETA), (torch.tensor(0.0),)),
    ("sppo_hard", 0.0, sppo_hard, BetaConfig(beta=BETA), ()),
    ("aot", 0.0, aot, SmoothedConfig(beta=BETA), ()),
    ("aot", 0.1, aot, SmoothedConfig(beta=BETA, label_smoothing=0.1), ()),
    ("aot_unpaired", 0.0, aot_unpaired, SmoothedConfig(beta=BETA), ()),
    ("aot_unpaired", 0.1, aot_unpaired, SmoothedConfig(beta=BETA, label_smoothing=0.1), ()),
    ("apo_zero", 0.0, apo_zero, BetaConfig(beta=BETA), ()),
    ("apo_down", 0.0, apo_down, BetaConfig(beta=BETA), ()),
    ("discopop", 0.0, discopop, DiscoPOPConfig(beta=BETA, tau=0.3), ()),
    ("sigmoid_norm", 0.0, sigmoid_norm, BetaConfig(beta=BETA), ()),
]


@pytest.mark.parametrize(
    "loss_type, label_smoothing, function, config, extra",
    DPO_CASES,
    ids=[f"{case[0]}-eps{case[1]}" for case in DPO_CASES],
)
def test_dpo_loss_types_match_trl(dpo_setup, loss_type, label_smoothing, function, config, extra):
    """Mean loss and mean rewards of one batch agree with TRL's DPOTrainer to 1e-5."""
    tau = config.tau if isinstance(config, DiscoPOPConfig) else 0.05
    trl_loss, trl_metrics = _trl_dpo_loss(
        dpo_setup, [loss_type], [1.0], BETA, label_smoothing, discopop_tau=tau
    )
    ours = function(dpo_setup[2], *extra, config=config)
    _close(trl_loss, ours.losses.mean(), f"{loss_type} loss")
    _close(trl_metrics["rewards/chosen"], ours.chosen_rewards.mean(), "rewards/chosen")
    _close(trl_metrics["rewards/rejected"], ours.rejected_rewards.mean(), "rewards/rejected")


def test_ipo_default_follows_the_paper_not_trl(dpo_setup):
    """Without length normalisation the log-ratio gaps are sums, so the value differs from TRL's."""
    trl_loss, _ = _trl_dpo_loss(dpo_setup, ["ipo"], [1.0], BETA)
    paper = ipo(dpo_setup[2], IPOConfig(beta=BETA)).losses.mean().item()
    assert abs(paper - trl_loss) > 1e-3


def _length_weighted_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """What a mean over all tokens of the batch gives, from per-example token means."""
    lengths = lengths.to(values.dtype)
    return (values * lengths).sum() / lengths.sum()


def test_sft_is_trl_sft_up_to_token_weighting(dpo_setup):
    """TRL's 'sft' averages the NLL over all chosen tokens of the batch; prefkit per example."""
    trl_loss, _ = _trl_dpo_loss(dpo_setup, ["sft"], [1.0], BETA)
    logps = dpo_setup[2]
    ours = sft(logps).losses
    _close(trl_loss, _length_weighted_mean(ours, logps.chosen_lengths), "sft token mean")
    assert len(set(logps.chosen_lengths.tolist())) > 1  # lengths differ, so the weighting matters


def test_rpo_weighted_sum_matches_trl_multi_loss(dpo_setup):
    """loss_type=['sigmoid', 'sft'], loss_weights=[1, 0.7] in TRL is weighted_sum in prefkit."""
    trl_loss, trl_metrics = _trl_dpo_loss(dpo_setup, ["sigmoid", "sft"], [1.0, 0.7], BETA)
    logps = dpo_setup[2]
    ours = weighted_sum(
        logps, [LossTerm("sigmoid", 1.0, BetaConfig(beta=BETA)), LossTerm("sft", 0.7)]
    )
    sft_token_mean = _length_weighted_mean(ours.metrics["sft/loss"], logps.chosen_lengths)
    _close(trl_loss, ours.metrics["sigmoid/loss"].mean() + 0.7 * sft_token_mean, "rpo loss")
    _close(trl_metrics["rewards/chosen"], ours.chosen_rewards.mean(), "rewards/chosen")


# ---------------------------------------------------------------------------
# KTO


@pytest.fixture(scope="module")
def kto_setup(tiny):
    """A KTOTrainer on the pairs split into thumbs up and down, and one batch of it."""
    policy, reference = tiny.fresh_models()
    dataset = Dataset.from_dict(
        {
            "prompt": PROMPTS + PROMPTS,
            "completion": CHOSEN + REJECTED,
            "label": [True] * len(PROMPTS) + [False] * len(PROMPTS),
        }
    )
    args = trl.KTOConfig(
        **tiny.trainer_args(
            per_device_train_batch_size=2 * len(PROMPTS),
            beta=0.5,
            desirable_weight=1.3,
            undesirable_weight=0.8,
        )
    )
    trainer = _quiet(
        lambda: trl.KTOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=dataset,
            processing_class=tiny.tokenizer,
        )
    )
    return trainer, next(iter(trainer.get_train_dataloader()))


def test_kto_matches_trl(kto_setup):
    """The KL estimate is computed here from TRL's mismatched (prompt, completion) pairs."""
    trainer, batch = kto_setup
    trainer._metrics["train"].clear()
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, batch, return_outputs=False).item()
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}

    inputs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mismatched = (batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    policy_logps, _ = _completion_logps(trainer.model, *inputs)
    ref_logps, _ = _completion_logps(trainer.ref_model, *inputs)
    kl_policy, _ = _completion_logps(trainer.model, *mismatched)
    kl_ref, _ = _completion_logps(trainer.ref_model, *mismatched)
    kl_estimate = (kl_policy - kl_ref).mean()
    is_desirable = torch.as_tensor(batch["label"], dtype=torch.bool)
    config = KTOConfig(beta=0.5, desirable_weight=1.3, undesirable_weight=0.8)
    ours = kto(UnpairedLogps(policy_logps, ref_logps, is_desirable), kl_estimate, config)

    assert kl_estimate > 0, "pick models whose KL estimate is positive, or the clamp hides it"
    _close(trl_metrics["kl"], kl_estimate, "kl")
    _close(trl_loss, ours.losses.mean(), "kto loss")
    _close(trl_metrics["rewards/chosen"], ours.rewards[is_desirable].mean(), "rewards/chosen")
    _close(trl_metrics["rewards/rejected"], ours.rewards[~is_desirable].mean(), "rewards/rejected")


# ---------------------------------------------------------------------------
# CPO, SimPO, ORPO (trl.experimental)


def _paired_from_labels(model: torch.nn.Module, batch: dict) -> PairedLogps:
    """PairedLogps from a CPO/ORPO batch, whose labels are -100 outside the completion."""
    chosen, rejected = (
        _completion_logps(
            model,
            batch[f"{side}_input_ids"],
            batch[f"{side}_attention_mask"],
            (batch[f"{side}_labels"] != -100).long(),
        )
        for side in ("chosen", "rejected")
    )
    return PairedLogps(chosen[0], rejected[0], None, None, chosen[1], rejected[1])


def _experimental_setup(tiny: Tiny, trainer_name: str, **config):
    """TRL's loss and metrics on one batch, with the policy and the batch they came from."""
    if trainer_name == "cpo":
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer
    else:
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer
    args = Config(**tiny.trainer_args(**config))
    trainer = _quiet(
        lambda: Trainer(
            model=tiny.fresh_models()[0],
            args=args,
            train_dataset=_pairs_dataset(),
            processing_class=tiny.tokenizer,
        )
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        loss, metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    return loss.item(), {k: float(v) for k, v in metrics.items()}, trainer.model, batch


def test_cpo_matches_trl(tiny):
    """TRL: mean preference loss + alpha * NLL over all chosen tokens of the batch."""
    trl_loss, trl_metrics, model, batch = _experimental_setup(
        tiny, "cpo", loss_type="sigmoid", beta=0.5, cpo_alpha=0.7
    )
    logps = _paired_from_labels(model, batch)
    ours = cpo(logps, CPOConfig(beta=0.5, nll_weight=0.7))
    token_mean_nll = _length_weighted_mean(ours.metrics["nll"], logps.chosen_lengths)
    _close(trl_metrics["nll_loss"], token_mean_nll, "nll")
    _close(trl_loss, ours.metrics["preference"].mean() + 0.7 * token_mean_nll, "cpo loss")
    _close(trl_metrics["rewards/chosen"], ours.chosen_rewards.mean(), "rewards/chosen")
    _close(trl_metrics["rewards/rejected"], ours.rejected_rewards.mean(), "rewards/rejected")


def test_cpo_without_nll_matches_trl_exactly(tiny):
    trl_loss, _, model, batch = _experimental_setup(
        tiny, "cpo", loss_type="sigmoid", beta=0.5, cpo_alpha=0.0
    )
    logps = _paired_from_labels(model, batch)
    _close(trl_loss, cpo(logps, CPOConfig(beta=0.5, nll_weight=0.0)).losses.mean(), "cpo loss")


def test_simpo_matches_trl(tiny):
    """TRL's CPOTrainer with loss_type='simpo' and cpo_alpha=0 is SimPO (eq. 6)."""
    trl_loss, trl_metrics, model, batch = _experimental_setup(
        tiny, "cpo", loss_type="simpo", beta=2.0, simpo_gamma=0.6, cpo_alpha=0.0
    )
    ours = simpo(_paired_from_labels(model, batch), SimPOConfig(beta=2.0, gamma=0.6))
    _close(trl_loss, ours.losses.mean(), "simpo loss")
    _close(trl_metrics["rewards/chosen"], ours.chosen_rewards.mean(), "rewards/chosen")
    _close(trl_metrics["rewards/rejected"], ours.rejected_rewards.mean(), "rewards/rejected")


def test_orpo_matches_trl(tiny):
    """TRL: NLL over all chosen tokens of the batch - mean(lambda * logsigmoid(log odds ratio)).

    TRL's NLL also scores the prompt tokens (prefkit's covers the completion, as the paper's
    L_SFT), so it is recomputed here from the whole chosen sequences; the odds-ratio term,
    the log odds ratios and the rewards are prefkit's.
    """
    trl_loss, trl_metrics, model, batch = _experimental_setup(tiny, "orpo", beta=0.3)
    logps = _paired_from_labels(model, batch)
    ours = orpo(logps, ORPOConfig(odds_ratio_weight=0.3))

    whole_sequence = batch["chosen_attention_mask"]
    sequence_logps, sequence_lengths = _completion_logps(
        model, batch["chosen_input_ids"], whole_sequence, whole_sequence
    )
    trl_style_nll = -sequence_logps.sum() / sequence_lengths.sum()
    odds_ratio_part = (ours.losses - ours.metrics["nll"]).mean()
    _close(trl_metrics["nll_loss"], trl_style_nll, "nll over prompt and completion")
    _close(trl_loss, trl_style_nll + odds_ratio_part, "orpo loss")
    _close(trl_metrics["log_odds_chosen"], ours.metrics["log_odds_ratio"].mean(), "log odds ratio")
    _close(trl_metrics["rewards/chosen"], ours.chosen_rewards.mean(), "rewards/chosen")
    _close(trl_metrics["rewards/rejected"], ours.rejected_rewards.mean(), "rewards/rejected")


# ---------------------------------------------------------------------------
# BCO (trl.experimental.bco: in TRL 1.0, gone from 1.16)


def test_bco_trainer_loss_matches_trl_at_trls_reward_shift(tiny):
    """TRL's BCOTrainer on one batch of the pairs split into thumbs, beta 0.5, no UDM.

    TRL folds the batch's rewards into its running mean *before* the loss, so its
    delta is this batch's mean reward; prefkit's first step uses delta 0 (the mean of
    no earlier step). Given TRL's delta, prefkit's trainer task and its ``bco`` give
    TRL's loss. Skipped where the installed TRL has no BCOTrainer (1.16 has none).
    """
    bco_module = pytest.importorskip("trl.experimental.bco")
    from prefkit.align.trainer import AlignConfig, AlignTask, build_examples
    from prefkit.data.records import BinaryRecord

    policy, reference = tiny.fresh_models()
    labels = [True] * len(PROMPTS) + [False] * len(PROMPTS)
    dataset = Dataset.from_dict(
        {"prompt": PROMPTS + PROMPTS, "completion": CHOSEN + REJECTED, "label": labels}
    )
    args = bco_module.BCOConfig(**tiny.trainer_args(per_device_train_batch_size=8, beta=0.5))
    trainer = _quiet(
        lambda: bco_module.BCOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=dataset,
            processing_class=tiny.tokenizer,
        )
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, batch)
    trl_delta = float(trl_metrics["delta"])

    scored = (batch["completion_labels"] != -100).long()
    inputs = (batch["completion_input_ids"], batch["completion_attention_mask"], scored)
    policy_logps, _ = _completion_logps(trainer.model, *inputs)
    ref_logps, _ = _completion_logps(trainer.ref_model, *inputs)
    is_desirable = torch.as_tensor(batch["label"], dtype=torch.bool)
    logps = UnpairedLogps(policy_logps, ref_logps, is_desirable)
    ours = bco(logps, torch.tensor(trl_delta), BetaConfig(beta=0.5))
    _close(trl_delta, ours.rewards.mean(), "delta = this batch's mean reward")
    _close(trl_loss, ours.losses.mean(), "bco loss")

    records = [
        BinaryRecord(id=str(index), prompt=prompt, response=completion, label=label)
        for index, (prompt, completion, label) in enumerate(
            zip(PROMPTS + PROMPTS, CHOSEN + REJECTED, labels, strict=True)
        )
    ]
    config = AlignConfig(loss="bco", loss_args={"beta": 0.5}, precompute_ref=False)
    examples, _ = build_examples(records, tiny.tokenizer, "unpaired", config.tokenize_config())
    task = AlignTask(
        examples, config, pad_id=tiny.tokenizer.pad_token_id, reference_model=reference
    )
    task.reward_shift.load_state_dict({"count": 1, "mean": trl_delta})
    with torch.no_grad():
        task_losses, _ = task.loss(policy, task.collate(list(range(len(examples)))))
    _close(trl_loss, task_losses.mean(), "AlignTask bco loss")


TRL_1_0 = Path(__file__).resolve().parents[1] / ".venv" / "trl-1.0"


def test_bco_parity_runs_under_trl_1_0():
    """Runs the BCO parity test above with TRL 1.0, where the installed TRL has no BCO."""
    if importlib.util.find_spec("trl.experimental.bco") is not None:
        pytest.skip("the installed TRL has BCOTrainer: the test above runs directly")
    if not (TRL_1_0 / "trl").is_dir():
        skip_or_fail_in_ci(f"TRL 1.0 is not installed in {TRL_1_0} (make test installs it)")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TRL_1_0), os.environ.get("PYTHONPATH")])),
    }
    test_id = f"{__file__}::test_bco_trainer_loss_matches_trl_at_trls_reward_shift"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "1 passed" in result.stdout, (
        result.stdout[-3000:] + result.stderr[-2000:]
    )
