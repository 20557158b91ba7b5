"""Feedback records as training examples over unique items, and the truncation policy.

Every kind of feedback becomes examples over *items* (unique prompt-response
pairs): a pair is two items, a ranked list N items, a rating one item. Both
trainers (:mod:`prefkit.rm.train`, :mod:`prefkit.rm.multiobjective`) build their
examples with :func:`build_examples` and apply ``max_length`` with
:func:`apply_truncation`, which counts what it did in :class:`TruncationCounts`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prefkit.data.records import (
    AnyRecord,
    BinaryRecord,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    render_text,
)
from prefkit.errors import UserInputError
from prefkit.losses.reward import OUTCOME_A_WINS, OUTCOME_B_WINS, OUTCOME_TIE

_OUTCOME_CODES = {"a": OUTCOME_A_WINS, "b": OUTCOME_B_WINS, "tie": OUTCOME_TIE}
_VOTE_VALUES = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class TruncationCounts:
    """What max_length did to the data."""

    max_length: int
    policy: str
    prompts_truncated: int = 0
    """Unique prompts (or prompt parts of sequences) that lost tokens."""
    responses_truncated: int = 0
    """Unique responses that lost tokens."""
    examples_dropped: int = 0
    """Examples left out because a text was too long (policy drop)."""
    examples_kept: int = 0

    def summary(self) -> str:
        text = (
            f"max length {self.max_length}: {self.prompts_truncated} prompts and "
            f"{self.responses_truncated} responses truncated"
        )
        if self.policy == "drop":
            text += f", {self.examples_dropped} examples dropped"
        return text + f"; {self.examples_kept} examples used"


@dataclass
class Examples:
    """All examples of one data set as tensors (E = number of examples)."""

    kind: str
    positions: torch.Tensor
    """(E, N) item ids, -1 = padding."""
    targets: dict[str, torch.Tensor]
    """RewardBatch field name -> (E,) or (E, N|K) tensor."""
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def data_kind(records: Sequence[AnyRecord], source: str = "data") -> str:
    kinds = {record.kind for record in records}
    if not records:
        raise UserInputError(f"{source}: no records to train on.")
    if len(kinds) > 1:
        raise UserInputError(
            f"{source}: mixed record kinds ({', '.join(sorted(kinds))}); train on one kind at a time "
            "(prefkit data convert turns ratings into pairs)."
        )
    kind = kinds.pop()
    if kind == BinaryRecord.kind:
        raise UserInputError(
            f"{source}: binary (thumbs) records cannot train a reward model here yet; "
            "convert them to pairs first (prefkit data convert --to pairwise)."
        )
    return kind


def rating_attributes(records: Sequence[AnyRecord]) -> list[str] | None:
    ratings = [record for record in records if isinstance(record, RatingRecord)]
    if not ratings:
        return None
    return sorted({name for record in ratings for name in record.ratings})


def record_items(record: AnyRecord) -> list[tuple[str, str]]:
    """(prompt, response) texts of the record's responses, in field order."""
    prompt = render_text(record.prompt)
    return [(prompt, render_text(response)) for _, response in record.named_responses()]


class ItemIndex:
    """Assigns ids to unique (prompt, response) pairs."""

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str], int] = {}

    def add(self, item: tuple[str, str]) -> int:
        return self.ids.setdefault(item, len(self.ids))

    @property
    def prompts(self) -> list[str]:
        return [prompt for prompt, _ in self.ids]

    @property
    def responses(self) -> list[str]:
        return [response for _, response in self.ids]


