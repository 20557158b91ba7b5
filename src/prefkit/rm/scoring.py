"""Scoring feedback records with a reward model: one JSON-ready row per record.

:func:`score_records` is what ``prefkit rm score`` writes, one row per input
record, in input order, with the record's id and kind and

- pairs: ``reward_a``, ``reward_b``, ``margin`` (= reward_a - reward_b) and ``prob_a``,
  the calibrated P(a preferred) = sigmoid(raw margin / T) with the model's temperature T
  (the raw margin, so ``normalize`` does not change it);
- rankings and candidate sets: ``rewards``, one per response in the record's order
  (with ``response_ids`` when the record has them);
- single responses (ratings, thumbs): ``reward``;
- models trained on ratings (K attributes): also ``attributes``, one
  attribute -> value mapping per response;
- ensembles (``ensemble_size`` > 1): the rewards above are the members' mean, and
  the members' standard deviation comes beside them: ``reward_std_a``,
  ``reward_std_b`` and ``p_a_std`` (the spread of the members' P(a), larger where
  the ensemble is more often wrong; ``prob_a`` is their mean) for pairs,
  ``reward_stds`` for rankings, ``reward_std`` for single responses (scaled like
  the rewards under ``normalize``).

All responses of a batch of records go through the model in one call.
:func:`scored_record` turns a record and its row back into a record
(``prefkit rm score --records``); :func:`score_chunk` does both for one chunk of
records, the unit of work of every engine (local, or an actor on Ray).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from prefkit.data.pairs import with_rewards
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
    ensemble = model.spec.ensemble_size > 1
    # (N, K) outputs, (N,) raw rewards, (E, N) each member's raw reward
    outputs, raw_rewards, members = model.predict_score_members(
        prompts, responses, batch_size=batch_size
    )
    rewards = model.normalize(raw_rewards) if normalize else raw_rewards
    rows = []
    offset = 0
    for record, record_items_ in zip(records, items, strict=True):
        span = slice(offset, offset + len(record_items_))
        offset += len(record_items_)
        values = [float(value) for value in rewards[span]]  # (N,) for this record
        row: dict[str, Any] = {"id": record.id, "kind": record.kind}
        if isinstance(record, PairwiseRecord):
            raw_a, raw_b = raw_rewards[span]
            if ensemble:  # the members' mean probability, as RewardModel.compare
                member_probs = model.preference_probability(
                    members[:, span.start], members[:, span.start + 1]
                )
                prob_a = float(member_probs.mean())
            else:
                prob_a = float(model.preference_probability([raw_a], [raw_b])[0])
            row.update(
                reward_a=values[0],
                reward_b=values[1],
                margin=values[0] - values[1],
                prob_a=prob_a,
            )
        elif isinstance(record, RankingRecord):
            row["rewards"] = values
            if record.response_ids is not None:
                row["response_ids"] = list(record.response_ids)
        else:
            row["reward"] = values[0]
        if ensemble:
            scale = model.spec.reward_std if normalize else 1.0
            spread = [float(value) / scale for value in members[:, span].std(axis=0)]
            if isinstance(record, PairwiseRecord):
                row.update(
                    reward_std_a=spread[0],
                    reward_std_b=spread[1],
                    p_a_std=float(member_probs.std()),
                )
            elif isinstance(record, RankingRecord):
                row["reward_stds"] = spread
            else:
                row["reward_std"] = spread[0]
        if model.attributes:
            row["attributes"] = [
                dict(zip(model.attributes, map(float, output), strict=True))
                for output in outputs[span]
            ]
        rows.append(row)
    return rows


@dataclasses.dataclass
class ScoredChunk:
    """One chunk of records, scored: what an engine hands back to be written."""

    rows: list[dict[str, Any]]
    """One :func:`score_records` row per record, in the chunk's order."""
    records: list[AnyRecord] | None = None
    """The records with their rewards filled in (:func:`scored_record`); None when not asked."""


def score_chunk(
    model: RewardModel,
    records: Sequence[AnyRecord],
    *,
    batch_size: int = 64,
    normalize: bool = False,
    scoring: dict[str, Any] | None = None,
) -> ScoredChunk:
    """Score ``records`` (:func:`score_records`); with ``scoring`` (the reward model's name
    and settings) also fill them in (:func:`scored_record`)."""
    rows = score_records(model, records, batch_size=batch_size, normalize=normalize)
    if scoring is None:
        return ScoredChunk(rows)
    filled = [
        scored_record(record, row, scoring) for record, row in zip(records, rows, strict=True)
    ]
    return ScoredChunk(rows, filled)


def scored_record(record: AnyRecord, row: dict[str, Any], scoring: dict[str, Any]) -> AnyRecord:
    """``record`` with its :func:`score_records` row filled in.

    Candidate sets (ranking records) take the rewards as their scores (any ranks are
    replaced), rating records a ``reward`` rating; every record's ``metadata.scoring``
    holds ``scoring`` (the reward model's name and settings) and the row's values.
    """
    values = {key: value for key, value in row.items() if key not in ("id", "kind")}
    filled = with_rewards(record, row, source=str(scoring.get("reward_model", "scores")))
    metadata = {**filled.metadata, "scoring": {**scoring, **values}}
    return dataclasses.replace(filled, metadata=metadata)
