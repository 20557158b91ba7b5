"""Joining a Ray cluster, or starting a local Ray runtime, for one command.

``ray`` is imported only here and in the stages that run on it, never by ``import prefkit``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from prefkit.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where a stage runs on Ray and how many actors it starts."""

    address: str | None = None
    """A running cluster to join (``auto``, ``HOST:6379``, or ``ray://HOST:10001`` for Ray
    Client); None starts a local runtime for the command and stops it afterwards."""
    num_cpus: int | None = None
    """CPUs of the local runtime (None: all of this machine's); only without ``address``,
    a cluster has the CPUs it has."""
    workers: int | None = None
    """Actors, each loading the model once (None: as many as the runtime's CPUs allow at
    ``cpus_per_worker`` each)."""
    cpus_per_worker: int = 1
    """CPUs reserved by each actor; Ray gives it as many intra-op threads (OMP_NUM_THREADS)."""
    gpus_per_worker: float = 0.0
    """GPUs reserved by each actor (a fraction shares one GPU between actors); above 0 the
    actors load their models on ``cuda``, the GPU Ray assigned them."""

    def __post_init__(self) -> None:
        if self.address is not None and self.num_cpus is not None:
            raise UserInputError(
                "--ray-num-cpus sizes a local Ray runtime; a cluster joined with --ray-address "
                "has the CPUs its nodes have: leave out one of the two"
            )
        for name in ("num_cpus", "workers", "cpus_per_worker"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"--ray-{name.replace('_', '-')} must be >= 1, got {value}")
        gpus = self.gpus_per_worker
        if not math.isfinite(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus)):
            raise UserInputError(
                "--ray-gpus-per-worker must be 0, a fraction of one GPU (up to 1) or a whole "
                f"number of GPUs, got {gpus:g}"
            )

    @property
    def device(self) -> str:
        """The torch device of the actors' models: ``cuda`` when they reserve GPUs."""
        return "cuda" if self.gpus_per_worker > 0 else "cpu"

    def actor_count(self, cluster: ClusterSize) -> int:
        """``workers``, or as many actors as the cluster's CPUs (and GPUs, when each
        reserves some) hold, at least one; raises when the GPUs cannot hold them, since
        Ray would wait for GPUs that never come."""
        count = self.workers
        if count is None:
            count = max(1, int(cluster.cpus) // self.cpus_per_worker)
        if self.gpus_per_worker == 0:
            return count
        room = cluster.gpu_slots(self.gpus_per_worker)
        if self.workers is None:
            count = min(count, room)
        if count < 1 or count > room:
            kind = "cluster" if self.address else "runtime"
            raise UserInputError(
                f"{max(count, 1)} actor(s) x --ray-gpus-per-worker {self.gpus_per_worker:g} do "
                f"not fit the GPUs of the Ray {kind} ({cluster.gpus:g} on "
                f"{len(cluster.node_gpus)} node(s): room for {room} such actor(s))"
            )
        return count


@dataclasses.dataclass(frozen=True)
class ClusterSize:
    """The CPUs of the Ray cluster (or local runtime) a command runs on, and the GPUs of
    each of its nodes."""

    cpus: float
    node_gpus: tuple[float, ...] = ()

    @property
    def gpus(self) -> float:
        return float(sum(self.node_gpus))

    def gpu_slots(self, per_actor: float) -> int:
        """How many actors reserving ``per_actor`` GPUs fit, as Ray places them: a fraction
        within one GPU (0.6 fits once on a GPU, 0.5 twice), a whole number within one node."""
        if per_actor <= 1:
            per_gpu = int(1 / per_actor + 1e-9)
            return sum(int(gpus + 1e-9) * per_gpu for gpus in self.node_gpus)
        return sum(int(gpus / per_actor + 1e-9) for gpus in self.node_gpus)


@contextmanager
def ray_runtime(options: RayOptions) -> Iterator[ClusterSize]:
    """Connect to Ray for the ``with`` block and give the CPUs and GPUs it has.

    A runtime that is already connected (a test's, a notebook's) is used as it is and left
    running; otherwise the block joins ``options.address`` or starts a local runtime, and
    disconnects (stopping a local runtime) when it ends, also on an error.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        # Quiet: warnings only, and the workers' own output stays in Ray's log files
        # (an error in a worker still reaches this process as the exception it raised).
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if options.address is not None:
            ray.init(address=options.address, include_dashboard=False, **quiet)
        else:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False, **quiet)
    import ray.data  # sets up Ray Data's loggers, so that they are set up before the change

    # Ray Data's per-run notices leave the terminal (its log files keep them).
    consoles = [
        handler
        for handler in logging.getLogger("ray.data").handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    levels = [handler.level for handler in consoles]
    for handler in consoles:
        handler.setLevel(logging.ERROR)
    try:
        # An input of fewer chunks than actors leaves actors idle; Ray Data warns and
        # advises a setting of its own pipeline, which is not the user's to change. (Put in
        # front of the filters on each run; not restored, since the ``with`` block may end
        # inside a caller's own warning context.)
        warnings.filterwarnings(
            "ignore", message="The minimum number of concurrent actors", category=UserWarning
        )
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        yield ClusterSize(
            float(ray.cluster_resources().get("CPU", 0.0)),
            tuple(float(node["Resources"].get("GPU", 0.0)) for node in nodes),
        )
    finally:
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)
        if started:
            ray.shutdown()
