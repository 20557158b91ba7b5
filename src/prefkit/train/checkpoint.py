"""Checkpoints of the training loop: safetensors and JSON, written atomically.

Layout of one checkpoint (``N`` is the global optimizer step)::

    checkpoints/step-N/
        model.safetensors          trainable parameters and the model's buffers
        best_model.safetensors     the best weights so far, when early stopping
                                   tracks them and they are not the current ones
        optimizer.safetensors      every tensor of the optimizer state
        optimizer.json             param groups and the non-tensor state values,
                                   pointing at tensors in optimizer.safetensors
        scheduler.json             the learning-rate scheduler's state_dict
        rng-rank-R.safetensors     RNG states of rank R: torch CPU and, on GPU,
                                   the CUDA generator of the rank's device (uint8
                                   tensors), Python ``random``, NumPy
        state.json                 loop position, early-stopping state, config
                                   and, for a task with state, that state under
                                   "task" (JSON); written last

Nothing is pickled: tensors are read back with safetensors and the rest with
``json``. A checkpoint is written into ``checkpoints/.step-N.partial`` and renamed
to ``step-N`` only once complete, so a process killed mid-write leaves at most a
``.partial`` folder that readers ignore. A ``step-N`` folder without
``state.json`` (which no complete write produces) is skipped with a warning.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prefkit.errors import UserInputError

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PARTIAL_DIR = re.compile(r"^\.step-(\d+)\.partial$")


@dataclass
class CheckpointContents:
    """What rank 0 writes; every field is plain tensors or JSON-ready values."""

    model: dict[str, torch.Tensor]
    """Trainable parameters and buffers, by name in ``model.state_dict()``."""
    best_model: dict[str, torch.Tensor] | None
    """Best weights kept by early stopping, or None when they are ``model``."""
    optimizer: dict[str, Any]
    """``optimizer.state_dict()``."""
    scheduler: dict[str, Any]
    """``scheduler.state_dict()``; must be JSON-serialisable."""
    state: dict[str, Any]
    """Loop position, early-stopping state, config and task state; JSON-serialisable."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (CPU tensors)."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    best_model: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    state: dict[str, Any]
    rng: tuple[dict[str, torch.Tensor], dict[str, str]] | None
    """This rank's RNG tensors and metadata, None when the file is absent
    (the checkpoint came from a run with fewer ranks)."""


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match is None or not path.is_dir():
            continue
        if not (path / "state.json").is_file():
            warnings.warn(
                f"Ignoring incomplete checkpoint {path}: it has no state.json "
                "(a write was interrupted). It is replaced if training reaches that step again.",
                stacklevel=2,
            )
            continue
        found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def write_checkpoint(
    root: Path,
    step: int,
    contents: CheckpointContents | None,
    *,
    rank: int,
    device: torch.device,
    barrier: Callable[[], None],
) -> Path:
    """Write ``root/step-{step}`` atomically; call on every rank.

    ``contents`` is needed on rank 0 only (pass None elsewhere); every rank adds
    its own RNG states (with the CUDA one of ``device`` when it is a GPU).
    ``barrier`` synchronises the ranks (a no-op for one).
    """
    final_dir = root / f"step-{step}"
    staging_dir = root / f".step-{step}.partial"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if staging_dir.exists():
            shutil.rmtree(staging_dir)
        staging_dir.mkdir()
    barrier()

    rng_tensors, rng_metadata = capture_rng_state(device)
    save_file(rng_tensors, staging_dir / f"rng-rank-{rank}.safetensors", metadata=rng_metadata)
    barrier()

    if rank == 0:
        if contents is None:
            raise ValueError("write_checkpoint: rank 0 must be given the checkpoint contents.")
        save_file(_cpu_contiguous(contents.model), staging_dir / "model.safetensors")
        if contents.best_model is not None:
            save_file(_cpu_contiguous(contents.best_model), staging_dir / "best_model.safetensors")
        optimizer_tensors, optimizer_json = split_optimizer_state(contents.optimizer)
        save_file(optimizer_tensors, staging_dir / "optimizer.safetensors")
        _write_json(staging_dir / "optimizer.json", optimizer_json)
        _write_json(staging_dir / "scheduler.json", contents.scheduler)
        state = {"format_version": FORMAT_VERSION, "step": step, **contents.state}
        _write_json(staging_dir / "state.json", state)  # last: marks the folder complete
        for path in staging_dir.iterdir():
            _fsync(path)
        if final_dir.exists():
            # Left by an earlier run that was not resumed from it (unreadable, or
            # incomplete); this write supersedes it.
            shutil.rmtree(final_dir)
        os.rename(staging_dir, final_dir)
        _fsync(root)
    barrier()
    return final_dir


