"""One GRPO step of ``prefkit rl`` equals one step of TRL 1.16's ``GRPOTrainer``.

Both get the same injected completions (TRL through its ``rollout_func``, prefkit
by replacing the task's generation) and the same rewards (a function of the
completion text), for 2 prompts x 4 samples, with a reference that differs from
the policy (a second random model), so the KL term and its gradient are not 0.
Settings that match: loss_type ``dapo`` = ``token-mean`` over the step's
completion tokens, scale_rewards ``group`` (std with Bessel's correction + 1e-4),
beta 0.1 with the k3 estimator in the loss, with and without the KL's importance-ratio
correction (TRL's ``use_bias_correction_kl``, on by default in both), clip 0.2,
temperature 1, one iteration. The optimizer is plain SGD (no momentum, decay or clipping, constant
rate), so equal updates mean equal gradients. At step 1 the importance ratio is 1,
so the loss is mostly the KL; the update is compared, not only the loss.

Both prompts have the same token length: TRL left-pads prompts and the tiny Llama
takes positions from the sequence index, not the attention mask, so a shorter
prompt would get other positions in TRL than when scored alone (prefkit right-pads).

Tolerances as ``tests/test_align_trl_step.py``: the loss to 1e-5 absolute, each
tensor's update to 1e-4 of its largest entry plus the float32 rounding of the
weight (a wrong sign, beta, advantage scale or normaliser misses by far more).
"""

from __future__ import annotations

import copy
import os
import warnings

import datasets
import pytest
import torch
import trl

from prefkit.align.synthetic import build_model, build_tokenizer
from prefkit.generate.engines import Completion
from prefkit.rl.config import RLConfig
from prefkit.rl.trainer import RLTask, rl
from prefkit.train.loop import TrainConfig

LR = 2.0
BETA = 0.1
PROMPTS = ["a b :", "c h :"]
COMPLETIONS = {  # per prompt, 4 completions as words; "</s>" ends one with EOS
    "a b :": ["a a </s>", "e f g", "b </s>", "h c d e"],
    "c h :": ["d </s>", "g g h </s>", "a b c", "f </s>"],
}
REWARDS = {"a a": 1.0, "e f g": 0.0, "b": 0.5, "h c d e": 0.25, "d": 0.75}
REWARDS |= {"g g h": -1.0, "a b c": 2.0, "f": 0.0}


def _ids(tokenizer, words: str) -> tuple[int, ...]:
    return tuple(tokenizer.convert_tokens_to_ids(words.split()))


def fixed_reward(prompts, completions, completion_ids=None, **columns) -> list[float]:
    return [REWARDS[completion.strip()] for completion in completions]


def _inject(monkeypatch, tokenizer) -> None:
    """Replace prefkit's generation by the completions of COMPLETIONS."""

    def injected(task, positions, prompts):
        samples = []
        for prompt in prompts:
            for words in COMPLETIONS[prompt.prompt]:
                ids = _ids(tokenizer, words)
                ended = ids[-1] == tokenizer.eos_token_id
                text = tokenizer.decode(list(ids), skip_special_tokens=True)
                samples.append(
                    Completion(text, len(ids) - ended, "eos" if ended else "length", ids)
                )
        return samples, None

    monkeypatch.setattr(RLTask, "_generate", injected)


def _prefkit_step(policy, reference, tokenizer, out_dir, monkeypatch, correction: bool) -> float:
    _inject(monkeypatch, tokenizer)
    result = rl(
        PROMPTS,
        policy,
        tokenizer,
        fixed_reward,
        out_dir,
        RLConfig(
            algo="grpo",
            beta=BETA,
            kl_ratio_correction=correction,
            max_new_tokens=4,
            max_steps=1,
            save_model=False,
        ),
        TrainConfig(
            batch_size=2,
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


def _trl_step(policy, reference_dir, tokenizer, out_dir, correction: bool) -> float:
    def rollout(prompts, trainer):
        prompt_ids = [list(tokenizer(prompt)["input_ids"]) for prompt in prompts]
        seen: dict[str, int] = {}
        completion_ids = []
        for prompt in prompts:
            index = seen.get(prompt, 0)
            seen[prompt] = index + 1
            completion_ids.append(list(_ids(tokenizer, COMPLETIONS[prompt][index])))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    args = trl.GRPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        optim="sgd",
        weight_decay=0.0,
        max_grad_norm=0.0,
        beta=BETA,
        use_bias_correction_kl=correction,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        temperature=1.0,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=False,
    )
    policy.config._name_or_path = str(reference_dir)  # TRL builds its reference from this path
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.GRPOTrainer(
            model=policy,
            reward_funcs=fixed_reward,
            args=args,
            train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS]),
            processing_class=tokenizer,
            rollout_func=rollout,
        )
        trainer.train()
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    return logged["loss"]


