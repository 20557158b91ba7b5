"""The read stage every record-wise Ray command shares: shards, chunks, rejects, order.

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
3. **map** (an actor pool, :func:`~prefkit.engines.ray_pool.map_on_actors`): a command's
   actor class fills in each chunk's ``result``; an actor that dies is restarted and its
   chunks are run again, so a chunk's result is only ever taken from its one finished call.
4. **in order** (this process): :class:`RayRecordRun` puts the chunks back in input order
   (shard, then chunk) with :class:`~prefkit.engines.ray_pool.ChunkOrder`, which also
   refuses a chunk seen twice and a run that ends with one missing, and counts each
   chunk's rejects (into the rejects file, in reading order) and its shard's read counts
   as the local engine's :class:`~prefkit.data.read.ReadStats`.

``ray`` is imported only when a run starts.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefkit.data.corpora import Collection
from prefkit.data.errors import DataError, Rejects, _jsonable
from prefkit.data.read import FeedbackReader, ReadStats
from prefkit.data.records import AnyRecord
from prefkit.data.sources import is_hf_dataset_folder, list_data_files
from prefkit.engines.ray_pool import ChunkOrder, iter_chunks, map_on_actors, ordered_data_context
from prefkit.engines.ray_runtime import RayOptions, ray_runtime
from prefkit.errors import UserInputError


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
    result: Any = None
    """Filled in by the command's actor (scored records, matches found...)."""


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


def _read_batch(
    batch: dict[str, Any], reader_options: dict[str, Any], layout: Any, chunk_size: int
) -> Iterator[dict[str, Any]]:
    """The read stage: a batch of shard rows in, their chunks out, one at a time."""
    import numpy as np

    for index, path, folder in zip(batch["index"], batch["path"], batch["folder"], strict=True):
        shard = Shard(int(index), str(path), None if folder == "" else str(folder))
        for chunk in read_shard(shard, reader_options, layout, chunk_size):
            yield {"chunk": np.array([chunk], dtype=object)}


class RayRecordRun:
    """The records of ``data`` read on Ray, mapped by an actor class, back in input order.

    Args:
        data: a file, a folder of data files, or a glob (quoted: ``'shards/*.jsonl'``).
        reader_options: :class:`~prefkit.data.read.FeedbackReader` options (format,
            mapping, winner_values, on_error, max_text_chars, reject_empty_responses).
        rejects_path: where the bad rows go (``on_error="skip"``), as the local engine's.
        options: where to run and how many actors.
        chunk_size: records per chunk (one actor call).

    After a run, ``stats`` holds the whole read's counts (the local engine's
    :class:`~prefkit.data.read.ReadStats`), and ``layout``/``detected`` the layout used.
    """

    def __init__(
        self,
        data: str | Path,
        *,
        reader_options: dict[str, Any],
        rejects_path: Path | None,
        options: RayOptions,
        chunk_size: int = 2048,
    ):
        if chunk_size < 1:
            raise UserInputError("--chunk-size must be >= 1")
        self.data = data
        self.reader_options = reader_options
        self.options = options
        self.chunk_size = chunk_size
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

    def ordered_chunks(
        self, actor: type, actor_kwargs: Callable[[Any], dict[str, Any]]
    ) -> Iterator[Chunk]:
        """The chunks mapped by ``actor`` (constructed with ``actor_kwargs(ray)``, called
        once Ray is connected, e.g. to ``ray.put`` what every actor shares), in input
        order, each counted (:meth:`_take`) before it is given."""
        import ray

        with ray_runtime(self.options) as cluster:
            workers = self.options.actor_count(cluster)
            # Held until the run ends: an object put for the actors (their constructor
            # argument) must outlive every restart of an actor that dies.
            kwargs = actor_kwargs(ray)
            dataset = self._dataset(ray, workers, actor, kwargs)
            order = ChunkOrder(len(self.shards))
            try:
                for arrived in iter_chunks(dataset):
                    for chunk in order.add(arrived):
                        self._take(chunk)
                        yield chunk
                order.finish()
            finally:
                self.stats.rejects.close()

    def _take(self, chunk: Chunk) -> None:
        """Count a chunk in order: its rejects into the ledger and file, its shard's stats;
        raise the error that stopped its shard's read."""
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

    def _dataset(self, ray: Any, workers: int, actor: type, actor_kwargs: dict[str, Any]) -> Any:
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
                # Reading is light beside the actors' work: it takes no CPU from them.
                num_cpus=0,
                compute=ray.data.TaskPoolStrategy(size=max(1, min(workers, len(self.shards)))),
            )
            return map_on_actors(ray, chunks, actor, actor_kwargs, self.options, workers)
