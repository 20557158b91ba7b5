"""``prefkit rm score --engine ray``: the local engine's scoring, mapped over Ray Data.

The pipeline, one Ray Data dataset:

1. **shards**: the input's data files, one row each: a file is one shard; a folder's
   data files (sorted, as the local read takes them) or a glob's matches (sorted) are
   one shard each.
2. **read** (Ray tasks): each shard is read by prefkit's own
   :class:`~prefkit.data.read.FeedbackReader`, as one part of the whole read (the same
   layout, the same row tags), and cut into chunks of ``chunk_size`` records. A chunk
   carries its records and the rejects met while reading them; a shard's last chunk
   carries its read counts. Ray Data's ``read_json``/``read_parquet`` are not used: Arrow's
   readers stop at the first malformed line and know no line numbers, so the reject
   files and counts could not be the local engine's.
3. **score** (an actor pool, ``map_batches`` on a class): each actor loads the reward
   model once and scores one chunk per call with :func:`~prefkit.rm.scoring.score_chunk`.
   An actor that dies is restarted and its chunks are run again
   (:func:`~prefkit.engines.ray_pool.map_on_actors`): a chunk's rows are only ever taken
   from its one finished call.
4. **write** (this process): chunks are put back in input order (shard, then chunk) by
   :class:`~prefkit.engines.ray_pool.ChunkOrder`, which also refuses a chunk seen twice
   and a run that ends with one missing; the caller writes the rows with prefkit's writer, and the rejects are
   written to the rejects file in reading order.

So the output holds the local engine's rows, in input order (the files in sorted order,
each file's records in its order), and the rejects file and counts are the local
engine's. ``ray`` is imported only when a run starts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefkit.data.corpora import Collection
from prefkit.data.errors import DataError, Rejects, _jsonable
from prefkit.data.read import FeedbackReader, ReadStats
from prefkit.data.records import AnyRecord
from prefkit.data.sources import is_hf_dataset_folder, list_data_files
from prefkit.engines.ray_pool import (
    ChunkOrder,
    iter_chunks,
    map_on_actors,
    ordered_data_context,
)
from prefkit.engines.ray_runtime import RayOptions, ray_runtime
from prefkit.errors import UserInputError
from prefkit.rm.scoring import ScoredChunk
from prefkit.rm.spec import RewardModelSpec


@dataclasses.dataclass(frozen=True)
class Shard:
    """One data file of the input and how to read it as a part of the whole read."""

    index: int
    """Its place in the input (files in sorted order)."""
    path: str
    """The file."""
    folder: str | None
    """The folder read in parts (a folder input, or the folder a glob starts from); None
    when the input is this one file."""


@dataclasses.dataclass
class Chunk:
    """Up to ``chunk_size`` records of one shard, what passes between the stages."""

    shard: int
    index: int
    """Its place in the shard."""
    records: list[AnyRecord]
    rejects: list[dict[str, Any]]
    """The bad rows met while reading these records (:func:`error_fields`), in order."""
    last: bool = False
    """The shard's last chunk; it carries ``stats``."""
    stats: dict[str, Any] | None = None
    """The shard's read counts (:func:`stats_fields`), on its last chunk."""
    error: dict[str, Any] | None = None
    """The error that stopped the shard's read (``on_error="raise"``), on its last chunk."""
    scored: ScoredChunk | None = None
    """Filled in by the scoring actor."""


def error_fields(error: DataError) -> dict[str, Any]:
    """A :class:`DataError` as plain values (its raw row as the rejects file writes it)."""
    fields = {
        item.name: getattr(error, item.name) for item in dataclasses.fields(error) if item.init
    }
    fields["raw"] = _jsonable(error.raw)
    return fields


def stats_fields(stats: ReadStats) -> dict[str, Any]:
    """What a shard's read counted, beside its rejects (those travel in the chunks)."""
    return {
        "n_rows": stats.n_rows,
        "n_records": stats.n_records,
        "n_empty_responses": stats.n_empty_responses,
        "kinds": dict(stats.kinds),
        "dropped": dict(stats.dropped),
    }


class _ChunkRejects(Rejects):
    """A rejects ledger that also hands each reject to the chunk being read."""

    def __init__(self) -> None:
        super().__init__(path=None)
        self.pending: list[dict[str, Any]] = []

    def add(self, error: DataError) -> None:
        super().add(error)
        self.pending.append(error_fields(error))

    def take(self) -> list[dict[str, Any]]:
        taken, self.pending = self.pending, []
        return taken


def read_shard(
    shard: Shard, reader_options: dict[str, Any], layout: Any, chunk_size: int
) -> Iterator[Chunk]:
    """The records of ``shard`` in chunks, read as the local engine reads them."""
    if shard.folder is None:
        reader = FeedbackReader(shard.path, **reader_options, layout=layout)
    else:
        reader = FeedbackReader(shard.folder, **reader_options, files=[shard.path], layout=layout)
    rejects = _ChunkRejects()
    reader.stats.rejects = rejects
    index = 0
    records: list[AnyRecord] = []
    error: DataError | None = None
    try:
        for record in reader:
            records.append(record)
            if len(records) >= chunk_size:
                yield Chunk(shard.index, index, records, rejects.take())
                index += 1
                records = []
    except DataError as stop:  # on_error="raise": the local engine stops here too
        error = stop
    yield Chunk(
        shard.index,
        index,
        records,
        rejects.take(),
        last=True,
        stats=stats_fields(reader.stats),
        error=None if error is None else error_fields(error),
    )


