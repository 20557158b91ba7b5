"""The processes of a ``torchrun`` / ``accelerate launch`` on this machine, started by hand:
each gets the environment those launchers give rank r (the training loop then uses gloo
on CPU), on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(
    arguments: list[str], world_size: int, *, separate_stderr: bool = False
) -> list[subprocess.Popen]:
    """``world_size`` processes of ``python *arguments`` with text pipes; a single process
    gets none of the launch variables (it trains alone, as without a launcher)."""
    port = str(free_port())
    processes = []
    for rank in range(world_size):
        env = {name: value for name, value in os.environ.items() if name not in LAUNCH_VARIABLES}
        if world_size > 1:
            env.update(
                WORLD_SIZE=str(world_size),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            )
        processes.append(
            subprocess.Popen(
                [sys.executable, *arguments],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if separate_stderr else subprocess.STDOUT,
                text=True,
            )
        )
    return processes
