"""``prefkit rm score --engine ray``: the local engine's scoring, mapped over Ray Data.

The read stage, the order and the counting are :mod:`prefkit.engines.ray_read`'s (a Ray
task reads each data file with prefkit's reader and cuts it into chunks of
``chunk_size`` records); here each actor of the pool loads the reward model once and
scores one chunk per call with :func:`~prefkit.rm.scoring.score_chunk`. An actor that
dies is restarted and its chunks are run again.

So the output holds the local engine's rows, in input order (the files in sorted order,
each file's records in its order), and the rejects file and counts are the local
engine's. ``ray`` is imported only when a run starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prefkit.engines.ray_pool import check_actor_device
from prefkit.engines.ray_read import Chunk, RayRecordRun
from prefkit.engines.ray_runtime import RayOptions
from prefkit.errors import UserInputError
from prefkit.rm.scoring import ScoredChunk
from prefkit.rm.spec import RewardModelSpec


class _ScoreActor:
    """A Ray Data actor: loads the reward model once, then scores one chunk per call."""

    def __init__(
        self,
        model_dir: str,
        cache_dir: str | None,
        batch_size: int,
        normalize: bool,
        scoring: dict[str, Any] | None,
        device: str,
    ):
        from prefkit.rm.model import RewardModel

        check_actor_device(device)
        self.model = RewardModel.load(model_dir, device=device, cache_dir=cache_dir)
        self.batch_size = batch_size
        self.normalize = normalize
        self.scoring = scoring

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from prefkit.rm.scoring import score_chunk

        chunks = []
        for chunk in batch["chunk"]:
            if chunk.records:
                scored = score_chunk(
                    self.model,
                    chunk.records,
                    batch_size=self.batch_size,
                    normalize=self.normalize,
                    scoring=self.scoring,
                )
            else:
                scored = ScoredChunk([], [] if self.scoring is not None else None)
            # The scored records replace the read ones: only one copy travels back.
            chunks.append(dataclasses.replace(chunk, records=[], result=scored))
        return {"chunk": np.array(chunks, dtype=object)}


class RayScoring(RayRecordRun):
    """``rm score`` on Ray: iterate for the scored chunks in input order.

    Args:
        data: a file, a folder of data files, or a glob (quoted: ``'shards/*.jsonl'``).
        model_dir: the reward model; every node of a cluster must be able to read it.
        reader_options: :class:`~prefkit.data.read.FeedbackReader` options (format,
            mapping, winner_values, on_error, max_text_chars, reject_empty_responses).
        rejects_path: where the bad rows go (``on_error="skip"``), as the local engine's.
        options: where to run and how many actors.
        scoring: the reward model's name and settings to fill the records in with
            (``--records``); None gives reward rows only.

    After the iteration, ``stats`` holds the whole read's counts (the local engine's
    :class:`~prefkit.data.read.ReadStats`), and ``layout``/``detected`` the layout used.
    """

    def __init__(
        self,
        data: str | Path,
        model_dir: str | Path,
        *,
        reader_options: dict[str, Any],
        rejects_path: Path | None,
        options: RayOptions,
        batch_size: int = 64,
        chunk_size: int = 2048,
        normalize: bool = False,
        scoring: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ):
        if batch_size < 1 or chunk_size < 1:
            raise UserInputError("--batch-size and --chunk-size must be >= 1")
        RewardModelSpec.read(model_dir)  # a wrong folder is an error here, not in each actor
        self.model_dir = str(Path(model_dir).resolve())
        self.cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
        self.batch_size = batch_size
        self.normalize = normalize
        self.scoring = scoring
        super().__init__(
            data,
            reader_options=reader_options,
            rejects_path=rejects_path,
            options=options,
            chunk_size=chunk_size,
        )

    def chunks(self) -> Iterator[Chunk]:
        """The chunks in input order, each with its shard and its :class:`ScoredChunk`
        as ``result``."""
        kwargs = {
            "model_dir": self.model_dir,
            "cache_dir": self.cache_dir,
            "batch_size": self.batch_size,
            "normalize": self.normalize,
            "scoring": self.scoring,
            "device": self.options.device,
        }
        return self.ordered_chunks(_ScoreActor, lambda ray: kwargs)

    def __iter__(self) -> Iterator[ScoredChunk]:
        for chunk in self.chunks():
            yield chunk.result


def write_scored_shards(chunks: Iterable[Chunk], paths: list[Path], *, records: bool) -> int:
    """Each shard's scored chunks (``chunks`` in input order, from
    :meth:`RayScoring.chunks`) in its file of ``paths``: reward rows (JSONL) or, with
    ``records``, the scored records; gives the number written."""
    from prefkit.data.write import write_records
    from prefkit.engines.shard_output import write_rows, write_shards

    def write(shard_chunks: Iterator[Chunk], path: Path) -> int:
        if records:
            return write_records((r for chunk in shard_chunks for r in chunk.result.records), path)
        return write_rows((row for chunk in shard_chunks for row in chunk.result.rows), path)

    return write_shards(chunks, paths, write)
