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
(win rate near 50%); both fail. (Checked by flipping the labels of the pairs.)
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

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
