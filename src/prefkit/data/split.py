"""Seeded hold-out of whole records, shared by the trainers that take an ``eval_fraction``."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from prefkit.errors import UserInputError

__all__ = ["split_eval_records"]


def split_eval_records(
    records: Iterable[Any], fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """(training, held-out) records: ``round(fraction * N)`` records drawn at random with ``seed``.

    Whole records are held out, so both halves of a pair split into thumbs stay on
    the same side. Both sides keep the records' order.
    """
    records = list(records)
    count = len(records)
    held_out = math.floor(fraction * count + 0.5)
    if held_out == 0:
        raise UserInputError(
            f"eval_fraction {fraction} of {count} records holds out no record; raise it to at "
            f"least {1 / max(count, 1):.3g}, or pass separate evaluation data."
        )
    if held_out >= count:
        raise UserInputError(
            f"eval_fraction {fraction} of {count} records holds out all of them and leaves none "
            "for training; lower it."
        )
    chosen = set(random.Random(seed).sample(range(count), held_out))
    training = [record for index, record in enumerate(records) if index not in chosen]
    return training, [records[index] for index in sorted(chosen)]
