"""Sharded outputs (``--out-shards DIR``): one output file per input shard.

Each input data file gets its own output file in DIR, named after it: its path under
the input folder (or its name, for one file), its data suffix replaced by the output's
(``part-00003.jsonl`` -> ``DIR/part-00003.jsonl``, ``nested/b.csv`` ->
``DIR/nested/b.parquet`` with ``--shard-format parquet``). The chunks come in input
order, so each file holds its shard's records in their input order and the files are
written one after the other, each under a temporary name (``NAME.partial``) until its
shard's last chunk is written and then renamed into place: a file under its final name
is always complete. The concatenation of the files in input order is the single
``--out`` file, record for record.

What goes beside the shards (the rejects file and such) is named after DIR as it would
be after ``--out``: ``DIR.rejects.jsonl`` next to DIR, not inside it, so that DIR holds
the data files only and can be read back as a folder of shards.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prefkit.data.sources import list_data_files, suffix_of
from prefkit.engines.ray_read import Chunk, Shard
from prefkit.errors import UserInputError

SHARD_FORMATS = ("jsonl", "jsonl.gz", "parquet")
"""The values of ``--shard-format``."""


def shard_output_paths(shards: list[Shard], folder: str | Path, shard_format: str) -> list[Path]:
    """The output file of each shard under ``folder`` (see the module), checked: two
    shards may not give one name, an output may not be an input, and ``folder`` may hold
    no other data files (an earlier run's shards would read as part of this one's)."""
    if shard_format not in SHARD_FORMATS:
        raise UserInputError(f"--shard-format must be one of {', '.join(SHARD_FORMATS)}")
    folder = Path(folder)
    paths = []
    for shard in shards:
        source = Path(shard.path)
        relative = source.relative_to(shard.folder) if shard.folder is not None else source.name
        relative = Path(relative)
        stem = relative.name[: len(relative.name) - len(suffix_of(relative))]
        paths.append(folder / relative.with_name(f"{stem}.{shard_format}"))
    by_name: dict[Path, Shard] = {}
    for shard, path in zip(shards, paths, strict=True):
        if path in by_name:
            raise UserInputError(
                f"--out-shards: {by_name[path].path} and {shard.path} would both be written to "
                f"{path}; rename one of them"
            )
        by_name[path] = shard
    inputs = {Path(shard.path).resolve() for shard in shards}
    for path in paths:
        if path.resolve() in inputs:
            raise UserInputError(
                f"--out-shards {folder}: {path} is an input shard; write to another folder"
            )
    inside = [
        shard.folder
        for shard in shards
        if shard.folder is not None
        and folder.resolve().is_relative_to(Path(shard.folder).resolve())
    ]
    if inside:
        raise UserInputError(
            f"--out-shards {folder} is inside the input folder {inside[0]}: the next read of "
            "that folder would take the outputs for inputs; write to a folder outside it"
        )
    if folder.is_dir():
        targets = {path.resolve() for path in paths}
        stale = [path for path in list_data_files(folder) if path.resolve() not in targets]
        if stale:
            names = ", ".join(str(path) for path in stale[:3])
            raise UserInputError(
                f"--out-shards {folder} holds data files this run does not write ({names}"
                f"{', ...' if len(stale) > 3 else ''}); empty it or choose another folder"
            )
    elif folder.exists():
        raise UserInputError(f"--out-shards {folder} is a file; give a folder")
    return paths


def write_shards(
    chunks: Iterable[Chunk],
    paths: list[Path],
    write: Callable[[Iterator[Chunk], Path], int],
) -> int:
    """Write each shard's chunks (``chunks`` in input order) with ``write(chunks, path)``,
    which writes the file atomically, after removing what an earlier run left under these
    names; gives the number of rows written."""
    written = 0
    for index, (shard, group) in enumerate(
        itertools.groupby(chunks, key=lambda chunk: chunk.shard)
    ):
        if index == 0:
            # An earlier run's files go once this run has its first chunk, so the folder
            # never mixes two runs' shards (a rerun that fails midway leaves fewer files,
            # every one of them this run's).
            for path in paths:
                path.unlink(missing_ok=True)
        written += write(group, paths[shard])
    return written


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """JSON lines to ``path``, under ``NAME.partial`` until the last one is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    count = 0
    try:
        with partial.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return count
