"""One whole ``align`` step equals one whole TRL ``DPOTrainer`` step.

Not the losses alone (``tests/test_losses_trl_parity.py`` feeds prefkit's losses with
log-probs computed by the test): here each tool tokenizes the same raw pairs, scores
policy and reference its own way, reduces, back-propagates and updates the weights.
The model is a tiny random Llama (hidden 32, 2 layers), the reference a second one
with other weights, so the step-1 loss is not log 2. The batch is all 8 pairs, so the
order either tool samples them in does not matter. The optimizer is plain SGD
(no momentum, no weight decay, no clipping, constant rate), so the update is
``-lr * gradient`` and equal updates mean equal gradients.

Tolerances: both tools compute in float32 but with other paddings, row orders and
summation orders (TRL pads chosen and rejected to one width in one batch; prefkit pads
each layout its own way), which moves a log-prob by ~1e-6 relative. The loss is
compared to 1e-5 absolute (seen: 3e-8), and each tensor's update to 1e-4 relative to
its largest entry (seen: 2e-5), plus the float32 rounding of the weight it is added
to: a wrong sign, beta, reduction or scale of the gradient misses these by orders
of magnitude (a 1.5x gradient is 0.5 relative), float rounding does not reach them.

TRL is in the test extra and imported plainly: without it this test errors, never skips.
"""

from __future__ import annotations

import copy
import random
import warnings

import datasets
import pytest
import torch
import trl

from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
from prefkit.align.trainer import AlignConfig, align
from prefkit.data.records import PairwiseRecord
from prefkit.train.loop import TrainConfig

LR = 2.0  # large, so the update is far above float rounding of the weights
BETA = 0.1
NUM_PAIRS = 8


def _raw_pairs() -> list[dict[str, str]]:
    rng = random.Random(3)
    return [
        {
            "prompt": random_prompt(rng, num_words=1 + index % 4),
            "chosen": random_completion(rng, 1 + index % 3),
            "rejected": random_completion(rng, 2 + index % 2),
        }
        for index in range(NUM_PAIRS)
    ]


def _prefkit_step(policy, reference, tokenizer, out_dir) -> float:
    records = [
        PairwiseRecord(
            id=str(index),
            prompt=pair["prompt"],
            response_a=pair["chosen"],
            response_b=pair["rejected"],
            outcome="a",
        )
        for index, pair in enumerate(_raw_pairs())
    ]
    result = align(
        records,
        policy,
        tokenizer,
        out_dir,
        AlignConfig(loss_args={"beta": BETA}, cache_ref=False, save_model=False),
        TrainConfig(
            batch_size=NUM_PAIRS,
            lr=LR,
            schedule="constant",
            max_grad_norm=None,
            progress=False,
            device="cpu",
        ),
        ref_model=reference,
        optimizer_factory=lambda model, config: torch.optim.SGD(model.parameters(), lr=config.lr),
    )
    assert result.train.global_step == 1
    return result.train.last_train_loss


def _trl_step(policy, reference, tokenizer, out_dir) -> float:
    args = trl.DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=NUM_PAIRS,
        max_steps=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,  # 0 turns clipping off in transformers' Trainer
        beta=BETA,
        loss_type=["sigmoid"],
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=datasets.Dataset.from_list(_raw_pairs()),
            processing_class=tokenizer,
        )
        trainer.train()
    assert isinstance(trainer.optimizer.optimizer, torch.optim.SGD)
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logged["loss"]


def test_one_align_step_equals_one_trl_dpo_step(tmp_path):
    tokenizer = build_tokenizer(adds_bos=True)
    initial = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    reference = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    ours, theirs = copy.deepcopy(initial), copy.deepcopy(initial)

    our_loss = _prefkit_step(ours, copy.deepcopy(reference), tokenizer, tmp_path / "prefkit")
    their_loss = _trl_step(theirs, copy.deepcopy(reference), tokenizer, tmp_path / "trl")

    assert abs(our_loss - 0.693147) > 1e-3  # the reference differs from the policy
    assert our_loss == pytest.approx(their_loss, abs=1e-5)
    start = initial.state_dict()
    their_weights = theirs.state_dict()
    moved = 0
    for name, our_weight in ours.state_dict().items():
        our_update = our_weight - start[name]
        their_update = their_weights[name] - start[name]
        scale = float(their_update.abs().max())
        moved += scale > 0
        # Plus the rounding of the weights themselves (a norm weight of 1.0 keeps 1.2e-7 steps).
        rounding = 2 * torch.finfo(torch.float32).eps * float(start[name].abs().max())
        torch.testing.assert_close(
            our_update, their_update, rtol=0, atol=1e-4 * scale + rounding, msg=name
        )
    assert moved == len(start)  # every tensor took part in the step
