"""Per-sequence completion log-probs of a causal LM, with the prompt masked.

``log pi(completion | prompt) = sum_t log p(completion_t | prompt, completion_<t)``
over the completion tokens only. Two layouts of the same numbers:

- :class:`SequenceBatch`: each row is ``prompt + completion``, right-padded; one
  forward pass scores every row. Putting the chosen and the rejected completions
  of a batch in the same :class:`SequenceBatch` scores both in one pass (one
  larger matrix multiply instead of two, and one padding length).
- :class:`SharedPromptBatch`: the prompts are run once (left-padded, with their
  key/value cache kept), then every completion is run on top of its prompt's
  cache. With K completions per prompt this saves (K - 1) prompt forwards;
  gradients flow through the cache into the prompt pass.

Both are tested to give the same log-probs as scoring each sequence alone.
Only the logits of completion positions are computed when the model takes
``logits_to_keep`` (Hugging Face causal LMs do), which avoids the vocabulary
projection over most of a long prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor, nn

__all__ = [
    "SequenceBatch",
    "SharedPromptBatch",
    "pack_sequences",
    "pack_shared_prompts",
    "sequence_logps",
    "shared_prompt_logps",
    "token_logps",
]


@dataclass
class SequenceBatch:
    """R rows of ``prompt + completion``, right-padded to T tokens."""

    input_ids: Tensor
    """(R, T) token ids; padding positions hold the pad id."""
    attention_mask: Tensor
    """(R, T) 1 on real tokens, 0 on padding."""
    completion_mask: Tensor
    """(R, T) bool, True on the completion tokens (the ones scored)."""
    prompt_lengths: Tensor
    """(R,) number of prompt tokens of each row."""


@dataclass
class SharedPromptBatch:
    """B prompts (left-padded) and R completions, each belonging to one prompt."""

    prompt_ids: Tensor
    """(B, P) prompt ids, left-padded so every prompt ends at column P - 1."""
    prompt_attention_mask: Tensor
    """(B, P) 1 on real prompt tokens."""
    completion_ids: Tensor
    """(R, C) completion ids, right-padded."""
    completion_attention_mask: Tensor
    """(R, C) 1 on real completion tokens."""
    prompt_index: Tensor
    """(R,) long: the prompt (row of ``prompt_ids``) of each completion."""


def pack_sequences(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int
) -> SequenceBatch:
    """Right-padded :class:`SequenceBatch` of ``(prompt_ids, completion_ids)`` rows."""
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(rows):
        end = len(prompt) + len(completion)
        input_ids[row, :end] = torch.tensor([*prompt, *completion], dtype=torch.long)
        attention_mask[row, :end] = 1
        completion_mask[row, len(prompt) : end] = True
    prompt_lengths = torch.tensor([len(prompt) for prompt, _ in rows], dtype=torch.long)
    return SequenceBatch(input_ids, attention_mask, completion_mask, prompt_lengths)


def pack_shared_prompts(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[tuple[int, Sequence[int]]],
    pad_id: int,
) -> SharedPromptBatch:
    """:class:`SharedPromptBatch` of prompts and ``(prompt index, completion_ids)`` rows."""
    prompt_width = max(len(prompt) for prompt in prompts)
    prompt_ids = torch.full((len(prompts), prompt_width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompts), prompt_width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            prompt_ids[row, prompt_width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            prompt_mask[row, prompt_width - len(prompt) :] = 1
    if not all(prompts):
        raise ValueError("the shared-prompt pass needs a non-empty prompt for every example")
    completion_width = max(len(completion) for _, completion in completions)
    completion_ids = torch.full((len(completions), completion_width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(completions), completion_width), dtype=torch.long)
    for row, (_, completion) in enumerate(completions):
        completion_ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        completion_mask[row, : len(completion)] = 1
    prompt_index = torch.tensor([index for index, _ in completions], dtype=torch.long)
    return SharedPromptBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, prompt_index)


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """(R, L) log p(target) from (R, L, V) logits, computed in float32 at least."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (R, L)
    return picked - torch.logsumexp(logits, dim=-1)


@cache
def _accepts_logits_to_keep(forward_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(forward_class.forward).parameters


def _forward_class(model: nn.Module) -> type:
    """The class whose ``forward`` receives the arguments (a peft wrapper passes them on)."""
    get_base_model = getattr(model, "get_base_model", None)
    return type(get_base_model()) if callable(get_base_model) else type(model)


def _forward_logits(model: nn.Module, keep: int | None, **inputs: Tensor) -> Tensor:
    if keep is not None and _accepts_logits_to_keep(_forward_class(model)):
        return model(**inputs, logits_to_keep=keep).logits
    logits = model(**inputs).logits
    return logits if keep is None else logits[:, -keep:]


@cache
def _cache_argument(forward_class: type) -> str:
    """``cache`` in recent transformers, ``past_key_values`` before."""
    parameters = inspect.signature(forward_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(output: object) -> object:
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values  # type: ignore[attr-defined]


def sequence_logps(model: nn.Module, batch: SequenceBatch) -> tuple[Tensor, Tensor]:
    """(R,) summed completion log-probs and (R,) completion lengths, one forward pass."""
    width = batch.input_ids.shape[1]
    # Logits at position t predict token t + 1; the first scored token sits at the shortest prompt.
    first_scored = int(batch.prompt_lengths.min().item())
    keep = width - first_scored + 1  # positions first_scored - 1 .. width - 1
    logits = _forward_logits(
        model, keep, input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    )  # (R, keep, V)
    targets = batch.input_ids[:, first_scored:]  # (R, keep - 1)
    mask = batch.completion_mask[:, first_scored:]  # (R, keep - 1)
    per_token = token_logps(logits[:, :-1], targets)  # (R, keep - 1)
    logps = (per_token * mask).sum(dim=-1)
    return logps, mask.sum(dim=-1)


def shared_prompt_logps(model: nn.Module, batch: SharedPromptBatch) -> tuple[Tensor, Tensor]:
    """(R,) summed completion log-probs and (R,) lengths, running each prompt once."""
    prompt_mask = batch.prompt_attention_mask
    prompt_positions = (prompt_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, P)
    prompt_out = model(
        input_ids=batch.prompt_ids,
        attention_mask=prompt_mask,
        position_ids=prompt_positions,
        use_cache=True,
        logits_to_keep=1,
    )
    index = batch.prompt_index
    first_logits = prompt_out.logits[:, -1][index]  # (R, V): predicts each completion's first token
    cache = _output_cache(prompt_out)
    cache.reorder_cache(index)  # one cache row per completion (index_select, differentiable)

    completion_mask = batch.completion_attention_mask
    prompt_lengths = prompt_mask.sum(dim=-1)[index]  # (R,)
    steps = torch.arange(completion_mask.shape[1], device=completion_mask.device)
    completion_positions = prompt_lengths[:, None] + steps[None, :]  # (R, C)
    completion_logits = model(
        input_ids=batch.completion_ids,
        attention_mask=torch.cat([prompt_mask[index], completion_mask], dim=1),
        position_ids=completion_positions,
        use_cache=True,
        **{_cache_argument(_forward_class(model)): cache},
    ).logits  # (R, C, V)
    logits = torch.cat([first_logits[:, None], completion_logits[:, :-1]], dim=1)  # (R, C, V)
    per_token = token_logps(logits, batch.completion_ids)  # (R, C)
    mask = completion_mask.bool()
    return (per_token * mask).sum(dim=-1), mask.sum(dim=-1)
