"""Progress on stderr: rate always, ETA once the total is known.

Every long-running part of prefkit (the training loop included) reports through
this module, so all progress looks and behaves alike. On a terminal it is a tqdm
bar, redrawn at most twice a second. Off a terminal (CI, ``> log 2>&1``, a notebook
capturing output) a redrawn bar would write one carriage-return update per step
into the log, so :class:`PlainProgress` prints a plain line at most every
``PLAIN_INTERVAL_S`` seconds, with count, rate and ETA, and one summary line at the
end. ``enabled=False`` shows nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["PlainProgress", "ProgressCounter", "progress_bar", "progress_iter"]

PLAIN_INTERVAL_S = 10.0
"""Seconds between two plain progress lines off a terminal."""


class PlainProgress:
    """Progress as plain lines: at most one every ``interval`` seconds, and a summary on close.

    Has the part of tqdm's interface that prefkit uses (``update``, ``set_postfix``,
    ``set_postfix_str``, ``total``, ``refresh``, ``close``, context manager, iteration).
    """

    def __init__(
        self,
        *,
        total: int | None,
        description: str,
        unit: str,
        initial: int = 0,
        interval: float = PLAIN_INTERVAL_S,
        stream: Any = None,
        clock: Callable[[], float] = time.monotonic,
        iterable: Iterable[Any] | None = None,
    ):
        self.total = total
        self.description = description
        self.unit = unit
        self.count = initial
        self._initial = initial
        self._interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = self._last_line = clock()
        self._postfix = ""
        self._iterable = iterable
        self._closed = False

    def _line(self, final: bool) -> str:
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = (self.count - self._initial) / elapsed
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        parts = [f"{self.description}: {done} {self.unit}"]
        if self.total and not final:
            parts.append(f"({100 * self.count / self.total:.0f}%)")
        parts.append(f"{rate:.3g} {self.unit}/s")
        if final:
            parts.append(f"in {elapsed:.1f} s")
        elif self.total and rate > 0:
            parts.append(f"ETA {max(self.total - self.count, 0) / rate:.0f} s")
        if self._postfix:
            parts.append(self._postfix)
        return " ".join(parts)

    def update(self, count: int = 1) -> None:
        self.count += count
        now = self._clock()
        if now - self._last_line >= self._interval:
            self._last_line = now
            print(self._line(final=False), file=self._stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        """Text shown after the counts (``refresh`` is tqdm's; lines are printed by update)."""
        self._postfix = str(text)

    def refresh(self) -> None:
        """Nothing to redraw: lines are printed by :meth:`update`."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            print(self._line(final=True), file=self._stream, flush=True)

    def __iter__(self) -> Iterator[Any]:
        assert self._iterable is not None, "PlainProgress: no iterable given"
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _on_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(
    *,
    total: int | None,
    description: str,
    unit: str,
    enabled: bool = True,
    initial: int = 0,
) -> Any:
    """A bar to ``update(n)``: tqdm on a terminal, :class:`PlainProgress` elsewhere, silent when
    not ``enabled`` (use it as a context manager to close it)."""
    if enabled and not _on_terminal():
        return PlainProgress(total=total, description=description, unit=unit, initial=initial)
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=not enabled,
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
    if not _on_terminal():
        return PlainProgress(total=total, description=description, unit=unit, iterable=items)
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
