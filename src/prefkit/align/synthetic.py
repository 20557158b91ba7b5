"""A tiny synthetic language and random-weight causal LMs, built offline.

Used by the alignment tests, the benchmark and demos, where no pretrained
model may be downloaded. The language: a prompt is a few words from an alphabet
of eight (``a`` .. ``h``) followed by ``:``, and a completion is a few words.
The rule that decides which of two completions is better: the one with more
"good" words (``a`` .. ``d``). A model trained on random completions writes
good words about half the time; an aligned one writes more.

The tokenizer is a word-level ``tokenizers`` model wrapped in
``PreTrainedTokenizerFast``, with or without a BOS-adding post-processor, so
both tokenizer conventions can be tested.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "GOOD_WORDS",
    "WORDS",
    "build_model",
    "build_tokenizer",
    "good_fraction",
    "random_completion",
    "random_prompt",
    "sample_completions",
]

WORDS = ("a", "b", "c", "d", "e", "f", "g", "h")
GOOD_WORDS = frozenset(WORDS[:4])
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def build_tokenizer(*, adds_bos: bool = True, extra_words: Sequence[str] = ()) -> Any:
    """A word-level tokenizer over the synthetic words, ``:`` and ``extra_words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*SPECIALS, *WORDS, ":", *extra_words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    return tokenizer


def build_model(
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Any:
    """A random-weight float32 Llama sized for CPU tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def random_prompt(rng: random.Random, num_words: int = 3) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words)) + " :"


def random_completion(rng: random.Random, num_words: int = 4) -> str:
    return " " + " ".join(rng.choice(WORDS) for _ in range(num_words))


def good_fraction(completion: str) -> float:
    """Share of the completion's words that are good (0 for an empty completion)."""
    words = completion.split()
    return sum(word in GOOD_WORDS for word in words) / len(words) if words else 0.0


@torch.no_grad()
def sample_completions(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 6, seed: int = 0
) -> list[str]:
    """One sampled completion (temperature 1) per prompt, as text with a leading space."""
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    if len({len(ids) for ids in encoded}) != 1:
        raise ValueError("sample_completions needs prompts of one length (no padding)")
    input_ids = torch.tensor(encoded, dtype=torch.long)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.train(was_training)
    texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [" " + text.strip() for text in texts]
