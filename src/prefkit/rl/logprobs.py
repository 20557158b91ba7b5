"""Per-token completion log-probs (and entropies) of a causal LM, completion-aligned.

Online RL needs one log-prob per completion token, not the per-sequence sum of
:mod:`prefkit.align.logprobs`. Rows are ``prompt + completion``, right-padded
(:func:`~prefkit.align.logprobs.pack_sequences`), so every real token sits at
the positions it has when scored alone and padding is only ever to its right,
where the causal mask keeps it from the real tokens. The result is
completion-aligned: column ``j`` of row ``r`` is the ``j``-th completion token
of that row, whatever the length of its prompt, and ``mask`` is false past the
completion's end and nowhere else, so prompt and padding tokens never reach a
loss or a KL. The shared-prompt layout (the G samples of a prompt packed after
one copy of it, :class:`~prefkit.align.logprobs.SharedPromptBatch`) gives the same
completion-aligned result with each prompt run once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefkit.align.logprobs import (
    _custom_attention_mask,
    _forward_logits,
    pack_sequences,
    pack_shared_prompts,
)

__all__ = ["TokenLogps", "completion_token_logps"]


@dataclass
class TokenLogps:
    """Log-probs of R completions, one column per completion token."""

    logps: Tensor
    """(R, C) log p(completion token | prompt, earlier tokens); 0 where ``mask`` is false."""
    mask: Tensor
    """(R, C) bool, True on the completion's tokens."""
    entropy: Tensor | None
    """(R, C) detached entropy of the next-token distribution at each completion token, or None."""


def completion_token_logps(
    model: nn.Module,
    rows: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_id: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    shared_prompt: bool = False,
) -> TokenLogps:
    """Per-token log-probs of ``(prompt_ids, completion_ids)`` rows, in one forward pass.

    The logits are divided by ``temperature`` first, so the log-probs are those of
    the distribution the completions were sampled from (as TRL's GRPOTrainer).
    Every completion needs at least one token. Only the logits from the shortest
    prompt's last token on are computed (``logits_to_keep``).

    With ``shared_prompt``, rows with the same prompt are packed into one row, the
    prompt once and each completion after it
    (:func:`~prefkit.align.logprobs.pack_shared_prompts`: a 4D attention mask, so
    it needs sdpa or eager attention), which runs each prompt through the model
    once instead of once per sample; the values are those of the plain layout
    (tested, gradients included). Rows whose prompts are all distinct take the
    plain layout.
    """
    if any(not completion for _, completion in rows):
        raise ValueError("completion_token_logps: every completion needs at least one token")
    device = next(model.parameters()).device
    if shared_prompt:
        prompt_numbers: dict[tuple[int, ...], int] = {}
        numbered = [
            (prompt_numbers.setdefault(tuple(prompt), len(prompt_numbers)), completion)
            for prompt, completion in rows
        ]
        if len(prompt_numbers) < len(rows):
            picked, targets, mask = _shared_prompt_logits(
                model, list(prompt_numbers), numbered, pad_id, device
            )
            return _token_logps(picked, targets, mask, temperature, with_entropy)
    batch = pack_sequences(rows, pad_id)
    first_scored = int(batch.prompt_lengths.min().item())
    keep = batch.input_ids.shape[1] - first_scored + 1
    logits = _forward_logits(
        model,
        keep,
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        use_cache=False,
    )[:, :-1]  # (R, keep - 1, V): position t predicts token first_scored + t
    lengths = torch.tensor([len(completion) for _, completion in rows], device=device)
    width = int(lengths.max().item())
    columns = torch.arange(width, device=device)
    mask = columns[None, :] < lengths[:, None]  # (R, C)
    # Column j of row r is predicted by the logits at prompt_length_r - 1 + j.
    offsets = (batch.prompt_lengths.to(device) - first_scored)[:, None] + columns[None, :]
    offsets = torch.where(mask, offsets, torch.zeros_like(offsets))  # (R, C)
    picked = torch.gather(logits, 1, offsets[..., None].expand(-1, -1, logits.shape[-1]))
    targets = torch.gather(batch.input_ids.to(device), 1, (offsets + first_scored))  # (R, C)
    return _token_logps(picked, targets, mask, temperature, with_entropy)


def _shared_prompt_logits(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[tuple[int, Sequence[int]]],
    pad_id: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """(R, C, V) logits predicting each completion token, (R, C) targets and (R, C) mask, from
    one forward pass over the prompts with their completions packed after them."""
    batch = pack_shared_prompts(prompts, completions, pad_id)
    first_scored = int(batch.logit_positions[:, 0].min().item())  # the shortest prompt's end
    keep = batch.input_ids.shape[1] - first_scored
    parameter = next(model.parameters())
    allowed = batch.attention_mask.to(device)  # (B, 1, T, T)
    logits = _forward_logits(
        model,
        keep,
        input_ids=batch.input_ids.to(device),
        attention_mask=_custom_attention_mask(model, allowed, parameter.dtype),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
    )  # (B, keep, V): position t is row position first_scored + t
    positions = (batch.logit_positions.to(device) - first_scored).clamp(min=0)  # (R, C)
    picked = logits[batch.row_index.to(device)[:, None], positions]  # (R, C, V)
    return picked, batch.targets.to(device), batch.target_mask.to(device)


def _token_logps(
    picked: Tensor, targets: Tensor, mask: Tensor, temperature: float, with_entropy: bool
) -> TokenLogps:
    """Log-probs (and entropies) of ``targets`` from the (R, C, V) logits that predict them."""
    if picked.dtype in (torch.float16, torch.bfloat16):
        picked = picked.float()
    if temperature != 1.0:
        picked = picked / temperature
    log_normalizer = torch.logsumexp(picked, dim=-1)  # (R, C)
    logps = torch.gather(picked, -1, targets[..., None]).squeeze(-1) - log_normalizer
    logps = torch.where(mask, logps, torch.zeros_like(logps))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probabilities = torch.softmax(picked.detach(), dim=-1)
            entropy = log_normalizer.detach() - (probabilities * picked.detach()).sum(-1)
            entropy = torch.where(mask, entropy, torch.zeros_like(entropy))
    return TokenLogps(logps, mask, entropy)
