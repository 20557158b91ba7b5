"""Prompt/completion tokenization with a correct boundary and counted truncation.

A training example for a causal LM is ``prompt_ids + completion_ids``; only the
completion tokens are scored. Three things go wrong in practice, and this
module handles each explicitly:

- **BOS/EOS.** A tokenizer that adds BOS on its own (Llama, Gemma) must not get
  a second one, and one that does not (GPT-2, Qwen) must not get one invented.
  The prompt starts with BOS exactly when the tokenizer adds BOS to a plain
  encode; text that already starts with the BOS token (a chat template that
  writes it) is not given another. EOS is appended to the completion unless it
  already ends with EOS, so there is exactly one.
- **The boundary.** Sub-word tokenizers can merge across the prompt/completion
  seam, so tokenizing the two halves separately can give a different sequence
  than the model sees at generation time. The completion ids are taken from the
  joint encoding ``prompt + completion`` when the prompt's own encoding is a
  prefix of it; otherwise (a merge across the seam) the halves are encoded
  separately and :attr:`TokenizeStats.boundary_splits` counts it. The prompt
  ids are therefore always the prompt's own encoding, identical for every
  completion of that prompt (which the shared-prompt forward pass needs).
- **Truncation.** The prompt keeps its last ``max_prompt_length`` tokens (BOS
  stays in front), then the completion keeps its first
  ``max_length - len(prompt)`` tokens. Both are counted, and a completion can
  never become empty because ``max_prompt_length < max_length``.

Conversations (tuples of :class:`~prefkit.data.records.Message`) go through the
tokenizer's chat template: the prompt is rendered with the generation prompt,
the completion is the rest of the rendering of prompt + assistant turn(s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefkit.data.records import Message, Text
from prefkit.errors import UserInputError

__all__ = [
    "EncodedCompletion",
    "TokenizeConfig",
    "TokenizeStats",
    "encode_completion",
    "encode_completions",
    "tokenizer_adds_bos",
]


@dataclass(frozen=True)
class TokenizeConfig:
    """How prompts and completions become token ids; validated on construction."""

    max_length: int = 1024
    """Most tokens of prompt + completion; the completion is cut at the end to fit."""
    max_prompt_length: int = 512
    """Most tokens of the prompt (its last tokens are kept, BOS stays); must be < max_length."""
    add_eos: bool = True
    """Append the EOS token to every completion that does not already end with it."""

    def __post_init__(self) -> None:
        for name in ("max_length", "max_prompt_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(
                    f"TokenizeConfig: {name} must be an integer >= 1, got {value!r}."
                )
        if self.max_prompt_length >= self.max_length:
            raise UserInputError(
                f"TokenizeConfig: max_prompt_length ({self.max_prompt_length}) must be smaller than "
                f"max_length ({self.max_length}) so every completion keeps at least one token."
            )

    def as_key(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "max_prompt_length": self.max_prompt_length,
            "add_eos": self.add_eos,
        }


@dataclass
class TokenizeStats:
    """Counts over all completions encoded with one stats object."""

    completions: int = 0
    truncated_prompts: int = 0
    """Completions whose prompt lost tokens at the start."""
    truncated_completions: int = 0
    """Completions that lost tokens at the end (their EOS included)."""
    prompt_tokens_dropped: int = 0
    completion_tokens_dropped: int = 0
    boundary_splits: int = 0
    """Completions encoded apart from their prompt because the joint encoding merged across the seam."""

    def summary(self) -> str:
        return (
            f"{self.completions} completions tokenized; prompt truncated in "
            f"{self.truncated_prompts} ({self.prompt_tokens_dropped} tokens), completion truncated "
            f"in {self.truncated_completions} ({self.completion_tokens_dropped} tokens); "
            f"{self.boundary_splits} encoded apart at the prompt boundary"
        )


@dataclass(frozen=True)
class EncodedCompletion:
    """Token ids of one prompt and one completion, after truncation."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    """Never empty."""

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.completion_ids


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether a plain ``tokenizer(text)`` call puts BOS first."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _render(tokenizer: Any, prompt: Text, completion: Text) -> tuple[str, str]:
    """Prompt text and completion text; conversations go through the chat template."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    if getattr(tokenizer, "chat_template", None) is None:
        raise UserInputError(
            "the data holds conversations but the tokenizer has no chat_template; set "
            "tokenizer.chat_template or give prompts and responses as plain strings"
        )
    prompt_messages = (
        [{"role": "user", "content": prompt}]
        if isinstance(prompt, str)
        else [m.to_dict() for m in prompt]
    )
    completion_messages = (
        [{"role": "assistant", "content": completion}]
        if isinstance(completion, str)
        else [m.to_dict() for m in completion if isinstance(m, Message)]
    )
    prompt_text = tokenizer.apply_chat_template(
        prompt_messages, tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(prompt_messages + completion_messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise UserInputError(
            "the chat template renders the prompt differently with and without the assistant "
            "turn, so the completion cannot be separated from it; use a template whose "
            "generation prompt is a prefix of the full conversation"
        )
    return prompt_text, full_text[len(prompt_text) :]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_completion(
    tokenizer: Any,
    prompt: Text,
    completion: Text,
    config: TokenizeConfig,
    stats: TokenizeStats | None = None,
    *,
    adds_bos: bool | None = None,
) -> EncodedCompletion:
    """Token ids of ``prompt`` and ``completion`` (see the module docstring for the rules)."""
    stats = stats if stats is not None else TokenizeStats()
    adds_bos = tokenizer_adds_bos(tokenizer) if adds_bos is None else adds_bos
    prompt_text, completion_text = _render(tokenizer, prompt, completion)
    prompt_ids = _encode(tokenizer, prompt_text)
    full_ids = _encode(tokenizer, prompt_text + completion_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        completion_ids = full_ids[len(prompt_ids) :]
    else:
        completion_ids = _encode(tokenizer, completion_text)
        stats.boundary_splits += 1

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    has_bos = adds_bos and bos is not None
    if has_bos and (not prompt_ids or prompt_ids[0] != bos):
        prompt_ids = [bos, *prompt_ids]
    if config.add_eos:
        if eos is None:
            raise UserInputError("TokenizeConfig.add_eos is on but the tokenizer has no eos_token")
        if not completion_ids or completion_ids[-1] != eos:
            completion_ids = [*completion_ids, eos]
    stats.completions += 1
    if not completion_ids:
        raise UserInputError(
            "the completion encodes to no tokens; drop empty responses or turn add_eos on"
        )

    if len(prompt_ids) > config.max_prompt_length:
        keep_front = 1 if has_bos else 0
        dropped = len(prompt_ids) - config.max_prompt_length
        prompt_ids = prompt_ids[:keep_front] + prompt_ids[keep_front + dropped :]
        stats.truncated_prompts += 1
        stats.prompt_tokens_dropped += dropped
    room = config.max_length - len(prompt_ids)  # >= 1 because max_prompt_length < max_length
    if len(completion_ids) > room:
        stats.truncated_completions += 1
        stats.completion_tokens_dropped += len(completion_ids) - room
        completion_ids = completion_ids[:room]
    return EncodedCompletion(tuple(prompt_ids), tuple(completion_ids))


def encode_completions(
    tokenizer: Any,
    prompt: Text,
    completions: list[Text],
    config: TokenizeConfig,
    stats: TokenizeStats | None = None,
) -> list[EncodedCompletion]:
    """:func:`encode_completion` for several completions of one prompt (same prompt ids)."""
    adds_bos = tokenizer_adds_bos(tokenizer)
    return [
        encode_completion(tokenizer, prompt, completion, config, stats, adds_bos=adds_bos)
        for completion in completions
    ]