def input_shards(data: str | Path) -> list[Shard]:
    """The shards of ``data``: a file; a folder's data files; a glob's matches."""
    reader = FeedbackReader(data)  # resolves a glob, as every command does
    if reader.files is not None:
        folder = str(reader.path)
        return [Shard(i, str(path), folder) for i, path in enumerate(reader.files)]
    path = Path(data)
    if path.is_file():
        return [Shard(0, str(path), None)]
    if path.is_dir():
        if is_hf_dataset_folder(path) or isinstance(reader.layout, Collection):
            raise UserInputError(
                f"{path}: --engine ray reads JSONL, Parquet or CSV shards; this folder is read "
                "as one data set. Convert it first (prefkit data convert IN OUT.parquet) or "
                "use --engine local"
            )
        files = list_data_files(path)
        if not files:
            raise DataError(
                str(path), None, None, "the folder holds no data files", reason="no_data"
            )
        return [Shard(i, str(file), str(path)) for i, file in enumerate(files)]
    raise DataError(
        str(path),
        None,
        None,
        "no such file, folder or pattern",
        reason="not_found",
        hint="--engine ray reads local or shared files (a Hub name needs --engine local)",
    )


class _ScoreActor:
    """A Ray Data actor: loads the reward model once, then scores one chunk per call."""

    def __init__(
        self,
        model_dir: str,
        cache_dir: str | None,
        batch_size: int,
        normalize: bool,
        scoring: dict[str, Any] | None,
    ):
        from prefkit.rm.model import RewardModel

        self.model = RewardModel.load(model_dir, cache_dir=cache_dir)
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
            chunks.append(dataclasses.replace(chunk, records=[], scored=scored))
        return {"chunk": np.array(chunks, dtype=object)}


def _read_batch(
    batch: dict[str, Any], reader_options: dict[str, Any], layout: Any, chunk_size: int
) -> Iterator[dict[str, Any]]:
    """The read stage: a batch of shard rows in, their chunks out, one at a time."""
    import numpy as np

    for index, path, folder in zip(batch["index"], batch["path"], batch["folder"], strict=True):
        shard = Shard(int(index), str(path), None if folder == "" else str(folder))
        for chunk in read_shard(shard, reader_options, layout, chunk_size):
            yield {"chunk": np.array([chunk], dtype=object)}


class RayScoring:
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
        self.data = data
        self.model_dir = str(Path(model_dir).resolve())
        self.cache_dir = None if cache_dir is None else str(Path(cache_dir).resolve())
        self.reader_options = reader_options
        self.options = options
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.normalize = normalize
        self.scoring = scoring
        self.shards = input_shards(data)
        self.stats = ReadStats(rejects=Rejects(rejects_path))
        self.layout, self.detected = self._find_layout()
        # One file is read by one reader, which finds the layout itself (the local
        # engine's read, fast path included); the shards of a folder read with the layout
        # of the whole read, as the local engine reads them one after the other.
        self._shard_layout = (
            None if len(self.shards) == 1 and self.shards[0].folder is None else self.layout
        )

    def _find_layout(self) -> tuple[Any, bool]:
        """The layout of the whole read as the local engine finds it: from the first
        readable row (whatever follows is read again by the shards)."""
        reader = FeedbackReader(self.data, **{**self.reader_options, "on_error": "skip"})
        for _ in reader:
            break
        reader.stats.rejects.close()
        return reader.layout, reader.detected

    def __iter__(self) -> Iterator[ScoredChunk]:
        import ray

        with ray_runtime(self.options) as cluster_cpus:
            workers = self.options.actor_count(cluster_cpus)
            dataset = self._dataset(ray, workers)
            order = ChunkOrder(len(self.shards))
            try:
                for arrived in iter_chunks(dataset):
                    for chunk in order.add(arrived):
                        yield self._take(chunk)
                order.finish()
            finally:
                self.stats.rejects.close()

    def _take(self, chunk: Chunk) -> ScoredChunk:
        """Count a chunk in order: its rejects into the ledger and file, its shard's stats."""
        for fields in chunk.rejects:
            self.stats.rejects.add(DataError(**fields))
        if chunk.stats is not None:
            self.stats.n_rows += chunk.stats["n_rows"]
            self.stats.n_records += chunk.stats["n_records"]
            self.stats.n_empty_responses += chunk.stats["n_empty_responses"]
            self.stats.kinds.update(Counter(chunk.stats["kinds"]))
            self.stats.dropped.update(Counter(chunk.stats["dropped"]))
        if chunk.error is not None:
            raise DataError(**chunk.error)
        assert chunk.scored is not None
        return chunk.scored

    def _dataset(self, ray: Any, workers: int) -> Any:
        with ordered_data_context(ray):
            shards = ray.data.from_items(
                [
                    {"index": shard.index, "path": shard.path, "folder": shard.folder or ""}
                    for shard in self.shards
                ],
                override_num_blocks=len(self.shards),
            )
            chunks = shards.map_batches(
                _read_batch,
                batch_size=1,
                fn_kwargs={
                    "reader_options": self.reader_options,
                    "layout": self._shard_layout,
                    "chunk_size": self.chunk_size,
                },
                # Reading is light beside scoring: it takes no CPU from the actors.
                num_cpus=0,
                compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(self.shards)))),
            )
            return map_on_actors(
                ray,
                chunks,
                _ScoreActor,
                {
                    "model_dir": self.model_dir,
                    "cache_dir": self.cache_dir,
                    "batch_size": self.batch_size,
                    "normalize": self.normalize,
                    "scoring": self.scoring,
                },
                self.options,
                workers,
            )
