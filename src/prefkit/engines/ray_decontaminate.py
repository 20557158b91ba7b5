"""``prefkit curate decontaminate --engine ray``: the local engine's check, on Ray actors.

1. **index** (this process): the evaluation sets are read and indexed once
   (:func:`~prefkit.curate.decontaminate.build_index`), put in Ray's object store once
   (``ray.put``) and given to every actor as a constructor argument: each actor fetches
   that one copy, none reads the evaluation files.
2. **read** (Ray tasks, :mod:`prefkit.engines.ray_read`): each training data file is read
   with prefkit's reader, in chunks of ``chunk_size`` records, with the local engine's
   rejects and counts.
3. **check** (an actor pool): each actor finds every chunk record's matches with
   :func:`~prefkit.curate.decontaminate.find_matches`, the local engine's own function.
   An actor that dies is restarted and its chunks run again.
4. **count and write** (this process): the chunks come back in input order, and
   :class:`~prefkit.curate.decontaminate.Decontamination` counts each record, writes its
   flagged rows and keeps it or not, exactly as the local engine does record by record.

So the kept records, the flagged file and the report are the local engine's, in input
order (the files in sorted order, each file's records in its order). ``ray`` is imported
only when a run starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prefkit.curate.decontaminate import Decontamination, EvalIndex, Match
from prefkit.data.records import AnyRecord
from prefkit.data.write import write_records
from prefkit.engines.ray_read import Chunk, RayRecordRun
from prefkit.engines.ray_runtime import RayOptions
from prefkit.engines.shard_output import write_shards


class _DecontaminateActor:
    """A Ray Data actor: fetches the shared index once, then checks one chunk per call."""

    def __init__(self, index: Any):
        import ray

        # The index arrives as the reference to its one copy in the object store.
        self.index: EvalIndex = ray.get(index) if isinstance(index, ray.ObjectRef) else index

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from prefkit.curate.decontaminate import find_matches

        chunks = [
            dataclasses.replace(
                chunk, result=[find_matches(self.index, record) for record in chunk.records]
            )
            for chunk in batch["chunk"]
        ]
        return {"chunk": np.array(chunks, dtype=object)}


class RayDecontamination(RayRecordRun):
    """``curate decontaminate`` on Ray: iterate for each chunk's records and matches, in
    input order (``chunk.records`` and ``chunk.result``, one match list per record).

    Args:
        data: the training data: a file, a folder of data files, or a glob.
        index: the evaluation sets' index, built in this process.
        reader_options, rejects_path, options, chunk_size: as
            :class:`~prefkit.engines.ray_read.RayRecordRun`.
    """

    def __init__(
        self,
        data: str | Path,
        index: EvalIndex,
        *,
        reader_options: dict[str, Any],
        rejects_path: Path | None,
        options: RayOptions,
        chunk_size: int = 2048,
    ):
        self.index = index
        super().__init__(
            data,
            reader_options=reader_options,
            rejects_path=rejects_path,
            options=options,
            chunk_size=chunk_size,
        )

    def chunks(self) -> Iterator[Chunk]:
        return self.ordered_chunks(_DecontaminateActor, lambda ray: {"index": ray.put(self.index)})

    def __iter__(self) -> Iterator[tuple[AnyRecord, list[Match]]]:
        """Every training record with its matches, in input order."""
        for chunk in self.chunks():
            yield from zip(chunk.records, chunk.result, strict=True)


def write_clean(
    chunks: Iterable[Chunk],
    tally: Decontamination,
    *,
    out: str | Path | None = None,
    shard_paths: list[Path] | None = None,
) -> None:
    """Count the checked ``chunks`` (in input order) with ``tally`` and write the records
    it keeps to ``out``, or each shard's to its file of ``shard_paths``
    (:func:`~prefkit.engines.shard_output.write_shards`); closes ``tally``'s flagged file."""

    def kept(shard_chunks: Iterable[Chunk]) -> Iterator[AnyRecord]:
        for chunk in shard_chunks:
            for record, matches in zip(chunk.records, chunk.result, strict=True):
                if tally.keep(record, matches):
                    yield record

    try:
        if shard_paths is None:
            assert out is not None
            write_records(kept(chunks), out)
        else:
            write_shards(chunks, shard_paths, lambda group, path: write_records(kept(group), path))
    finally:
        tally.close()
