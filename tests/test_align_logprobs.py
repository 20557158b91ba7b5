"""Fast paths of completion scoring against the plain versions, and the reference cache."""

from __future__ import annotations

import random

import pytest
import torch

from prefkit.align.logprobs import (
    pack_sequences,
    pack_shared_prompts,
    sequence_logps,
    shared_prompt_logps,
    token_logps,
)
from prefkit.align.refcache import (
    cached_reference_logps,
    compute_reference_logps,
    reference_cache_key,
    weights_digest,
)
from prefkit.align.synthetic import build_model, build_tokenizer, random_completion, random_prompt
from prefkit.align.tokenize import TokenizeConfig, encode_completions


@pytest.fixture(scope="module")
def setup():
    tokenizer = build_tokenizer(adds_bos=True)
    model = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1)
    rng = random.Random(3)
    pairs = []  # (prompt_ids, chosen_ids, rejected_ids) of varied lengths
    for index in range(5):
        prompt = random_prompt(rng, num_words=1 + index)
        chosen, rejected = encode_completions(
            tokenizer,
            prompt,
            [random_completion(rng, 1 + index % 3), random_completion(rng, 4 - index % 3)],
            TokenizeConfig(64, 32),
        )
        pairs.append((chosen.prompt_ids, chosen.completion_ids, rejected.completion_ids))
    return model, pairs


def _alone(model, prompt, completion):
    """The plainest possible score: full logits of one unpadded sequence."""
    ids = torch.tensor([[*prompt, *completion]])
    logits = model(input_ids=ids).logits[0, :-1]
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt) - 1 :].sum()


def test_one_pass_for_chosen_and_rejected_equals_two_passes_and_single_sequences(setup):
    model, pairs = setup
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    both, lengths = sequence_logps(model, pack_sequences(rows, 0))
    chosen, _ = sequence_logps(model, pack_sequences(rows[:5], 0))
    rejected, _ = sequence_logps(model, pack_sequences(rows[5:], 0))
    alone = torch.stack([_alone(model, p, c) for p, c in rows])
    torch.testing.assert_close(both, torch.cat([chosen, rejected]), atol=1e-5, rtol=0)
    torch.testing.assert_close(both, alone, atol=1e-5, rtol=0)
    assert lengths.tolist() == [len(c) for _, c in rows]


def test_shared_prompt_pass_equals_plain_pass_in_values_and_gradients(setup):
    model, pairs = setup
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    model.zero_grad()
    plain, plain_lengths = sequence_logps(model, pack_sequences(rows, 0))
    plain.sum().backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared_batch = pack_shared_prompts(
        [p for p, _, _ in pairs],
        [(i, c) for i, (_, c, _) in enumerate(pairs)]
        + [(i, r) for i, (_, _, r) in enumerate(pairs)],
        0,
    )
    shared, shared_lengths = shared_prompt_logps(model, shared_batch)
    shared.sum().backward()
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)
    assert shared_lengths.tolist() == plain_lengths.tolist()
    for plain_grad, parameter in zip(plain_grads, model.parameters()):
        torch.testing.assert_close(parameter.grad, plain_grad, atol=1e-5, rtol=1e-4)
    model.zero_grad()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_rows_with_uneven_completion_counts_equal_single_sequences(setup, attention):
    """Prompts with 3, 1 and 2 completions packed in one batch, given out of prompt order."""
    model, pairs = setup
    model.config._attn_implementation = attention
    try:
        (p0, c0, r0), (p1, c1, _), (p2, c2, r2) = pairs[:3]
        completions = [(2, c2), (0, c0), (0, r0), (1, c1), (0, c2), (2, r2)]
        prompts = [p0, p1, p2]
        with torch.no_grad():
            shared, lengths = shared_prompt_logps(
                model, pack_shared_prompts(prompts, completions, 0)
            )
            alone = torch.stack([_alone(model, prompts[b], c) for b, c in completions])
    finally:
        model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(shared, alone, atol=1e-5, rtol=0)
    assert lengths.tolist() == [len(c) for _, c in completions]


def test_shared_prompt_reference_pass_equals_the_plain_reference_pass(setup):
    model, pairs = setup
    # Rows as the trainer lists them: each example's completions one after another.
    rows = [row for p, c, r in pairs for row in ((p, c), (p, r))]
    plain = compute_reference_logps(model, rows, pad_id=0, batch_size=3)
    shared = compute_reference_logps(model, rows, pad_id=0, batch_size=3, shared_prompt=True)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=0)


def test_token_logps_is_log_softmax_gather():
    logits = torch.randn(2, 3, 7) * 30
    targets = torch.randint(0, 7, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(token_logps(logits, targets), expected)


def test_cached_reference_logps_equal_recomputed_and_key_tracks_weights_and_data(setup, tmp_path):
    model, pairs = setup
    rows = [(p, c) for p, c, _ in pairs]
    key = reference_cache_key(weights_digest(model), rows)
    calls = []

    def compute():
        calls.append(1)
        return compute_reference_logps(model, rows, pad_id=0, batch_size=2)

    first, hit_first = cached_reference_logps(compute, key, tmp_path)
    second, hit_second = cached_reference_logps(compute, key, tmp_path)
    assert (hit_first, hit_second, len(calls)) == (False, True, 1)
    assert torch.equal(first, second)
    with torch.no_grad():
        recomputed = torch.stack([_alone(model, p, c) for p, c in rows])
    torch.testing.assert_close(second, recomputed, atol=1e-5, rtol=0)

    assert reference_cache_key(weights_digest(model), rows[:-1]) != key
    other = build_model(build_tokenizer(), hidden_size=32, num_layers=2, num_heads=2, seed=2)
    assert reference_cache_key(weights_digest(other), rows) != key
