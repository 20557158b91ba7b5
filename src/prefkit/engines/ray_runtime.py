"""Joining a Ray cluster, or starting a local Ray runtime, for one command.

``ray`` is imported only here and in the stages that run on it, never by ``import prefkit``.
"""

from __future__ import annotations

import dataclasses
import logging
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

    def actor_count(self, cluster_cpus: float) -> int:
        """``workers``, or as many actors as ``cluster_cpus`` hold (at least one)."""
        if self.workers is not None:
            return self.workers
        return max(1, int(cluster_cpus) // self.cpus_per_worker)


@contextmanager
def ray_runtime(options: RayOptions) -> Iterator[float]:
    """Connect to Ray for the ``with`` block and give the CPUs it has.

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
        with warnings.catch_warnings():
            # An input of fewer chunks than actors leaves actors idle; Ray Data warns and
            # advises a setting of its own pipeline, which is not the user's to change.
            warnings.filterwarnings(
                "ignore", message="The minimum number of concurrent actors", category=UserWarning
            )
            yield float(ray.cluster_resources().get("CPU", 0.0))
    finally:
        for handler, level in zip(consoles, levels, strict=True):
            handler.setLevel(level)
        if started:
            ray.shutdown()
