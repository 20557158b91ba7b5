"""Proof that alignment aligns: a tiny LM learns a rule from its own labelled samples.

The synthetic language (:mod:`prefkit.align.synthetic`): prompts are a few words
and ``:``, completions four words; the rule prefers completions with more good
words (``a`` .. ``d``). A tiny Llama is first taught the language by SFT on
random completions, so it writes well-formed completions with about half good
words. Pairs of its own samples, labelled by the rule, then train it with DPO,
SimPO (reference-free) and KTO (the pairs split into thumbs up and down).

The assertion compares fresh samples of the trained policy with fresh samples
of the reference on held-out prompts: the policy must win by the rule in at
least 70% of the non-tied comparisons and raise the share of good words by
0.15. A flipped sign drives the share of good words below the reference's
(win rate < 50%), and a zero gradient leaves the policy equal to the reference
(win rate near 50%); both fail.

The rule alone cannot tell DPO from look-alikes, so
``test_only_a_correct_dpo_passes`` trains on pairs whose chosen response has at
most half good words (on average fewer than the reference writes) and checks, besides
the rule, what prefkit reports against what the test computes itself: the step-1
loss is log 2 with margin 0 (policy = reference), and the final evaluation on
held-out labelled pairs has the implicit reward margin and accuracy of
beta * (log pi - log pi_ref) computed here with one forward pass per completion.
It shows that SFT on the chosen responses fails the rule (it copies their share of
good words, below the reference's), that DPO with the reference log-probs zeroed
fails the reward checks (its policy is almost DPO's, so the rule passes), that DPO
on flipped labels fails the rule with a win rate below 50%, and that the untrained
reference (what a zero gradient leaves) fails it too.
"""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch

import prefkit.align.trainer as trainer_module
from prefkit.align.logprobs import pack_sequences, sequence_logps
from prefkit.align.synthetic import (
    build_model,
    build_tokenizer,
    good_fraction,
    random_completion,
    random_prompt,
    sample_completions,
)
from prefkit.align.tokenize import TokenizeConfig, encode_completion
from prefkit.align.trainer import AlignConfig, align
from prefkit.data.records import PairwiseRecord
from prefkit.train.loop import TrainConfig

TOKENIZE = TokenizeConfig(max_length=32, max_prompt_length=16)


