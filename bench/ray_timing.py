"""Timing one command with the local engine and with Ray, the way the Ray benchmarks do.

Each run is one command in its own process, start to exit. The engines are interleaved,
their order alternating round by round, and each is also timed on a small input of one
chunk, whose time stands for the fixed cost of a command (start-up, model loading, and
for Ray its runtime and actors). :func:`summarize` gives the medians, the rates, the rates
net of that fixed cost, ``(count - small_count) / (seconds - seconds on the small input)``,
and the Ray/local ratios.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable

ENGINES = ("local", "ray")


def time_engines(
    run: Callable[[str, bool], float], repeats: int, small_label: str
) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """``run(engine, small)`` -> seconds, for each engine ``repeats`` times (interleaved),
    on the whole input and on the small one; with the 1-minute load average before the
    first round and after each."""
    seconds: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    small_seconds: dict[str, list[float]] = {engine: [] for engine in ENGINES}
    load = [os.getloadavg()[0]]
    for repeat in range(repeats):
        for engine in ENGINES if repeat % 2 == 0 else ENGINES[::-1]:
            seconds[engine].append(run(engine, False))
            small_seconds[engine].append(run(engine, True))
            print(
                f"round {repeat + 1}: {engine}: {seconds[engine][-1]:.1f} s "
                f"({small_seconds[engine][-1]:.1f} s on {small_label})",
                file=sys.stderr,
            )
        load.append(os.getloadavg()[0])
    return seconds, small_seconds, load


def summarize(
    unit: str,
    count: int,
    small_count: int,
    seconds: dict[str, list[float]],
    small_seconds: dict[str, list[float]],
    small_key: str,
) -> dict[str, object]:
    """Medians, ``{unit}_per_s``, the rates net of the fixed cost and the ratios, under the
    keys the results files use (``small_key`` names the small input, e.g. ``64_pairs``)."""
    median = {engine: statistics.median(values) for engine, values in seconds.items()}
    small_median = {engine: statistics.median(values) for engine, values in small_seconds.items()}
    rate = {engine: count / median[engine] for engine in ENGINES}
    net = {
        engine: (count - small_count) / max(median[engine] - small_median[engine], 1e-9)
        for engine in ENGINES
    }
    return {
        "seconds_each_run": seconds,
        "median_seconds": median,
        f"{unit}_per_s": rate,
        f"seconds_each_run_{small_key}": small_seconds,
        f"median_seconds_{small_key}": small_median,
        f"{unit}_per_s_net_of_fixed_cost": net,
        "ratios": {
            f"ray_over_local_{unit}_per_s": rate["ray"] / rate["local"],
            f"ray_over_local_net_{unit}_per_s": net["ray"] / net["local"],
            "ray_fixed_cost_over_local": small_median["ray"] / small_median["local"],
        },
    }


def shared_machine_note(load: list[float]) -> str:
    """The results files' note on the load during the runs."""
    return (
        f"1-minute load average {min(load):.1f} to {max(load):.1f} during the runs (the "
        "benchmark's own processes count: on 2 cores it keeps the load near 2 by itself; "
        "well above that, other work shared the cores); the numbers move with the load, the "
        "ratios less. "
    )


FIXED_COST_NOTE = (
    "Ray's fixed cost (start a runtime, start the actors, each importing torch and loading "
    "the model) is paid once per command: on one machine it is pure overhead, on a cluster "
    "it buys more actors than one machine has cores."
)