def build_examples(
    records: Sequence[AnyRecord], index: ItemIndex, attributes: list[str] | None
) -> Examples:
    """Examples of one kind of record over items registered in ``index``."""
    kind = records[0].kind
    ids = [record.id for record in records]
    if kind == PairwiseRecord.kind:
        positions, outcomes, prob_a, strengths, margins, weights = [], [], [], [], [], []
        for record in records:
            assert isinstance(record, PairwiseRecord)
            positions.append([index.add(item) for item in record_items(record)])
            outcomes.append(_OUTCOME_CODES[record.outcome])
            prob_a.append(_prob_a(record))
            strengths.append(1.0 if record.strength is None else record.strength)
            margins.append(0.0 if record.margin is None else record.margin)
            weights.append(1.0 if record.weight is None else record.weight)
        targets = {
            "outcomes": torch.tensor(outcomes, dtype=torch.long),
            "prob_a": torch.tensor(prob_a),
            "strengths": torch.tensor(strengths),
            "margins": torch.tensor(margins),
            "weights": torch.tensor(weights),
        }
        return Examples(kind, torch.tensor(positions, dtype=torch.long), targets, ids)
    if kind == RankingRecord.kind:
        width = max(len(record.responses) for record in records)  # type: ignore[union-attr]
        positions_t = torch.full((len(records), width), -1, dtype=torch.long)
        human = torch.zeros((len(records), width))
        ranked = torch.zeros((len(records), width), dtype=torch.bool)
        for row, record in enumerate(records):
            assert isinstance(record, RankingRecord)
            for column, (item, score) in enumerate(
                zip(record_items(record), record.preference_scores(), strict=True)
            ):
                positions_t[row, column] = index.add(item)
                if score is not None:
                    human[row, column], ranked[row, column] = score, True
        return Examples(kind, positions_t, {"human_scores": human, "ranked": ranked}, ids)
    assert attributes is not None
    positions_r, values, observed = [], [], []
    for record in records:
        assert isinstance(record, RatingRecord)
        positions_r.append([index.add(record_items(record)[0])])
        row_values = [record.ratings.get(name) for name in attributes]
        values.append([0.0 if value is None else value for value in row_values])
        observed.append([value is not None for value in row_values])
    targets = {
        "ratings": torch.tensor(values),
        "observed": torch.tensor(observed, dtype=torch.bool),
    }
    return Examples(kind, torch.tensor(positions_r, dtype=torch.long), targets, ids)


def _prob_a(record: PairwiseRecord) -> float:
    if record.soft_label is not None:
        return record.soft_label
    votes = [vote for vote in (record.votes or ()) if vote is not None]
    if votes:
        return sum(_VOTE_VALUES[vote] for vote in votes) / len(votes)
    return _VOTE_VALUES[record.outcome]  # type: ignore[index]


def subset_examples(examples: Examples, keep: torch.Tensor) -> Examples:
    """The examples where ``keep`` (E,) is True."""
    return Examples(
        examples.kind,
        examples.positions[keep],
        {name: tensor[keep] for name, tensor in examples.targets.items()},
        [example_id for example_id, kept in zip(examples.ids, keep.tolist(), strict=True) if kept],
    )


def apply_truncation(
    examples: Examples,
    prompt_cut: np.ndarray,
    response_cut: np.ndarray,
    counts: TruncationCounts,
    *,
    prompt_keys: Sequence[Hashable],
    response_keys: Sequence[Hashable],
) -> Examples:
    """Count what ``max_length`` did to the items and, with the drop policy, drop the examples
    that read a truncated item; returns the examples kept.

    ``prompt_cut`` and ``response_cut`` are (U,) bools, True where the item's prompt
    (only where the model reads it) or response lost tokens. A truncated prompt or
    response is counted once per distinct key (``prompt_keys[u]``,
    ``response_keys[u]``): the text itself where texts are truncated alone, the item
    where prompt and response are truncated together as one sequence.
    """
    counts.prompts_truncated += len(
        {key for key, cut in zip(prompt_keys, prompt_cut.tolist(), strict=True) if cut}
    )
    counts.responses_truncated += len(
        {key for key, cut in zip(response_keys, response_cut.tolist(), strict=True) if cut}
    )
    if counts.policy == "drop":
        truncated = torch.from_numpy(np.asarray(prompt_cut | response_cut, dtype=bool))  # (U,)
        present = examples.positions >= 0  # (E, N)
        touched = (truncated[examples.positions.clamp(min=0)] & present).any(dim=1)  # (E,)
        counts.examples_dropped += int(touched.sum())
        examples = subset_examples(examples, ~touched)
    counts.examples_kept += len(examples)
    return examples