@pytest.fixture(scope="module")
def world():
    """(tokenizer, reference model after SFT, labelled pairs, held-out prompts)."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(80):
        rows = []
        for _ in range(32):
            encoded = encode_completion(
                tokenizer, random_prompt(rng), random_completion(rng), TOKENIZE
            )
            rows.append((encoded.prompt_ids, encoded.completion_ids))
        logps, lengths = sequence_logps(model, pack_sequences(rows, tokenizer.pad_token_id))
        loss = -logps.sum() / lengths.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    prompts = [random_prompt(rng) for _ in range(256)]
    first = sample_completions(model, tokenizer, prompts, seed=1)
    second = sample_completions(model, tokenizer, prompts, seed=2)
    pairs = []
    for index, (prompt, a, b) in enumerate(zip(prompts, first, second)):
        if good_fraction(a) == good_fraction(b):
            continue
        outcome = "a" if good_fraction(a) > good_fraction(b) else "b"
        pairs.append(
            PairwiseRecord(
                id=str(index), prompt=prompt, response_a=a, response_b=b, outcome=outcome
            )
        )
    held_out = [random_prompt(rng) for _ in range(200)]
    return tokenizer, model, pairs, held_out


def _judge(world, policy):
    """(policy's share of good words, reference's share, policy's win rate over non-ties)."""
    tokenizer, reference, _, prompts = world
    policy_samples = sample_completions(policy, tokenizer, prompts, seed=3)
    reference_samples = sample_completions(reference, tokenizer, prompts, seed=4)
    wins = losses = 0
    for ours, theirs in zip(policy_samples, reference_samples):
        wins += good_fraction(ours) > good_fraction(theirs)
        losses += good_fraction(ours) < good_fraction(theirs)
    share = sum(map(good_fraction, policy_samples)) / len(prompts)
    reference_share = sum(map(good_fraction, reference_samples)) / len(prompts)
    return share, reference_share, wins / max(wins + losses, 1)


@pytest.mark.parametrize(
    ("loss", "loss_args"),
    [("sigmoid", {"beta": 0.1}), ("simpo", {"beta": 2.0, "gamma": 0.5}), ("kto", {"beta": 0.1})],
)
def test_trained_policy_beats_the_reference_by_the_rule(world, tmp_path, loss, loss_args):
    tokenizer, reference, pairs, _ = world
    assert len(pairs) > 150
    policy = copy.deepcopy(reference)
    config = AlignConfig(
        loss=loss,
        loss_args=loss_args,
        max_length=32,
        max_prompt_length=16,
        cache_ref=False,
        save_model=False,
    )
    align(
        pairs,
        policy,
        tokenizer,
        tmp_path,
        config,
        TrainConfig(batch_size=16, lr=1e-3, schedule="constant", progress=False),
    )
    share, reference_share, win_rate = _judge(world, policy)
    assert 0.35 < reference_share < 0.65  # the reference writes good words about half the time
    assert win_rate >= 0.7, (share, reference_share, win_rate)
    assert share >= reference_share + 0.15, (share, reference_share, win_rate)


# ---------------------------------------------------------------------------
# only a correct DPO passes

BETA = 0.1


def _labelled_pairs(model, tokenizer, prompts, seeds, keep):
    """Pairs of ``model``'s samples labelled by the rule; ties and pairs ``keep`` refuses dropped."""
    first = sample_completions(model, tokenizer, prompts, seed=seeds[0])
    second = sample_completions(model, tokenizer, prompts, seed=seeds[1])
    pairs = []
    for index, (prompt, a, b) in enumerate(zip(prompts, first, second)):
        if good_fraction(a) == good_fraction(b) or not keep(good_fraction(a), good_fraction(b)):
            continue
        outcome = "a" if good_fraction(a) > good_fraction(b) else "b"
        pairs.append(
            PairwiseRecord(
                id=str(index), prompt=prompt, response_a=a, response_b=b, outcome=outcome
            )
        )
    return pairs


@pytest.fixture(scope="module")
def modest_pairs(world):
    """(training pairs whose better response has at most half good words, 64 held-out pairs)."""
    tokenizer, reference, _, held_out = world
    rng = random.Random(11)
    prompts = [random_prompt(rng) for _ in range(1024)]
    training = _labelled_pairs(
        reference, tokenizer, prompts, (5, 6), keep=lambda a, b: max(a, b) <= 0.5
    )
    evaluation = _labelled_pairs(reference, tokenizer, held_out, (7, 8), keep=lambda a, b: True)
    return training, evaluation[:64]


@torch.no_grad()
def _completion_logps(model, tokenizer, prompt, completion):
    """Summed log-prob of ``completion`` after ``prompt``, from one unpadded forward pass."""
    encoded = encode_completion(tokenizer, prompt, completion, TOKENIZE)
    ids = torch.tensor([[*encoded.prompt_ids, *encoded.completion_ids]])  # (1, T)
    logprobs = model(ids).logits[0, :-1].log_softmax(-1)  # (T - 1, V)
    token_logps = logprobs.gather(-1, ids[0, 1:, None])[:, 0]  # (T - 1,)
    return float(token_logps[len(encoded.prompt_ids) - 1 :].sum())


def _dpo_failures(world, policy, out_dir, eval_pairs):
    """What marks this run as not a correct DPO; empty when every check passes."""
    tokenizer, reference, _, _ = world
    failures = []
    share, reference_share, win_rate = _judge(world, policy)
    if not (win_rate >= 0.7 and share >= reference_share + 0.15):
        failures.append(
            f"rule: share {share:.3f} vs {reference_share:.3f}, win rate {win_rate:.3f}"
        )
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    first = lines[0]
    if abs(first["loss"] - math.log(2)) > 1e-6 or abs(first["reward_margin"]) > 1e-6:
        failures.append(
            f"step 1 at the reference: loss {first['loss']}, margin {first['reward_margin']}"
        )
    policy.eval()
    margins = []
    for pair in eval_pairs:
        rewards = [
            BETA
            * (
                _completion_logps(policy, tokenizer, pair.prompt, completion)
                - _completion_logps(reference, tokenizer, pair.prompt, completion)
            )
            for completion in (pair.chosen, pair.rejected)
        ]
        margins.append(rewards[0] - rewards[1])
    accuracy = sum(margin > 0 for margin in margins) / len(margins)
    if accuracy < 0.7:
        failures.append(f"held-out implicit reward accuracy {accuracy:.3f}")
    (evaluated,) = [line for line in lines if line["split"] == "eval"]
    mean_margin = sum(margins) / len(margins)
    if abs(evaluated["reward_margin"] - mean_margin) > 1e-4:
        failures.append(f"reported margin {evaluated['reward_margin']} != {mean_margin}")
    if abs(evaluated["reward_accuracy"] - accuracy) > 1e-9:
        failures.append(f"reported accuracy {evaluated['reward_accuracy']} != {accuracy}")
    return failures


def _flipped(pairs):
    return [
        PairwiseRecord(
            id=pair.id,
            prompt=pair.prompt,
            response_a=pair.response_a,
            response_b=pair.response_b,
            outcome="b" if pair.outcome == "a" else "a",
        )
        for pair in pairs
    ]


def test_only_a_correct_dpo_passes(world, modest_pairs, tmp_path, monkeypatch):
    tokenizer, reference, _, _ = world
    training, evaluation = modest_pairs
    assert len(training) > 150 and len(evaluation) == 64
    chosen_share = sum(good_fraction(pair.chosen) for pair in training) / len(training)
    assert chosen_share < 0.5

    def train(name, loss="sigmoid", records=training):
        policy = copy.deepcopy(reference)
        config = AlignConfig(
            loss=loss,
            loss_args={"beta": BETA} if loss == "sigmoid" else {},
            max_length=32,
            max_prompt_length=16,
            cache_ref=False,
            save_model=False,
        )
        align(
            records,
            policy,
            tokenizer,
            tmp_path / name,
            config,
            TrainConfig(batch_size=16, lr=1e-3, schedule="constant", progress=False),
            eval_records=evaluation,
        )
        return policy

    def dpo_failures(name, policy):
        return _dpo_failures(world, policy, tmp_path / name, evaluation)

    assert dpo_failures("dpo", train("dpo")) == []
    assert _judge(world, reference)[2] < 0.7  # a zero gradient (no change) fails the rule

    share, reference_share, _ = _judge(world, train("sft", loss="sft"))
    assert share < reference_share  # SFT copies the chosen responses' share of good words

    flipped = train("flipped", records=_flipped(training))
    assert _judge(world, flipped)[2] < 0.5
    failures = dpo_failures("flipped", flipped)
    assert failures and failures[0].startswith("rule")

    precompute = trainer_module._precompute_reference

    def zeroed_reference(*args, **kwargs):
        return [(torch.zeros_like(table), hit) for table, hit in precompute(*args, **kwargs)]

    monkeypatch.setattr(trainer_module, "_precompute_reference", zeroed_reference)
    zeroed = dpo_failures("zeroed", train("zeroed"))
    assert zeroed and not any(failure.startswith("rule") for failure in zeroed)
    assert any(failure.startswith("step 1") for failure in zeroed)
    assert any(failure.startswith("reported margin") for failure in zeroed)
