"""What an item is for each task, what an answer is, and how answers become records.

An item is a prompt and the responses shown together (two for pairwise, N for
ranking, one for rating and binary), kept in canonical order. Each assignment
shows them in its own random order (``display_order[position]`` is the
canonical index of the response shown at that position); answers are stored in
canonical order, so the export never depends on what was shown where.

Canonical answers (JSON objects):

- pairwise: ``{"choice": "a" | "b" | "tie", "strength": 1 | 2 | 3 | null}``
- ranking: ``{"ranks": [rank of response 0, rank of response 1, ...]}`` (1 is best, ties allowed)
- rating: ``{"ratings": {attribute: value or null}}``
- binary: ``{"label": true | false}``

This module is pure Python (no database, no web framework).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefkit.annotate.config import ProjectConfig
from prefkit.data.records import (
    AnyRecord,
    BinaryRecord,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    majority_outcome,
    parse_text,
    render_text,
    text_to_json,
)

MAX_RANKING_RESPONSES = 20
STRENGTHS = {1: "slightly better", 2: "better", 3: "much better"}
TIE_POLICY = (
    "outcome = the plurality of the votes (a tie vote counts like any other); when the "
    "top count is shared (e.g. one 'a' and one 'b'), the outcome is 'tie'"
)


class AnswerError(ValueError):
    """A submitted answer that does not fit the task (shown to the annotator)."""


@dataclass(frozen=True)
class Vote:
    """One stored answer, with who gave it and how long it took."""

    annotator: str
    answer: dict[str, Any]
    rationale: str | None
    seconds: float | None
    """Time the page was visible, measured in the browser."""
    server_seconds: float | None
    """Time from showing the item to receiving the answer, measured by the server."""
    submitted_at: float
    display_order: list[int]


# --------------------------------------------------------------------------- items


def item_content(record: AnyRecord, responses: Sequence[Any], ids: Sequence[str] | None) -> dict:
    return {
        "prompt": text_to_json(record.prompt),
        "responses": [text_to_json(response) for response in responses],
        "response_ids": list(ids) if ids is not None else None,
        "source_id": record.id,
        "category": record.category,
        "metadata": record.metadata,
    }


def items_from_record(task: str, record: AnyRecord) -> list[tuple[str, dict]]:
    """The items a record gives: ``(item id, content)``; labels in the record are not shown.

    Pairwise projects take pairwise records and rankings of two responses; ranking
    projects take rankings (e.g. the candidate sets ``prefkit generate`` writes) and
    pairs; rating and binary projects make one item per response of any record
    (``ID/response_a`` and so on when a record has several).
    """
    if task == "pairwise":
        if isinstance(record, PairwiseRecord):
            return [(record.id, item_content(record, [record.response_a, record.response_b], None))]
        if isinstance(record, RankingRecord) and len(record.responses) == 2:
            return [(record.id, item_content(record, record.responses, record.response_ids))]
        raise AnswerError(
            f"record {record.id!r} is a {record.kind} record"
            + (
                f" with {len(record.responses)} responses"
                if isinstance(record, RankingRecord)
                else ""
            )
            + ": a pairwise project needs pairs (use --task ranking, or build pairs first "
            "with 'prefkit data pairs')"
        )
    if task == "ranking":
        if isinstance(record, RankingRecord):
            if len(record.responses) > MAX_RANKING_RESPONSES:
                raise AnswerError(
                    f"record {record.id!r} has {len(record.responses)} responses; a ranking "
                    f"item shows at most {MAX_RANKING_RESPONSES}"
                )
            return [(record.id, item_content(record, record.responses, record.response_ids))]
        if isinstance(record, PairwiseRecord):
            return [(record.id, item_content(record, [record.response_a, record.response_b], None))]
        raise AnswerError(
            f"record {record.id!r} is a {record.kind} record with one response: a ranking "
            "project needs several responses per prompt"
        )
    named = record.named_responses()
    if len(named) == 1:
        return [(record.id, item_content(record, [named[0][1]], None))]
    return [(f"{record.id}/{name}", item_content(record, [text], None)) for name, text in named]


def gold_from_record(task: str, config: ProjectConfig, record: AnyRecord) -> tuple[str, dict, dict]:
    """A gold item: ``(item id, content, known canonical answer)`` from a labelled record."""
    expected = {
        "pairwise": PairwiseRecord,
        "ranking": RankingRecord,
        "rating": RatingRecord,
        "binary": BinaryRecord,
    }[task]
    if not isinstance(record, expected):
        raise AnswerError(
            f"gold record {record.id!r} is a {record.kind} record; gold items of a {task} "
            f"project are {task} records with their known answer"
        )
    ((item_id, content),) = items_from_record(task, record)
    if isinstance(record, PairwiseRecord):
        answer: dict[str, Any] = {"choice": record.outcome, "strength": None}
    elif isinstance(record, BinaryRecord):
        answer = {"label": record.label}
    elif isinstance(record, RatingRecord):
        names = {a.name for a in config.attributes}
        unknown = set(record.ratings) - names
        if unknown:
            raise AnswerError(
                f"gold record {record.id!r}: attribute {sorted(unknown)[0]!r} is not one of "
                f"the project's ({', '.join(sorted(names))})"
            )
        answer = {"ratings": {name: record.ratings.get(name) for name in sorted(names)}}
    else:
        assert isinstance(record, RankingRecord)
        scores = record.preference_scores()
        if any(score is None for score in scores):
            raise AnswerError(f"gold record {record.id!r}: every response needs a score or rank")
        answer = {"ranks": ranks_from_scores(scores)}  # type: ignore[arg-type]
    return item_id, content, answer


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """Competition ranks (1 is best; equal scores share the best rank of their group)."""
    return [1 + sum(other > score for other in scores) for score in scores]


def display_order(n_responses: int, rng: random.Random) -> list[int]:
    """A random order of the responses for one assignment (canonical index per position)."""
    order = list(range(n_responses))
    rng.shuffle(order)
    return order


def text_for_model(text: Any) -> str:
    """A stored text as the plain string a reward model reads."""
    return render_text(parse_text(text, "text", allow_empty=True))


# ------------------------------------------------------------------------- answers


def parse_answer(
    task: str, config: ProjectConfig, form: Mapping[str, str], order: Sequence[int]
) -> dict[str, Any]:
    """The canonical answer from a submitted form (positions are undone with ``order``)."""
    if task == "pairwise":
        choice = form.get("choice", "")
        if choice not in ("left", "right", "tie"):
            raise AnswerError("choose A, B or tie (keys 1, 2, 3)")
        if choice == "tie":
            canonical = "tie"
        else:
            shown_index = order[0 if choice == "left" else 1]
            canonical = "a" if shown_index == 0 else "b"
        strength = _optional_int(form.get("strength", ""), "strength", set(STRENGTHS))
        return {"choice": canonical, "strength": None if canonical == "tie" else strength}
    if task == "binary":
        label = form.get("label", "")
        if label not in ("good", "bad"):
            raise AnswerError("choose thumbs up or thumbs down (keys 1, 2)")
        return {"label": label == "good"}
    if task == "rating":
        ratings: dict[str, int | None] = {}
        for attribute in config.attributes:
            ratings[attribute.name] = _optional_int(
                form.get(f"rating.{attribute.name}", ""), attribute.name, set(attribute.values)
            )
        if all(value is None for value in ratings.values()):
            raise AnswerError("rate at least one attribute")
        return {"ratings": ratings}
    if task == "ranking":
        n = len(order)
        ranks: list[int | None] = [None] * n
        for position, canonical_index in enumerate(order):
            rank = _optional_int(
                form.get(f"rank.{position}", ""),
                f"rank of response {position + 1}",
                set(range(1, n + 1)),
            )
            if rank is None:
                raise AnswerError(f"give every response a rank from 1 to {n} (ties allowed)")
            ranks[canonical_index] = rank
        return {"ranks": ranks}
    raise AnswerError(f"unknown task {task!r}")


def _optional_int(text: str, name: str, allowed: set[int]) -> int | None:
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise AnswerError(f"{name}: expected a whole number, found {text[:20]!r}") from None
    if value not in allowed:
        raise AnswerError(f"{name}: expected one of {sorted(allowed)}, found {value}")
    return value


def displayed_answer(task: str, answer: dict[str, Any], order: Sequence[int]) -> dict[str, str]:
    """Form values that show ``answer`` again on a page with ``order`` (after an undo)."""
    if task == "pairwise":
        choice = answer["choice"]
        if choice == "tie":
            values = {"choice": "tie"}
        else:
            canonical_index = 0 if choice == "a" else 1
            values = {"choice": "left" if order[0] == canonical_index else "right"}
        if answer.get("strength") is not None:
            values["strength"] = str(answer["strength"])
        return values
    if task == "binary":
        return {"label": "good" if answer["label"] else "bad"}
    if task == "rating":
        return {
            f"rating.{name}": str(value)
            for name, value in answer["ratings"].items()
            if value is not None
        }
    return {f"rank.{position}": str(answer["ranks"][index]) for position, index in enumerate(order)}


# ----------------------------------------------------------------------- agreement


def agreement_units(task: str, config: ProjectConfig, answer: dict[str, Any]) -> dict[str, float]:
    """Answer -> values per agreement unit suffix (one unit per item, attribute or response).

    pairwise codes a/b/tie as 0/1/2 and binary good/bad as 1/0 (nominal); ratings give
    one unit per attribute; rankings one unit per response (ordinal ranks).
    """
    if task == "pairwise":
        return {"": float({"a": 0, "b": 1, "tie": 2}[answer["choice"]])}
    if task == "binary":
        return {"": 1.0 if answer["label"] else 0.0}
    if task == "rating":
        return {
            name: float(value) for name, value in answer["ratings"].items() if value is not None
        }
    return {str(index): float(rank) for index, rank in enumerate(answer["ranks"])}


def gold_score(task: str, answer: dict[str, Any], gold: dict[str, Any]) -> float:
    """How well an answer matches the gold answer, in [0, 1].

    pairwise and binary: 1 when equal; rating: the share of gold attributes given the
    gold value; ranking: the share of response pairs ordered as in gold (a tie in gold
    is matched only by a tie).
    """
    if task == "pairwise":
        return float(answer["choice"] == gold["choice"])
    if task == "binary":
        return float(answer["label"] == gold["label"])
    if task == "rating":
        expected = {k: v for k, v in gold["ratings"].items() if v is not None}
        if not expected:
            return 0.0
        given = answer["ratings"]
        return sum(given.get(k) == v for k, v in expected.items()) / len(expected)
    ranks, gold_ranks = answer["ranks"], gold["ranks"]
    pairs = [(i, j) for i in range(len(ranks)) for j in range(i + 1, len(ranks))]
    if not pairs:
        return 0.0

    def sign(x: float) -> int:
        return (x > 0) - (x < 0)

    return sum(
        sign(ranks[i] - ranks[j]) == sign(gold_ranks[i] - gold_ranks[j]) for i, j in pairs
    ) / len(pairs)


# -------------------------------------------------------------------------- export


def export_record(
    task: str,
    config: ProjectConfig,
    item_id: str,
    content: dict[str, Any],
    votes: Sequence[Vote],
    *,
    gold: dict[str, Any] | None = None,
    project: str = "",
) -> tuple[AnyRecord | None, str | None]:
    """One canonical record with every vote kept; ``(None, reason)`` when none can be made.

    pairwise: ``votes`` in submission order, outcome by :data:`TIE_POLICY`, strength
    the mean strength of the votes that agree with a non-tie outcome. ranking: the
    mean rank of each response over annotators. rating: the mean of each attribute
    over the annotators who rated it. binary: the majority label (an even split gives
    no record, counted by the caller). Each vote, with its strength, rationale,
    times and the order it was shown in, is in ``metadata["annotate"]["votes"]``.
    """
    if not votes:
        return None, "no answers"
    annotation: dict[str, Any] = {
        "project": project,
        "task": task,
        "votes": [
            {
                "annotator": vote.annotator,
                **vote.answer,
                "rationale": vote.rationale,
                "seconds": vote.seconds,
                "server_seconds": vote.server_seconds,
                "submitted_at": vote.submitted_at,
                "display_order": vote.display_order,
            }
            for vote in votes
        ],
    }
    if gold is not None:
        annotation["gold"] = gold
    source_metadata = dict(content.get("metadata") or {})
    if "annotate" in source_metadata:  # an earlier round's votes (re-annotated export): kept
        annotation["previous"] = source_metadata.pop("annotate")
    metadata = {**source_metadata, "annotate": annotation}
    common = {"id": item_id, "category": content.get("category"), "metadata": metadata}
    prompt, responses = content["prompt"], content["responses"]
    if task == "pairwise":
        choices = tuple(vote.answer["choice"] for vote in votes)
        outcome = majority_outcome(choices, split="tie")
        strengths = [
            vote.answer["strength"]
            for vote in votes
            if outcome != "tie"
            and vote.answer["choice"] == outcome
            and vote.answer.get("strength") is not None
        ]
        annotation["aggregation"] = TIE_POLICY
        record: AnyRecord = PairwiseRecord(
            prompt=prompt,
            response_a=responses[0],
            response_b=responses[1],
            outcome=outcome,
            votes=choices,
            strength=sum(strengths) / len(strengths) if strengths else None,
            **common,
        )
        return record, None
    if task == "binary":
        counts = Counter(vote.answer["label"] for vote in votes)
        if counts[True] == counts[False]:
            return None, "even split between thumbs up and down"
        annotation["aggregation"] = "label = the majority of the votes"
        return BinaryRecord(
            prompt=prompt, response=responses[0], label=counts[True] > counts[False], **common
        ), None
    if task == "rating":
        means: dict[str, float | None] = {}
        for attribute in config.attributes:
            values = [
                vote.answer["ratings"].get(attribute.name)
                for vote in votes
                if vote.answer["ratings"].get(attribute.name) is not None
            ]
            means[attribute.name] = sum(values) / len(values) if values else None
        annotation["aggregation"] = "ratings = the mean over the annotators who rated it"
        return RatingRecord(prompt=prompt, response=responses[0], ratings=means, **common), None
    n = len(responses)
    mean_ranks = [sum(vote.answer["ranks"][i] for vote in votes) / len(votes) for i in range(n)]
    annotation["aggregation"] = "ranks = the mean rank of each response over annotators"
    ids = content.get("response_ids")
    return RankingRecord(
        prompt=prompt,
        responses=tuple(responses),
        ranks=tuple(mean_ranks),
        response_ids=tuple(ids) if ids else None,
        **common,
    ), None


def check_source_text_sizes(content: dict[str, Any], limit: int) -> None:
    """Reject an item whose texts together exceed ``limit`` characters (pages stay usable)."""
    total = len(str(content["prompt"])) + sum(len(str(r)) for r in content["responses"])
    if total > limit:
        raise AnswerError(
            f"item {content['source_id']!r}: {total:,} characters of text; an item shows at "
            f"most {limit:,}"
        )
