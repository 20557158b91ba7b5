"""What an evaluation produces: per-model metrics plus the scored examples.

:class:`ModelEvaluation` is the hand-over between the evaluation engine
(:mod:`prefkit.eval.evaluate`), the JSON output and the HTML report
(:mod:`prefkit.eval.report`). Pure data: no numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoredPair:
    """One evaluated pair: the texts, the human outcome and the model's rewards."""

    id: str
    """The record's id."""
    prompt: str
    """The prompt, rendered as plain text (conversations as ``role: content`` turns)."""
    response_a: str
    """The first response, rendered as plain text."""
    response_b: str
    """The second response, rendered as plain text."""
    outcome: str
    """The human outcome: ``a``, ``b`` or ``tie``."""
    reward_a: float
    """The model's reward for ``response_a``."""
    reward_b: float
    """The model's reward for ``response_b``."""
    category: str | None = None
    """The record's category (or the ``--by`` field), when present."""
    length_a: int = 0
    """Length of ``response_a`` in characters."""
    length_b: int = 0
    """Length of ``response_b`` in characters."""

    @property
    def margin(self) -> float:
        return self.reward_a - self.reward_b


@dataclass
class ModelEvaluation:
    """The evaluation of one scorer on one data set."""

    name: str
    """The scorer's name as shown in tables (a folder name, a model name)."""
    metrics: dict[str, Any]
    """JSON-ready metrics; for pairwise data the schema of
    :func:`prefkit.eval.metrics.pairwise_report`, plus ``ranking`` / ``best_of_n`` blocks
    when the data holds rankings."""
    pairs: list[ScoredPair] = field(default_factory=list)
    """The scored pairs (for the report's plots and tables)."""


@dataclass
class EvaluationRun:
    """Several scorers evaluated on the same records."""

    data: str
    """The evaluated data set (path or name)."""
    models: list[ModelEvaluation]
    """One entry per scorer, in the order given."""
    n_records: int = 0
    """Records read."""
    n_rejected: int = 0
    """Records rejected while reading."""
    notes: list[str] = field(default_factory=list)
    """Anything the reader should know (dropped records, defaults taken)."""

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: the first model's metrics at the top level (for a
        single model) and one block per model under ``models``."""
        document: dict[str, Any] = {
            "data": self.data,
            "n_records": self.n_records,
            "n_rejected": self.n_rejected,
            "notes": list(self.notes),
            "models": [{"name": model.name, **model.metrics} for model in self.models],
        }
        if len(self.models) == 1:
            document.update(self.models[0].metrics)
            document["name"] = self.models[0].name
        return document
