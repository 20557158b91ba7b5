"""Prompt/completion tokenization: BOS/EOS at the boundary, chat templates, counted truncation."""

from __future__ import annotations

import pytest

from prefkit.align.synthetic import build_tokenizer
from prefkit.align.tokenize import (
    TokenizeConfig,
    TokenizeStats,
    encode_completion,
    tokenizer_adds_bos,
)
from prefkit.data.records import Message

BOS, EOS = 1, 2
A, B, C, D = 4, 5, 6, 7  # ids of the words a b c d (after 4 specials)
COLON = 12


@pytest.mark.parametrize("adds_bos", [True, False])
def test_exactly_one_bos_when_the_tokenizer_adds_it_and_none_otherwise(adds_bos):
    tokenizer = build_tokenizer(adds_bos=adds_bos)
    assert tokenizer_adds_bos(tokenizer) is adds_bos
    encoded = encode_completion(tokenizer, "a b :", " c d", TokenizeConfig(16, 8))
    assert encoded.prompt_ids == ((BOS,) if adds_bos else ()) + (A, B, COLON)
    assert encoded.completion_ids == (C, D, EOS)
    assert encoded.input_ids.count(BOS) == (1 if adds_bos else 0)
    assert encoded.input_ids.count(EOS) == 1


def test_bos_written_by_the_text_is_not_doubled_and_eos_is_not_doubled():
    tokenizer = build_tokenizer(adds_bos=True)
    encoded = encode_completion(tokenizer, "<s> a :", " c </s>", TokenizeConfig(16, 8))
    assert encoded.prompt_ids == (BOS, A, COLON)
    assert encoded.completion_ids == (C, EOS)


def test_add_eos_off_keeps_the_completion_as_written():
    tokenizer = build_tokenizer(adds_bos=False)
    encoded = encode_completion(tokenizer, "a :", " c d", TokenizeConfig(16, 8, add_eos=False))
    assert encoded.completion_ids == (C, D)


def test_truncation_keeps_prompt_end_and_bos_and_completion_start_and_is_counted():
    tokenizer = build_tokenizer(adds_bos=True)
    stats = TokenizeStats()
    config = TokenizeConfig(max_length=6, max_prompt_length=3)
    encoded = encode_completion(tokenizer, "a b c d :", " a b c d", config, stats)
    assert encoded.prompt_ids == (BOS, D, COLON)  # last tokens kept, BOS stays in front
    assert encoded.completion_ids == (A, B, C)  # first tokens kept; EOS cut
    assert stats.truncated_prompts == 1 and stats.prompt_tokens_dropped == 3
    assert stats.truncated_completions == 1 and stats.completion_tokens_dropped == 2


def test_completion_never_empty_even_with_a_prompt_at_its_limit():
    tokenizer = build_tokenizer(adds_bos=False)
    encoded = encode_completion(tokenizer, "a b c d :", " a", TokenizeConfig(4, 3))
    assert len(encoded.prompt_ids) == 3 and encoded.completion_ids == (A,)
    with pytest.raises(ValueError, match="max_prompt_length"):
        TokenizeConfig(max_length=4, max_prompt_length=4)


def test_empty_completion_without_eos_is_an_error():
    tokenizer = build_tokenizer(adds_bos=False)
    with pytest.raises(ValueError, match="no tokens"):
        encode_completion(tokenizer, "a :", " ", TokenizeConfig(16, 8, add_eos=False))


def test_merge_across_the_seam_falls_back_to_separate_encoding_and_is_counted():
    tokenizer = build_tokenizer(adds_bos=False, extra_words=("bc",))
    stats = TokenizeStats()
    # "a b" + "c" is "a bc" jointly: the prompt's own encoding is not a prefix of it.
    encoded = encode_completion(tokenizer, "a b", "c", TokenizeConfig(16, 8), stats)
    assert encoded.prompt_ids == (A, B)
    assert encoded.completion_ids == (C, EOS)
    assert stats.boundary_splits == 1


def test_conversations_use_the_chat_template_and_split_at_the_generation_prompt():
    tokenizer = build_tokenizer(adds_bos=True, extra_words=("user", "assistant", "|"))
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} | {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant | {% endif %}"
    )
    prompt = (Message("user", "a b"),)
    encoded = encode_completion(tokenizer, prompt, "c d", TokenizeConfig(32, 16))
    user, assistant, bar = 13, 14, 15
    assert encoded.prompt_ids == (BOS, user, bar, A, B, assistant, bar)  # one BOS
    assert encoded.completion_ids == (C, D, EOS)
    same = encode_completion(
        tokenizer, prompt, (Message("assistant", "c d"),), TokenizeConfig(32, 16)
    )
    assert same == encoded


def test_conversation_without_template_is_an_error():
    tokenizer = build_tokenizer()
    with pytest.raises(ValueError, match="chat_template"):
        encode_completion(tokenizer, (Message("user", "a"),), "b", TokenizeConfig(16, 8))
