"""Progress bars on stderr: rate always, ETA once the total is known.

Every long-running part of prefkit reports through these, so they look and behave
alike: tqdm on stderr, redrawn at most twice a second, hidden when ``enabled`` is
false or when stderr is not a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["ProgressCounter", "progress_bar", "progress_iter"]


def progress_bar(*, total: int | None, description: str, unit: str, enabled: bool = True) -> Any:
    """A tqdm bar to ``update(n)`` (use it as a context manager to close it)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=None if enabled else True,
    )


def progress_iter(
    items: Iterable[T],
    *,
    description: str,
    unit: str,
    total: int | None = None,
    enabled: bool = True,
) -> Iterable[T]:
    """``items``, counted on a bar as they are consumed."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(
        items,
        desc=description,
        unit=unit,
        total=total,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=None,
    )


class ProgressCounter:
    """A callable ``counter(n)`` that advances a bar by ``n``; work that learns how much
    is coming calls :meth:`expect`, which grows the bar's total (and so gives an ETA).

    Passed where prefkit takes a ``progress`` callback, e.g. to the embedding pass,
    which expects the number of texts it has to embed before it starts. A disabled
    counter counts silently; ``with ProgressCounter(...) as counter:`` closes it.
    """

    def __init__(self, description: str, unit: str, enabled: bool = True):
        self._bar = progress_bar(total=0, description=description, unit=unit, enabled=enabled)

    def expect(self, count: int) -> None:
        self._bar.total = (self._bar.total or 0) + count
        self._bar.refresh()

    def __call__(self, count: int) -> None:
        self._bar.update(count)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressCounter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
