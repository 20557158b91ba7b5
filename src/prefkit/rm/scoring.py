"""Scoring feedback records with a reward model: one JSON-ready row per record.

:func:`score_records` is what ``prefkit rm score`` writes, one row per input
record, in input order, with the record's id and kind and

- pairs: ``reward_a``, ``reward_b`` and ``margin`` (= reward_a - reward_b);
- rankings and candidate sets: ``rewards``, one per response in the record's order
  (with ``response_ids`` when the record has them);
- single responses (ratings, thumbs): ``reward``;
- models trained on ratings (K attributes): also ``attributes``, one
  attribute -> value mapping per response.

All responses of a batch of records go through the model in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefkit.data.records import AnyRecord, PairwiseRecord, RankingRecord
from prefkit.rm.examples import record_items
from prefkit.rm.model import RewardModel


def score_records(
    model: RewardModel,
    records: Sequence[AnyRecord],
    *,
    batch_size: int = 64,
    normalize: bool = False,
) -> list[dict[str, Any]]:
    """One row per record (see the module docstring); ``normalize`` standardises the rewards
    by the training data's reward mean and std."""
    items = [record_items(record) for record in records]
    prompts = [prompt for record_items_ in items for prompt, _ in record_items_]
    responses = [response for record_items_ in items for _, response in record_items_]
    outputs, rewards = model.predict_and_score(prompts, responses, batch_size=batch_size)
    if normalize:
        rewards = model.normalize(rewards)
    rows = []
    offset = 0
    for record, record_items_ in zip(records, items, strict=True):
        span = slice(offset, offset + len(record_items_))
        offset += len(record_items_)
        values = [float(value) for value in rewards[span]]  # (N,) for this record
        row: dict[str, Any] = {"id": record.id, "kind": record.kind}
        if isinstance(record, PairwiseRecord):
            row.update(reward_a=values[0], reward_b=values[1], margin=values[0] - values[1])
        elif isinstance(record, RankingRecord):
            row["rewards"] = values
            if record.response_ids is not None:
                row["response_ids"] = list(record.response_ids)
        else:
            row["reward"] = values[0]
        if model.attributes:
            row["attributes"] = [
                dict(zip(model.attributes, map(float, output), strict=True))
                for output in outputs[span]
            ]
        rows.append(row)
    return rows
