"""Per-sequence completion log-probs of a causal LM, with the prompt masked.

``log pi(completion | prompt) = sum_t log p(completion_t | prompt, completion_<t)``
over the completion tokens only. Two layouts of the same numbers:

- :class:`SequenceBatch`: each row is ``prompt + completion``, right-padded; one
  forward pass scores every row. Putting the chosen and the rejected completions
  of a batch in the same :class:`SequenceBatch` scores both in one pass (one
  larger matrix multiply instead of two, and one padding length).
- :class:`SharedPromptBatch`: one row per prompt, ``prompt + completion_1 + ...
  + completion_K``, with a 4D attention mask that lets each completion see its
  prompt and itself but not the other completions, and position ids that restart
  at the prompt's end for every completion. One forward pass runs each prompt
  once, which saves (K - 1) prompt forwards per example, and the row is as wide
  as the tokens it holds, so completions of different lengths are not padded to
  the longest completion of the batch. Needs an attention implementation that
  takes a ready 4D mask (sdpa, eager; not flash-attention).

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

from prefkit.errors import UserInputError

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
    """B packed rows, each one prompt followed by all of its R_b completions, right-padded to T.

    A completion attends to its prompt and (causally) to itself, never to the other
    completions of its row, and its position ids continue from the prompt's end, so
    every completion is scored exactly as if it followed its prompt alone.
    """

    input_ids: Tensor
    """(B, T) prompt, then each completion of that prompt; the pad id after the last one."""
    attention_mask: Tensor
    """(B, 1, T, T) bool, True where query position q may attend to key position k."""
    position_ids: Tensor
    """(B, T) 0 .. P - 1 on the prompt, P .. P + C_r - 1 on each completion r, 0 on padding."""
    row_index: Tensor
    """(R,) long: the packed row that holds completion r (completions in the caller's order)."""
    logit_positions: Tensor
    """(R, C) long: row position whose logits predict the completion's token (the prompt's
    last token for the first one); 0 past the completion's end."""
    targets: Tensor
    """(R, C) long: completion token ids, the pad id past the end."""
    target_mask: Tensor
    """(R, C) bool: True on the completion's tokens."""


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
    """:class:`SharedPromptBatch` of prompts and ``(prompt index, completion_ids)`` rows.

    Completion r is scored in the order given; all completions of prompt b share row b.
    """
    if not all(prompts):
        raise UserInputError("the shared-prompt pass needs a non-empty prompt for every example")
    segments: list[list[int]] = [[] for _ in prompts]  # completion numbers of each row
    for number, (prompt_index, _) in enumerate(completions):
        segments[prompt_index].append(number)
    widths = [
        len(prompt) + sum(len(completions[number][1]) for number in segments[row])
        for row, prompt in enumerate(prompts)
    ]
    width = max(widths)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(prompts), width), dtype=torch.long)
    # Segment of every position: 0 prompt, r + 1 completion r, -1 padding.
    segment = torch.full((len(prompts), width), -1, dtype=torch.long)
    longest = max(len(completion) for _, completion in completions)
    logit_positions = torch.zeros((len(completions), longest), dtype=torch.long)
    targets = torch.full((len(completions), longest), pad_id, dtype=torch.long)
    target_mask = torch.zeros((len(completions), longest), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        prompt_length = len(prompt)
        input_ids[row, :prompt_length] = torch.tensor(prompt, dtype=torch.long)
        position_ids[row, :prompt_length] = torch.arange(prompt_length)
        segment[row, :prompt_length] = 0
        start = prompt_length
        for number in segments[row]:
            completion = completions[number][1]
            end = start + len(completion)
            input_ids[row, start:end] = torch.tensor(completion, dtype=torch.long)
            position_ids[row, start:end] = torch.arange(
                prompt_length, prompt_length + len(completion)
            )
            segment[row, start:end] = number + 1
            # Token i of the completion is predicted by the prompt's last token (i = 0) or by
            # the completion's token i - 1.
            logit_positions[number, : len(completion)] = torch.tensor(
                [prompt_length - 1, *range(start, end - 1)], dtype=torch.long
            )
            targets[number, : len(completion)] = torch.tensor(completion, dtype=torch.long)
            target_mask[number, : len(completion)] = True
            start = end
    causal = torch.ones((width, width), dtype=torch.bool).tril()  # (T, T)
    same_segment = segment[:, :, None] == segment[:, None, :]  # (B, T, T)
    key_is_prompt = (segment == 0)[:, None, :]  # (B, 1, T)
    # Padding queries see their own segment (at least themselves), so no row is fully masked.
    attention_mask = (causal & (same_segment | key_is_prompt))[:, None]  # (B, 1, T, T)
    row_index = torch.tensor([prompt_index for prompt_index, _ in completions], dtype=torch.long)
    return SharedPromptBatch(
        input_ids, attention_mask, position_ids, row_index, logit_positions, targets, target_mask
    )


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


def _custom_attention_mask(model: nn.Module, allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """``allowed`` as the model's attention implementation takes a ready 4D mask."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
    if implementation.startswith("flash"):
        raise UserInputError(
            f"the shared-prompt pass needs a 4D attention mask, which {implementation!r} does not "
            "take; load the model with attn_implementation='sdpa' or turn shared_prompt off"
        )
    if implementation == "eager":  # eager attention adds the mask to the scores
        blocked = torch.full(
            allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=allowed.device
        )
        return blocked.masked_fill(allowed, 0.0)
    return allowed


def shared_prompt_logps(model: nn.Module, batch: SharedPromptBatch) -> tuple[Tensor, Tensor]:
    """(R,) summed completion log-probs and (R,) lengths, running each prompt once."""
    # The first scored position is the last token of the shortest prompt.
    first_scored = int(batch.logit_positions[:, 0].min().item())
    keep = batch.input_ids.shape[1] - first_scored
    parameter = next(model.parameters())
    logits = _forward_logits(
        model,
        keep,
        input_ids=batch.input_ids,
        attention_mask=_custom_attention_mask(model, batch.attention_mask, parameter.dtype),
        position_ids=batch.position_ids,
        use_cache=False,
    )  # (B, keep, V)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_normalizer = torch.logsumexp(logits, dim=-1)  # (B, keep)
    rows = batch.row_index[:, None]  # (R, 1)
    positions = (batch.logit_positions - first_scored).clamp(min=0)  # (R, C)
    per_token = logits[rows, positions, batch.targets] - log_normalizer[rows, positions]  # (R, C)
    mask = batch.target_mask
    return (per_token * mask).sum(dim=-1), mask.sum(dim=-1)
