"""What the Ray stages share: an actor pool over Ray Data, and putting chunks back in order.

A stage cuts its work into chunks, each known by ``(shard, index)`` with ``last`` on a
shard's last chunk; :func:`map_on_actors` runs a class (constructed once per actor, so
each actor loads its model once) over a dataset with one chunk per block, restarting an
actor that dies and running its chunks again; :class:`ChunkOrder` puts the chunks that
come back in input order and refuses a chunk seen twice or a run that ends with one
missing. ``ray`` is imported only when a run starts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from prefkit.engines.ray_runtime import RayOptions
from prefkit.errors import UserInputError

MAX_ACTOR_RESTARTS = 3
"""How often an actor that died is started again (and its chunks retried)."""


class OrderedChunk(Protocol):
    """Anything with a place in the input: shard, index in the shard, last of the shard."""

    shard: int
    index: int
    last: bool


C = TypeVar("C", bound=OrderedChunk)


class ChunkOrder:
    """Puts chunks that arrive in any order back in input order, and checks that every
    chunk of every shard comes exactly once."""

    def __init__(self, n_shards: int):
        self.n_shards = n_shards
        self._next = (0, 0)
        self._waiting: dict[tuple[int, int], Any] = {}
        self._seen: set[tuple[int, int]] = set()

    def add(self, chunk: C) -> list[C]:
        """The chunks that are now next in order (``chunk`` and any it was holding up)."""
        key = (chunk.shard, chunk.index)
        if key in self._seen:
            raise RuntimeError(f"chunk {chunk.index} of shard {chunk.shard} came twice")
        self._seen.add(key)
        self._waiting[key] = chunk
        ready = []
        while self._next in self._waiting:
            current = self._waiting.pop(self._next)
            ready.append(current)
            shard, index = self._next
            self._next = (shard + 1, 0) if current.last else (shard, index + 1)
        return ready

    def finish(self) -> None:
        """Raises unless every shard ended (its last chunk came) and nothing is left over."""
        if self._next != (self.n_shards, 0) or self._waiting:
            raise RuntimeError(
                f"the run ended before chunk {self._next[1]} of shard {self._next[0]} came "
                f"({len(self._waiting)} later chunks held back)"
            )


@contextmanager
def ordered_data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for a stage, restored afterwards: one chunk per block (so that
    chunks spread over the actors), blocks kept in order, no progress bars or notices."""
    context = ray.data.DataContext.get_current()
    saved = (
        context.target_max_block_size,
        context.execution_options.preserve_order,
        context.enable_progress_bars,
        context.print_on_execution_start,
    )
    context.target_max_block_size = 1
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        yield
    finally:
        (
            context.target_max_block_size,
            context.execution_options.preserve_order,
            context.enable_progress_bars,
            context.print_on_execution_start,
        ) = saved


def map_on_actors(
    ray: Any,
    dataset: Any,
    actor: type,
    constructor_kwargs: dict[str, Any],
    options: RayOptions,
    workers: int,
) -> Any:
    """``dataset`` mapped one row (one chunk) at a time by a pool of ``workers`` actors of
    class ``actor``; an actor that dies is restarted and its chunks run again."""
    if options.gpus_per_worker > 0:
        check_gpu_torch(ray, options.gpus_per_worker)
    env = worker_env()
    with warnings.catch_warnings():
        # Ray 2.60 names no parameter for the actors' fault tolerance yet.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return dataset.map_batches(
            actor,
            batch_size=1,
            fn_constructor_kwargs=constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
            runtime_env={"env_vars": env} if env else None,
            max_restarts=MAX_ACTOR_RESTARTS,
            max_task_retries=MAX_ACTOR_RESTARTS,
        )


def iter_chunks(dataset: Any) -> Iterator[Any]:
    """The chunk objects of a dataset whose rows are ``{"chunk": object}``, as they come."""
    import numpy as np

    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        yield from np.asarray(batch["chunk"]).ravel()


GPU_PROBE_TIMEOUT_S = 300.0
"""How long the GPU probe waits for a GPU to be free before it gives up."""


def check_gpu_torch(ray: Any, gpus: float) -> None:
    """Before any actor starts: run one task that reserves ``gpus`` GPUs, as an actor will,
    and raise unless torch there sees a CUDA device (a CPU build of torch on the GPU nodes
    would otherwise fail in every actor, each with its own long trace)."""

    def probe() -> tuple[str, bool, list]:
        import torch

        return torch.__version__, torch.cuda.is_available(), list(ray.get_gpu_ids())

    task = ray.remote(num_cpus=0, num_gpus=gpus)(probe).remote()
    try:
        version, available, ids = ray.get(task, timeout=GPU_PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(task, force=True)
        raise UserInputError(
            f"no {gpus:g} GPU became free on the Ray cluster within {GPU_PROBE_TIMEOUT_S:.0f} s "
            "(other work holds them?); try again, or with a smaller --ray-gpus-per-worker"
        ) from None
    if not available:
        raise UserInputError(
            f"a task that reserved {gpus:g} GPU (Ray gave it GPU {ids}) found no CUDA device "
            f"for torch {version} on its node: install a CUDA build of torch on the GPU nodes, "
            "or leave out --ray-gpus-per-worker"
        )


def check_actor_device(device: str) -> None:
    """In an actor: raise unless torch can use ``device`` (an actor that reserved a GPU
    gets one from Ray; torch must be a CUDA build there to use it)."""
    if device == "cpu":
        return
    import ray
    import torch

    if not torch.cuda.is_available():
        raise UserInputError(
            f"this actor reserved GPU(s) {ray.get_gpu_ids()} from Ray, but torch {torch.__version__} "
            "on its node sees no CUDA device: install a CUDA build of torch on the GPU nodes, "
            "or leave out --ray-gpus-per-worker"
        )


def worker_env() -> dict[str, str]:
    """Settings the actors need from this process: offline model loading."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "PREFKIT_CACHE")
    return {name: os.environ[name] for name in names if name in os.environ}
