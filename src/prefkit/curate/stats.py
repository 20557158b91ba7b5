"""What a curation step did, and the ``--on-error`` policy for records it cannot use.

Every step counts the records it read, kept and dropped (by reason) and the
records it changed (by what it did). A record that a step cannot work with
(a ranking given to a step for pairs, a missing score) is a problem of the
input: with ``on_error="raise"`` it stops the run with a :class:`DataError`
naming the record and field; with ``on_error="skip"`` it is counted, dropped
and written with the reason to the rejects file, as the readers do.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.data.errors import ON_ERROR_CHOICES, DataError, OnError, Rejects
from prefkit.data.records import AnyRecord


@dataclass
class CurateStats:
    """Records read, kept and dropped (with reasons) and changed (with what was done)."""

    step: str
    """Name of the step (``dedup``, ``decontaminate``, ``noise``, ``select``)."""
    n_read: int = 0
    """Records the step received."""
    n_kept: int = 0
    """Records written."""
    dropped: Counter = field(default_factory=Counter)
    """Reason -> records not written for that reason."""
    changed: Counter = field(default_factory=Counter)
    """What was done -> records written changed (flipped, softened, responses removed)."""

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        text = f"{self.step}: read {self.n_read}, kept {self.n_kept}, dropped {self.n_dropped}"
        if self.dropped:
            text += " (" + ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) + ")"
        if self.changed:
            text += "; changed " + ", ".join(
                f"{n} {what}" for what, n in sorted(self.changed.items())
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "read": self.n_read,
            "kept": self.n_kept,
            "dropped": self.n_dropped,
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "changed": dict(sorted(self.changed.items())),
        }


class RecordProblems:
    """Applies ``on_error`` to records a step cannot use; see the module docstring."""

    def __init__(self, step: str, on_error: OnError = "raise", rejects_path: Path | None = None):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.step = step
        self.on_error = on_error
        self.rejects = Rejects(rejects_path)

    def reject(
        self,
        record: AnyRecord,
        field: str | None,
        message: str,
        reason: str,
        hint: str | None = None,
    ) -> None:
        """Raise for ``record`` or, with ``skip``, count it and write it to the rejects file."""
        error = DataError(
            f"{self.step}: record {record.id!r}",
            None,
            field,
            message,
            reason=reason,
            hint=hint,
            raw=record.to_dict(),
        )
        if self.on_error == "raise":
            raise error
        self.rejects.add(error)

    def close(self) -> None:
        self.rejects.close()