@pytest.mark.parametrize("correction", [True, False])
def test_one_grpo_step_equals_one_trl_grpo_step(tmp_path, monkeypatch, correction: bool) -> None:
    tokenizer = build_tokenizer(adds_bos=True)
    assert len({len(tokenizer(prompt)["input_ids"]) for prompt in PROMPTS}) == 1
    initial = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    reference = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    reference.save_pretrained(tmp_path / "reference")
    ours, theirs = copy.deepcopy(initial), copy.deepcopy(initial)

    our_loss = _prefkit_step(
        ours, copy.deepcopy(reference), tokenizer, tmp_path / "ours", monkeypatch, correction
    )
    their_loss = _trl_step(theirs, tmp_path / "reference", tokenizer, tmp_path / "trl", correction)

    assert abs(our_loss) > 1e-2  # the KL to a reference that differs
    assert our_loss == pytest.approx(their_loss, abs=1e-5)
    start = initial.state_dict()
    their_weights = theirs.state_dict()
    moved = 0
    for name, our_weight in ours.state_dict().items():
        our_update = our_weight - start[name]
        their_update = their_weights[name] - start[name]
        scale = float(their_update.abs().max())
        moved += scale > 0
        rounding = 2 * torch.finfo(torch.float32).eps * float(start[name].abs().max())
        torch.testing.assert_close(
            our_update, their_update, rtol=0, atol=1e-4 * scale + rounding, msg=name
        )
    assert moved == len(start)


def test_rloo_advantages_equal_trl_rloo_trainer(tmp_path, monkeypatch) -> None:
    """The same injected completions and rewards, beta 0.05 with a reference that differs, the
    KL in the reward as the summed k1 (both defaults): TRL's RLOOTrainer logs the advantage of
    every completion of its first step, prefkit's must equal it to 1e-5."""
    tokenizer = build_tokenizer(adds_bos=True)
    initial = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    reference = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    reference.save_pretrained(tmp_path / "reference")

    ours: dict[tuple[str, str], float] = {}
    roll_out = RLTask._roll_out

    def recording(task, model, positions, prompts_in_step, sum_over_ranks):
        rollout = roll_out(task, model, positions, prompts_in_step, sum_over_ranks)
        for position in positions:
            prompt = task._prompt_at(position).prompt
            for ids, advantage in zip(
                rollout.completions[position], rollout.advantages[position], strict=True
            ):
                text = tokenizer.decode(list(ids), skip_special_tokens=True)
                ours[(prompt, text)] = float(advantage)
        return rollout

    monkeypatch.setattr(RLTask, "_roll_out", recording)
    _inject(monkeypatch, tokenizer)
    rl(
        PROMPTS,
        copy.deepcopy(initial),
        tokenizer,
        fixed_reward,
        tmp_path / "ours",
        RLConfig(algo="rloo", beta=0.05, max_new_tokens=4, max_steps=1, save_model=False),
        TrainConfig(batch_size=2, lr=LR, progress=False, device="cpu"),
        ref_model=copy.deepcopy(reference),
    )

    class InjectedRLOO(trl.RLOOTrainer):
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields):
            by_ids = {tuple(tokenizer(prompt)["input_ids"]): prompt for prompt in PROMPTS}
            seen: dict[str, int] = {}
            completion_ids = []
            for ids in prompt_ids:
                prompt = by_ids[tuple(ids)]
                index = seen.get(prompt, 0)
                seen[prompt] = index + 1
                completion_ids.append(list(_ids(tokenizer, COMPLETIONS[prompt][index])))
            return completion_ids

    policy = copy.deepcopy(initial)
    policy.config._name_or_path = str(tmp_path / "reference")
    args = trl.RLOOConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=1,
        learning_rate=LR,
        beta=0.05,
        temperature=1.0,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = InjectedRLOO(
            model=policy,
            reward_funcs=fixed_reward,
            args=args,
            train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS]),
            processing_class=tokenizer,
        )
        trainer.train()
    theirs = {
        (prompt, completion): advantage
        for prompt, completion, advantage in zip(
            trainer._logs["prompt"], trainer._logs["completion"], trainer._logs["advantages"]
        )
    }
    assert set(theirs) == set(ours) and len(ours) == 8
    for key, advantage in theirs.items():
        assert ours[key] == pytest.approx(advantage, abs=1e-5), key
    plain = [REWARDS[completion.strip()] for _, completion in ours]
    assert max(abs(a - b) for a, b in zip(ours.values(), plain, strict=True)) > 0  # KL shaped
