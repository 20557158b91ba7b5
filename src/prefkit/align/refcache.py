"""Reference log-probs computed once and cached on disk.

Reference-based losses need log pi_ref of every completion. The reference is
frozen, so these numbers depend only on the reference weights and the token
ids; they are computed once, before training, and stored as a safetensors file
named by a SHA-256 key over

- the reference weights (every tensor's name, dtype, shape and bytes),
- the token ids of every (prompt, completion) row, which already reflect the
  data, the tokenizer, the chat template and the truncation settings,
- the format version of this cache.

A second run on the same data with the same reference (another loss, another
learning rate, a resumed run) reads the file instead of recomputing. Writes are
atomic (temporary file, then rename), so processes that compute the same entry
at the same time leave one good file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from prefkit.align.logprobs import (
    pack_sequences,
    pack_shared_prompts,
    sequence_logps,
    shared_prompt_logps,
)
from prefkit.train.loop import move_to_device

__all__ = [
    "compute_reference_logps",
    "default_cache_dir",
    "reference_cache_key",
    "cached_reference_logps",
    "weights_digest",
]

_FORMAT_VERSION = 1
Row = tuple[Sequence[int], Sequence[int]]


def default_cache_dir() -> Path:
    """``$PREFKIT_CACHE/ref-logps``, or ``~/.cache/prefkit/ref-logps``."""
    root = os.environ.get("PREFKIT_CACHE") or Path.home() / ".cache" / "prefkit"
    return Path(root) / "ref-logps"


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer of ``model`` (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def reference_cache_key(reference_digest: str, rows: Sequence[Row]) -> str:
    """The cache key of ``rows`` scored by the reference with ``reference_digest``."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": _FORMAT_VERSION, "reference": reference_digest}).encode())
    for prompt, completion in rows:
        digest.update(json.dumps([list(prompt), list(completion)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def compute_reference_logps(
    model: nn.Module,
    rows: Sequence[Row],
    *,
    pad_id: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    shared_prompt: bool = False,
) -> Tensor:
    """(R,) summed completion log-probs of ``rows`` under ``model`` in eval mode, float32.

    Rows are scored longest first, about ``batch_size`` completions per forward pass
    (little padding). With ``shared_prompt``, consecutive rows with the same prompt
    are packed into one row (:func:`~prefkit.align.logprobs.pack_shared_prompts`),
    so each prompt is run once; the values are the same up to float rounding.
    """
    groups: list[list[int]] = []  # row numbers that share one packed row
    for number, (prompt, _) in enumerate(rows):
        if shared_prompt and groups and rows[groups[-1][0]][0] == prompt:
            groups[-1].append(number)
        else:
            groups.append([number])

    def width(group: list[int]) -> int:
        return len(rows[group[0]][0]) + sum(len(rows[number][1]) for number in group)

    groups.sort(key=lambda group: -width(group))
    was_training = model.training
    model.eval()
    logps = torch.empty(len(rows), dtype=torch.float32)
    target = torch.device(device)
    try:
        start = 0
        while start < len(groups):
            end, count = start, 0
            while end < len(groups) and (count == 0 or count + len(groups[end]) <= batch_size):
                count += len(groups[end])
                end += 1
            chunk = groups[start:end]
            numbers = [number for group in chunk for number in group]
            with torch.inference_mode():
                if shared_prompt:
                    batch = pack_shared_prompts(
                        [rows[group[0]][0] for group in chunk],
                        [
                            (position, rows[number][1])
                            for position, group in enumerate(chunk)
                            for number in group
                        ],
                        pad_id,
                    )
                    chunk_logps, _ = shared_prompt_logps(model, move_to_device(batch, target))
                else:
                    batch = pack_sequences([rows[number] for number in numbers], pad_id)
                    chunk_logps, _ = sequence_logps(model, move_to_device(batch, target))
            logps[numbers] = chunk_logps.float().cpu()
            start = end
    finally:
        model.train(was_training)
    return logps


def cached_reference_logps(
    compute: Callable[[], Tensor],
    key: str,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[Tensor, bool]:
    """``(logps, was_cached)``: the file for ``key`` under ``cache_dir``, or ``compute()`` stored there.

    With ``cache_dir=None`` nothing is read or written.
    """
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["ref_logps"], True
    logps = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file({"ref_logps": logps.contiguous()}, temporary, metadata={"key": key})
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return logps, False
