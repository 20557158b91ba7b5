"""Errors that name the file, line and field, and the ledger of rejected records.

With ``on_error="raise"`` (the default) the first bad record stops the read
with a :class:`DataError`. With ``on_error="skip"`` the read goes on; every bad
record is counted by reason in a :class:`Rejects` ledger and, when the ledger
has a path, written there with its reason and its raw content, so nothing is
lost silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefkit.errors import UserInputError

OnError = Literal["raise", "skip"]
ON_ERROR_CHOICES = ("raise", "skip")


@dataclass(eq=False)
class DataError(UserInputError):
    """A record that cannot be read, with where and why.

    Attributes:
        source: the file (or data set) the record came from.
        line: 1-based line number for line-oriented files, else the record's
            0-based index in its file (``location`` says which).
        field: the offending field, when one is to blame.
        message: what was expected and what was found.
        reason: a short category used to count rejects (``malformed_json``,
            ``missing_field``, ``wrong_type``, ``empty_text``, ...).
        hint: what to do about it.
    """

    source: str
    line: int | None
    field: str | None
    message: str
    reason: str = "invalid"
    hint: str | None = None
    location: str = "line"
    raw: Any = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def where(self) -> str:
        place = self.source
        if self.line is not None:
            place += f":{self.line}" if self.location == "line" else f" (record {self.line})"
        return place

    def __str__(self) -> str:
        text = f"{self.where()}: "
        if self.field and not self.message.startswith(f"field '{self.field}'"):
            text += f"field '{self.field}': "
        text += self.message
        if self.hint:
            text += f". {self.hint}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "line" if self.location == "line" else "record": self.line,
            "field": self.field,
            "reason": self.reason,
            "error": str(self),
            "raw": _jsonable(self.raw),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


@dataclass
class Rejects:
    """Counts rejected records by reason and writes them to a JSONL file.

    The file is created on the first reject only, so a clean read leaves no
    empty rejects file behind.
    """

    path: Path | None = None
    counts: Counter = field(default_factory=Counter)
    examples: list[DataError] = field(default_factory=list)
    max_examples: int = 20
    _handle: Any = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, error: DataError) -> None:
        self.counts[error.reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(error)
        if self.path is not None:
            if self._handle is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "w", encoding="utf-8")
            self._handle.write(json.dumps(error.to_json(), ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def summary(self) -> str:
        if not self.counts:
            return "0 rejected"
        parts = ", ".join(f"{count} {reason}" for reason, count in self.counts.most_common())
        where = f" (written to {self.path})" if self.path is not None else ""
        return f"{self.total} rejected: {parts}{where}"


def rejects_path_for(output: str | Path) -> Path:
    """``<output>.rejects.jsonl``: where ``--on-error skip`` writes bad records."""
    return Path(f"{output}.rejects.jsonl")