def read_checkpoint(path: Path, rank: int) -> Checkpoint:
    """Read a complete checkpoint folder; raises if any part is missing or corrupt."""
    state = _read_json(path / "state.json")
    if state.get("format_version") != FORMAT_VERSION:
        raise UserInputError(
            f"{path / 'state.json'}: format_version is {state.get('format_version')!r}, "
            f"this prefkit reads version {FORMAT_VERSION}."
        )
    best_path = path / "best_model.safetensors"
    rng_path = path / f"rng-rank-{rank}.safetensors"
    rng = None
    if rng_path.is_file():
        rng = (load_file(rng_path), _safetensors_metadata(rng_path))
    return Checkpoint(
        path=path,
        step=int(state["step"]),
        model=load_file(path / "model.safetensors"),
        best_model=load_file(best_path) if best_path.is_file() else None,
        optimizer=join_optimizer_state(
            load_file(path / "optimizer.safetensors"), _read_json(path / "optimizer.json")
        ),
        scheduler=_read_json(path / "scheduler.json"),
        state=state,
        rng=rng,
    )


def read_latest_checkpoint(root: Path, rank: int) -> Checkpoint | None:
    """The newest checkpoint under ``root`` that reads back whole, or None.

    A newer checkpoint that fails to read is skipped with a warning naming it.
    """
    for path in reversed(complete_checkpoints(root)):
        try:
            return read_checkpoint(path, rank)
        except Exception as error:  # any unreadable part disqualifies the folder
            warnings.warn(
                f"Skipping unreadable checkpoint {path}: {type(error).__name__}: {error}. "
                "Trying the previous one.",
                stacklevel=2,
            )
    return None


def prune_checkpoints(root: Path, keep: int | None) -> None:
    """Delete all but the newest ``keep`` checkpoints (None keeps all), and any
    ``.partial`` folders left by interrupted writes. Call on rank 0 only."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if _PARTIAL_DIR.match(path.name) and path.is_dir():
            shutil.rmtree(path)
    if keep is None:
        return
    checkpoints = complete_checkpoints(root)
    for path in checkpoints[: max(len(checkpoints) - keep, 0)]:
        shutil.rmtree(path)


def split_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate an optimizer ``state_dict`` into safetensors tensors and JSON.

    In the JSON, each per-parameter state value is ``{"tensor": KEY}`` (KEY in
    the tensor file) or ``{"value": PLAIN_VALUE}``.
    """
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        entries: dict[str, Any] = {}
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                key = f"state/{param_id}/{name}"
                tensors[key] = value.detach().cpu().contiguous()
                entries[name] = {"tensor": key}
            else:
                entries[name] = {"value": value}
        state_json[str(param_id)] = entries
    return tensors, {"state": state_json, "param_groups": state_dict["param_groups"]}


def join_optimizer_state(
    tensors: dict[str, torch.Tensor], state_json: dict[str, Any]
) -> dict[str, Any]:
    """Inverse of :func:`split_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for param_id, entries in state_json["state"].items():
        state[int(param_id)] = {
            name: tensors[entry["tensor"]] if "tensor" in entry else entry["value"]
            for name, entry in entries.items()
        }
    # JSON turns tuples (AdamW's betas) into lists; optimizers expect tuples.
    param_groups = [
        {
            key: value if key == "params" or not isinstance(value, list) else tuple(value)
            for key, value in group.items()
        }
        for group in state_json["param_groups"]
    ]
    return {"state": state, "param_groups": param_groups}


def capture_rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states as safetensors tensors plus string metadata.

    Of the CUDA generators only that of ``device`` is taken: under torchrun each
    rank owns one GPU, and touching the others would create contexts on them.
    """
    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    python_version, python_state, python_gauss_next = random.getstate()
    tensors["python_random"] = torch.tensor(python_state, dtype=torch.int64)
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(numpy_keys.astype(np.int64))
    metadata = {
        "python_version": json.dumps(python_version),
        "python_gauss_next": json.dumps(python_gauss_next),
        "numpy": json.dumps(
            [numpy_name, int(numpy_pos), int(numpy_has_gauss), float(numpy_cached)]
        ),
    }
    return tensors, metadata


def restore_rng_state(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], device: torch.device
) -> None:
    """Set this process's RNGs (and the CUDA one of ``device``) from
    :func:`capture_rng_state` output."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors:
        if device.type == "cuda":
            torch.cuda.set_rng_state(tensors["torch_cuda"], device)
        else:
            warnings.warn(
                "The checkpoint was written while training on CUDA and training now runs on "
                f"{device}; random numbers (dropout) will not replay the earlier run exactly.",
                stacklevel=2,
            )
    python_state = tuple(int(value) for value in tensors["python_random"].tolist())
    random.setstate(
        (
            json.loads(metadata["python_version"]),
            python_state,
            json.loads(metadata["python_gauss_next"]),
        )
    )
    numpy_name, numpy_pos, numpy_has_gauss, numpy_cached = json.loads(metadata["numpy"])
    numpy_keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_cached))


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def _write_json(path: Path, value: Any) -> None:
    def refuse(obj: Any) -> Any:
        raise TypeError(
            f"{path.name}: cannot store a value of type {type(obj).__name__} ({obj!r}) as JSON; "
            "checkpoints hold only tensors and JSON values."
        )

    path.write_text(json.dumps(value, indent=1, default=refuse, allow_nan=True) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _safetensors_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _fsync(path: Path) -> None:
    """Flush a file or folder to disk, so a checkpoint survives a power loss too."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
