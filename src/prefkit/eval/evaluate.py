"""The evaluation engine: score records with one or more scorers and compute every metric.

>>> from prefkit.eval.evaluate import evaluate
>>> from prefkit.eval.scorers import LengthScorer
>>> run = evaluate([LengthScorer(), my_scorer], records, by="category")
>>> run.to_json()["models"][1]["accuracy"]

Each distinct (prompt, response) item is scored once per scorer, however many
records hold it; all scorers see the same records in the same order, so their
results sit side by side.

Pairwise records give :func:`prefkit.eval.metrics.pairwise_report` (accuracy,
half credit, three-way accuracy when humans gave ties, agreement with each
annotator when records carry votes, calibration, length bias, per-category
accuracy) plus, when every category is a RewardBench v1 subset name, the
RewardBench v1 section scores (``rewardbench_v1``). Ranking records give a
``ranking`` block: Kendall tau-b and Spearman per prompt, averaged; NDCG@k when
the gold scores are graded relevance (all >= 0; ranks are not); and a
``best_of_n`` block with RewardBench 2's rule over the rankings that have a
single top item.

A pairwise judge (:class:`~prefkit.eval.scorers.PairJudge`) has no reward per
response; its verdict becomes rewards 1 / 0 (a preferred), 0 / 1 (b preferred)
or 0.5 / 0.5 (tie), so a judge's tie counts as wrong in strict accuracy, half
right with half credit, and as a predicted tie in three-way accuracy. Its
calibration numbers describe these fixed margins, not a probability.

A scorer with a ``temperature`` attribute (a prefkit reward model fitted one on
held-out pairs, see :mod:`prefkit.rm.train`) is calibrated with
P(a) = sigmoid(margin / temperature); any other with sigmoid(margin). Accuracy and
every other metric read the margins alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from prefkit.data.records import (
    AnyRecord,
    PairwiseRecord,
    RankingRecord,
    Text,
    render_text,
    text_key,
    text_length,
)
from prefkit.errors import UserInputError
from prefkit.eval.metrics import (
    REWARDBENCH_V1_PRIOR_SETS,
    REWARDBENCH_V1_UNSCORED_PRIOR_SETS,
    REWARDBENCH_V1_WEIGHTS,
    best_of_n_credit,
    bootstrap_ci,
    json_ready,
    mean_ndcg,
    pairwise_report,
    ranking_correlation,
    rewardbench_v1_scores,
)
from prefkit.eval.results import EvaluationRun, ModelEvaluation, ScoredPair
from prefkit.eval.scorers import PairJudge, Scorer, ScorerError

__all__ = ["evaluate", "MISSING_CATEGORY"]

MISSING_CATEGORY = "(missing)"
"""Category of a record that lacks the ``by`` field."""

_VOTE_CODES = {"a": 0, "b": 1, "tie": 2, None: -1}
_REWARDBENCH_SUBSETS = (
    set(REWARDBENCH_V1_WEIGHTS)
    | set(REWARDBENCH_V1_PRIOR_SETS)
    | set(REWARDBENCH_V1_UNSCORED_PRIOR_SETS)
)
_JUDGE_REWARDS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}


class _Items:
    """Distinct (prompt, response) items, each with a stable index."""

    def __init__(self) -> None:
        self.index: dict[tuple[str, str], int] = {}
        self.prompts: list[Text] = []
        self.responses: list[Text] = []

    def add(self, prompt: Text, response: Text) -> int:
        key = (text_key(prompt), text_key(response))
        if key not in self.index:
            self.index[key] = len(self.prompts)
            self.prompts.append(prompt)
            self.responses.append(response)
        return self.index[key]


def _category_of(record: AnyRecord, by: str | None) -> str | None:
    if by is None or by == "category":
        return record.category
    value = record.metadata.get(by)
    return None if value is None else str(value)


def _categories(records: Sequence[AnyRecord], by: str | None) -> list[str] | None:
    """Per-record category, or None when no record has one (and none was asked for)."""
    values = [_category_of(record, by) for record in records]
    if all(value is None for value in values):
        if by is None:
            return None
        keys = sorted({key for record in records for key in record.metadata})
        raise UserInputError(
            f"--by {by!r}: no record has this field; use 'category' or a metadata key "
            f"({', '.join(keys[:20]) or 'the records have no metadata'})"
        )
    return [MISSING_CATEGORY if value is None else value for value in values]


def _vote_matrix(records: Sequence[PairwiseRecord]) -> np.ndarray | None:
    """(n, n_annotators) vote codes, -1 where an annotator did not vote; None without votes."""
    width = max((len(record.votes or ()) for record in records), default=0)
    if width == 0:
        return None
    matrix = np.full((len(records), width), -1, dtype=np.int8)
    for row, record in enumerate(records):
        for column, vote in enumerate(record.votes or ()):
            matrix[row, column] = _VOTE_CODES[vote]
    return matrix


def _prompt_ids(records: Sequence[AnyRecord]) -> list[str] | None:
    """Prompt keys for a cluster bootstrap, only when some prompt repeats."""
    keys = [text_key(record.prompt) for record in records]
    return keys if len(set(keys)) < len(keys) else None


def _checked_rewards(name: str, rewards: Any, n: int) -> np.ndarray:
    array = np.asarray(rewards, dtype=np.float64)
    if array.shape != (n,):
        raise ScorerError(
            f"scorer {name!r} returned shape {array.shape} for {n} items; expected ({n},)"
        )
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ScorerError(
            f"scorer {name!r} gave the non-finite reward {array[bad[0]]} to item {int(bad[0])} "
            f"({bad.size} such items); rewards must be finite numbers"
        )
    return array


def _pairwise_metrics(
    records: Sequence[PairwiseRecord],
    rewards_a: np.ndarray,
    rewards_b: np.ndarray,
    categories: list[str] | None,
    *,
    tie_band: float | None,
    seed: int,
    n_resamples: int,
    temperature: float = 1.0,
) -> dict[str, Any]:
    outcomes = [record.outcome for record in records]
    report = pairwise_report(
        rewards_a,
        rewards_b,
        outcomes,
        lengths_a=[text_length(record.response_a) for record in records],
        lengths_b=[text_length(record.response_b) for record in records],
        category=categories,
        prompt_ids=_prompt_ids(records),
        votes=_vote_matrix(records),
        seed=seed,
        n_resamples=n_resamples,
        tie_band=tie_band,
        temperature=temperature,
    )
    report["rewardbench_v1"] = None
    if categories is not None and set(categories) <= _REWARDBENCH_SUBSETS:
        strict = np.array([outcome != "tie" for outcome in outcomes])
        chosen = np.where(np.array(outcomes) == "b", rewards_b, rewards_a)[strict]
        rejected = np.where(np.array(outcomes) == "b", rewards_a, rewards_b)[strict]
        subsets = np.array(categories)[strict]
        if subsets.size:
            report["rewardbench_v1"] = json_ready(rewardbench_v1_scores(chosen, rejected, subsets))
    return report


def _ranking_metrics(
    records: Sequence[RankingRecord],
    predicted: list[np.ndarray],
    *,
    ndcg_k: int | None,
    seed: int,
    n_resamples: int,
) -> dict[str, Any]:
    gold = [
        np.array([math.nan if value is None else value for value in record.preference_scores()])
        for record in records
    ]
    ranking: dict[str, Any] = {"n_rankings": len(records), **ranking_correlation(predicted, gold)}
    graded = all(record.scores is not None for record in records) and all(
        np.all(values[~np.isnan(values)] >= 0) for values in gold
    )
    ranking["ndcg"] = mean_ndcg(predicted, gold, k=ndcg_k) if graded else None
    if not graded:
        ranking["ndcg_note"] = (
            "NDCG needs graded relevance (scores >= 0); these rankings hold ranks or negative "
            "scores, so only the rank correlations apply"
        )
    # Best-of-N (RewardBench 2): the rankings whose gold scores have a single top item.
    candidates, correct = [], []
    n_tied_top = 0
    for scores, values in zip(predicted, gold):
        rated = ~np.isnan(values)
        if rated.sum() < 2:
            continue
        top = np.flatnonzero(values == values[rated].max())
        if top.size != 1:
            n_tied_top += 1
            continue
        kept = np.flatnonzero(rated)
        candidates.append(scores[kept])
        correct.append(int(np.searchsorted(kept, top[0])))
    best_of_n: dict[str, Any] = {
        "n_prompts": len(candidates),
        "n_skipped_tied_top": n_tied_top,
        "accuracy": math.nan,
        "accuracy_ci95": None,
    }
    if candidates:
        credit = best_of_n_credit(candidates, correct)
        best_of_n["accuracy"] = float(credit.mean())
        if n_resamples:
            best_of_n["accuracy_ci95"] = list(
                bootstrap_ci(credit, n_resamples=n_resamples, seed=seed)
            )
    return json_ready({"ranking": ranking, "best_of_n": best_of_n})


def evaluate(
    scorers: Scorer | PairJudge | Sequence[Scorer | PairJudge],
    records: Iterable[AnyRecord],
    *,
    by: str | None = None,
    tie_band: float | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
    ndcg_k: int | None = 10,
    data: str = "",
    n_rejected: int = 0,
    notes: Sequence[str] = (),
) -> EvaluationRun:
    """Evaluate each scorer on the same pairwise and ranking records.

    Args:
        scorers: one scorer / judge or several, evaluated side by side in this order.
        records: :class:`PairwiseRecord` and :class:`RankingRecord` (other kinds raise).
        by: the per-category breakdown: ``"category"`` or a metadata key; ``None``
            uses the records' categories when they have any.
        tie_band: |margin| at or below which a three-way prediction is a tie (fit it
            on a development split); ``None``: 0 when humans gave ties.
        seed, n_resamples: the bootstrap for every ``*_ci95`` (0: no intervals).
        ndcg_k: depth of NDCG for graded rankings (``None``: whole lists).
        data, n_rejected, notes: carried into the :class:`EvaluationRun`.

    Returns one :class:`ModelEvaluation` per scorer: for pairwise data the schema
    of :func:`prefkit.eval.metrics.pairwise_report` plus ``rewardbench_v1``
    (None unless the categories are RewardBench v1 subset names) and the scored
    pairs; for ranking data ``ranking`` and ``best_of_n`` blocks (see the module
    docstring); both when the records mix the two kinds.
    """
    scorer_list = list(scorers) if isinstance(scorers, Sequence) else [scorers]
    if not scorer_list:
        raise UserInputError("evaluate needs at least one scorer")
    names = [scorer.name for scorer in scorer_list]
    if len(set(names)) < len(names):
        raise UserInputError(
            f"scorer names must be distinct to tell the results apart, got {names}"
        )
    record_list = list(records)
    pairwise = [record for record in record_list if isinstance(record, PairwiseRecord)]
    rankings = [record for record in record_list if isinstance(record, RankingRecord)]
    others = [
        record for record in record_list if not isinstance(record, PairwiseRecord | RankingRecord)
    ]
    if others:
        raise UserInputError(
            f"record {others[0].id!r} is a {others[0].kind} record; evaluation needs pairwise or "
            f"ranking records ({len(others)} others found). Convert them first, e.g. "
            "'prefkit data convert IN OUT --to pairwise'"
        )
    if not record_list:
        raise UserInputError("no records to evaluate")

    items = _Items()
    pair_rows = np.array(
        [(items.add(r.prompt, r.response_a), items.add(r.prompt, r.response_b)) for r in pairwise],
        dtype=np.int64,
    ).reshape(-1, 2)  # (P, 2)
    ranking_rows = [
        np.array([items.add(r.prompt, response) for response in r.responses], dtype=np.int64)
        for r in rankings
    ]
    categories = _categories(pairwise, by) if pairwise else None
    run_notes = list(notes)
    if by is not None and rankings:
        run_notes.append(
            f"--by {by!r} applies to pairwise records; ranking metrics are over all rankings"
        )

    models = []
    for scorer in scorer_list:
        n_scorer_notes = len(getattr(scorer, "notes", ()))
        if hasattr(scorer, "score"):
            rewards = _checked_rewards(
                scorer.name, scorer.score(items.prompts, items.responses), len(items.prompts)
            )
            rewards_a, rewards_b = rewards[pair_rows[:, 0]], rewards[pair_rows[:, 1]]
        elif hasattr(scorer, "compare_pairs"):
            if rankings:
                raise ScorerError(
                    f"{scorer.name} compares two responses and gives no reward per response; it "
                    "evaluates pairwise records only (these records hold rankings)"
                )
            # Each distinct (prompt, a, b) is judged once.
            distinct: dict[tuple[int, int], int] = {}
            for row_a, row_b in pair_rows.tolist():
                distinct.setdefault((row_a, row_b), len(distinct))
            verdicts = scorer.compare_pairs(
                [items.prompts[row_a] for row_a, _ in distinct],
                [items.responses[row_a] for row_a, _ in distinct],
                [items.responses[row_b] for _, row_b in distinct],
            )
            pair_rewards = np.array(
                [
                    _JUDGE_REWARDS[verdicts[distinct[(row_a, row_b)]].outcome]
                    for row_a, row_b in pair_rows.tolist()
                ]
            ).reshape(-1, 2)
            rewards_a, rewards_b = pair_rewards[:, 0], pair_rewards[:, 1]
            rewards = None
        else:
            raise TypeError(f"{scorer!r} has neither score() nor compare_pairs()")

        metrics: dict[str, Any] = {
            "n_pairwise_records": len(pairwise),
            "n_ranking_records": len(rankings),
        }
        pairs: list[ScoredPair] = []
        if pairwise:
            metrics.update(
                _pairwise_metrics(
                    pairwise,
                    rewards_a,
                    rewards_b,
                    categories,
                    tie_band=tie_band,
                    seed=seed,
                    n_resamples=n_resamples,
                    temperature=getattr(scorer, "temperature", 1.0),
                )
            )
            pairs = [
                ScoredPair(
                    id=record.id,
                    prompt=render_text(record.prompt),
                    response_a=render_text(record.response_a),
                    response_b=render_text(record.response_b),
                    outcome=record.outcome or "tie",
                    reward_a=float(reward_a),
                    reward_b=float(reward_b),
                    category=None if categories is None else categories[row],
                    length_a=text_length(record.response_a),
                    length_b=text_length(record.response_b),
                )
                for row, (record, reward_a, reward_b) in enumerate(
                    zip(pairwise, rewards_a, rewards_b)
                )
            ]
        if rankings:
            assert rewards is not None
            metrics.update(
                _ranking_metrics(
                    rankings,
                    [rewards[rows] for rows in ranking_rows],
                    ndcg_k=ndcg_k,
                    seed=seed,
                    n_resamples=n_resamples,
                )
            )
        run_notes.extend(list(getattr(scorer, "notes", ()))[n_scorer_notes:])
        models.append(ModelEvaluation(name=scorer.name, metrics=metrics, pairs=pairs))
    return EvaluationRun(
        data=data, models=models, n_records=len(record_list), n_rejected=n_rejected, notes=run_notes
    )
