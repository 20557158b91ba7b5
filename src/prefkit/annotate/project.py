"""Projects and annotators: create them, report on them, export what people said.

>>> from prefkit.annotate.project import create_project, add_annotator, export_project
>>> from prefkit.annotate.store import open_store
>>> store = open_store("sqlite:///annotate.db")
>>> create_project(store, "helpfulness", records, ProjectConfig(task="pairwise", overlap=3))
>>> token = add_annotator(store, "helpfulness", "ana")      # shown once; only a hash is kept
>>> report = project_report(store, "helpfulness")            # progress and agreement
>>> export_project(store, "helpfulness", "labels.jsonl")     # every vote kept
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from prefkit.annotate import agreement
from prefkit.annotate.assign import Project, load_project
from prefkit.annotate.config import (
    AnnotateError,
    ProjectConfig,
    check_annotator_name,
    check_project_name,
)
from prefkit.annotate.priority import random_priorities, reward_margins, uncertainty_priorities
from prefkit.annotate.schema import (
    LEASED,
    SKIPPED,
    annotators,
    answers,
    assignments,
    items,
    projects,
)
from prefkit.annotate.security import hash_token, new_token
from prefkit.annotate.store import Store
from prefkit.annotate.tasks import (
    AnswerError,
    Vote,
    agreement_units,
    check_source_text_sizes,
    export_record,
    gold_from_record,
    gold_score,
    items_from_record,
)
from prefkit.data.records import AnyRecord

MAX_ITEM_CHARS = 200_000
MAX_GUIDELINES_CHARS = 200_000
MIN_SHARED_FOR_FLAG = 5
MIN_GOLD_FOR_FLAG = 3


@dataclass(frozen=True)
class CreateSummary:
    n_items: int
    n_gold: int


def require_project(store: Store, name: str) -> Project:
    with store.read() as connection:
        project = load_project(connection, name)
    if project is None:
        with store.read() as connection:
            names = connection.execute(select(projects.c.name).order_by(projects.c.name)).scalars()
            known = ", ".join(names) or "none yet"
        raise AnnotateError(f"no project {name!r} in this database (projects: {known})")
    return project


def check_reward_option(config: ProjectConfig, reward_dir: str | Path | None) -> None:
    """A reward model goes with the uncertainty order, and only with it."""
    if config.priority == "uncertainty" and reward_dir is None:
        raise AnnotateError("--priority uncertainty needs --reward RM_DIR (a reward-model folder)")
    if config.priority == "random" and reward_dir is not None:
        raise AnnotateError("--reward is used only with --priority uncertainty")


def create_project(
    store: Store,
    name: str,
    records: Iterable[AnyRecord],
    config: ProjectConfig,
    *,
    guidelines: str = "",
    gold: Iterable[AnyRecord] = (),
    reward_dir: str | Path | None = None,
    source: str = "data",
    gold_source: str = "gold",
) -> CreateSummary:
    """Create a project from records (and gold records with known answers)."""
    check_project_name(name)
    if len(guidelines) > MAX_GUIDELINES_CHARS:
        raise AnnotateError(
            f"guidelines: {len(guidelines):,} characters; at most {MAX_GUIDELINES_CHARS:,}"
        )
    check_reward_option(config, reward_dir)
    regular: list[tuple[str, dict]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        try:
            made = items_from_record(config.task, record)
            for _, content in made:
                check_source_text_sizes(content, MAX_ITEM_CHARS)
        except AnswerError as error:
            raise AnnotateError(f"{source} (record {index}): {error}") from None
        for item_id, content in made:
            if item_id in seen:
                raise AnnotateError(
                    f"{source} (record {index}): id {item_id!r} already used by record "
                    f"{seen[item_id]}; item ids must be unique"
                )
            seen[item_id] = index
            regular.append((item_id, content))
    if not regular:
        raise AnnotateError(f"{source}: no records to annotate")
    gold_items: list[tuple[str, dict, dict]] = []
    for index, record in enumerate(gold):
        try:
            item_id, content, answer = gold_from_record(config.task, config, record)
            check_source_text_sizes(content, MAX_ITEM_CHARS)
        except AnswerError as error:
            raise AnnotateError(f"{gold_source} (record {index}): {error}") from None
        if item_id in seen:
            raise AnnotateError(
                f"{gold_source} (record {index}): id {item_id!r} is also an item of {source}"
            )
        seen[item_id] = index
        gold_items.append((item_id, content, answer))

    margins: list[float | None] = [None] * len(regular)
    if config.priority == "uncertainty":
        assert reward_dir is not None
        computed = reward_margins(reward_dir, config.task, [content for _, content in regular])
        margins = list(computed)
        priorities = uncertainty_priorities(computed, config.seed)
    else:
        priorities = random_priorities(len(regular), config.seed)
    gold_priorities = random_priorities(len(gold_items), config.seed + 1)

    now = time.time()
    try:
        with store.write() as connection:
            project_id = connection.execute(
                insert(projects)
                .values(
                    name=name,
                    task=config.task,
                    config=config.to_json(),
                    guidelines=guidelines.replace("\x00", ""),
                    created_at=now,
                )
                .returning(projects.c.id)
            ).scalar_one()
            rows = [
                {
                    "project_id": project_id,
                    "external_id": item_id,
                    "content": content,
                    "priority": priority,
                    "model_margin": margin,
                    "is_gold": False,
                    "gold_answer": None,
                    "n_taken": 0,
                    "n_done": 0,
                }
                for (item_id, content), priority, margin in zip(regular, priorities, margins)
            ]
            rows += [
                {
                    "project_id": project_id,
                    "external_id": item_id,
                    "content": content,
                    "priority": priority,
                    "model_margin": None,
                    "is_gold": True,
                    "gold_answer": answer,
                    "n_taken": 0,
                    "n_done": 0,
                }
                for (item_id, content, answer), priority in zip(gold_items, gold_priorities)
            ]
            for start in range(0, len(rows), 1000):
                connection.execute(insert(items), rows[start : start + 1000])
    except IntegrityError:
        raise AnnotateError(
            f"a project named {name!r} already exists in this database; choose another name"
        ) from None
    return CreateSummary(n_items=len(regular), n_gold=len(gold_items))


def add_annotator(store: Store, project_name: str, name: str, *, admin: bool = False) -> str:
    """Add an annotator (or admin) and return their login token: it is not stored anywhere."""
    check_annotator_name(name)
    project = require_project(store, project_name)
    token = new_token()
    try:
        with store.write() as connection:
            connection.execute(
                insert(annotators).values(
                    project_id=project.id,
                    name=name,
                    token_hash=hash_token(token),
                    is_admin=admin,
                    created_at=time.time(),
                )
            )
    except IntegrityError:
        raise AnnotateError(f"project {project_name!r} already has an annotator {name!r}") from None
    return token


# --------------------------------------------------------------------------- report


@dataclass
class AnnotatorRow:
    name: str
    is_admin: bool
    done: int = 0
    leased: int = 0
    skipped: int = 0
    median_seconds: float | None = None
    agreement: float | None = None
    """Agreement with the others' consensus (see :func:`prefkit.annotate.agreement.coder_agreement`)."""
    n_shared: int = 0
    """Units compared for ``agreement``."""
    gold_accuracy: float | None = None
    n_gold: int = 0
    flags: list[str] = field(default_factory=list)


@dataclass
class ItemRow:
    external_id: str
    is_gold: bool
    n_done: int
    n_taken: int
    summary: str
    """The answers so far, e.g. ``a 2, tie 1``."""
    model_margin: float | None


@dataclass
class AgreementRow:
    name: str
    """What was compared: ``choice``, ``label``, an attribute, or ``ranks``."""
    level: str
    alpha: float
    fleiss_kappa: float | None
    n_units: int
    """Units with at least two answers."""


@dataclass
class ProjectReport:
    name: str
    task: str
    overlap: int
    n_items: int
    n_gold: int
    n_answers: int
    labels_needed: int
    labels_done: int
    items_complete: int
    annotators: list[AnnotatorRow]
    items: list[ItemRow]
    agreement: list[AgreementRow]
    flag_below: float

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _load_votes(store: Store, project: Project) -> list[Any]:
    with store.read() as connection:
        return connection.execute(
            select(
                answers.c.item_id,
                answers.c.value,
                answers.c.rationale,
                answers.c.seconds,
                answers.c.server_seconds,
                answers.c.submitted_at,
                annotators.c.name.label("annotator"),
                assignments.c.display_order,
            )
            .join(annotators, annotators.c.id == answers.c.annotator_id)
            .join(assignments, assignments.c.id == answers.c.assignment_id)
            .where(answers.c.project_id == project.id)
            .order_by(answers.c.submitted_at, answers.c.id)
        ).all()


def _summary(task: str, values: Sequence[dict]) -> str:
    if not values:
        return ""
    if task == "pairwise":
        counts = Counter(value["choice"] for value in values)
    elif task == "binary":
        counts = Counter("up" if value["label"] else "down" for value in values)
    elif task == "rating":
        names = sorted({name for value in values for name in value["ratings"]})
        parts = []
        for name in names:
            given = [v["ratings"][name] for v in values if v["ratings"].get(name) is not None]
            if given:
                parts.append(f"{name} {statistics.fmean(given):.2f}")
        return ", ".join(parts)
    else:
        n = len(values[0]["ranks"])
        means = [statistics.fmean(value["ranks"][i] for value in values) for i in range(n)]
        return "mean ranks " + " ".join(f"{mean:.1f}" for mean in means)
    return ", ".join(f"{name} {count}" for name, count in counts.most_common())


def project_report(store: Store, name: str) -> ProjectReport:
    """Progress per annotator and per item, agreement, gold accuracy and flags."""
    project = require_project(store, name)
    config = project.config
    with store.read() as connection:
        item_rows = connection.execute(
            select(
                items.c.id,
                items.c.external_id,
                items.c.is_gold,
                items.c.gold_answer,
                items.c.n_done,
                items.c.n_taken,
                items.c.model_margin,
            )
            .where(items.c.project_id == project.id)
            .order_by(items.c.id)
        ).all()
        people = connection.execute(
            select(annotators.c.id, annotators.c.name, annotators.c.is_admin)
            .where(annotators.c.project_id == project.id)
            .order_by(annotators.c.name)
        ).all()
        states = connection.execute(
            select(assignments.c.annotator_id, assignments.c.state, func.count())
            .where(assignments.c.project_id == project.id)
            .group_by(assignments.c.annotator_id, assignments.c.state)
        ).all()
    votes = _load_votes(store, project)
    names_by_id = {row.id: row.name for row in people}
    rows = {row.name: AnnotatorRow(row.name, bool(row.is_admin)) for row in people}
    for annotator_id, state, count in states:
        row = rows[names_by_id[annotator_id]]
        if state == LEASED:
            row.leased = count
        elif state == SKIPPED:
            row.skipped = count

    item_by_id = {row.id: row for row in item_rows}
    values_by_item: dict[int, list[dict]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    gold_scores: dict[str, list[float]] = defaultdict(list)
    entries: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    for vote in votes:
        rows[vote.annotator].done += 1
        values_by_item[vote.item_id].append(vote.value)
        time_spent = vote.seconds if vote.seconds is not None else vote.server_seconds
        if time_spent is not None:
            seconds[vote.annotator].append(time_spent)
        item = item_by_id[vote.item_id]
        if item.is_gold and item.gold_answer is not None:
            gold_scores[vote.annotator].append(
                gold_score(project.task, vote.value, item.gold_answer)
            )
        for suffix, value in agreement_units(project.task, config, vote.value).items():
            entries[suffix].append((f"{vote.item_id}/{suffix}", vote.annotator, value))

    agreement_rows: list[AgreementRow] = []
    if project.task == "rating":
        level = config.level
        groups = {
            attribute.name: entries.get(attribute.name, []) for attribute in config.attributes
        }
    elif project.task == "ranking":
        level = "ordinal"
        groups = {"ranks": [entry for suffix in sorted(entries) for entry in entries[suffix]]}
    else:
        level = "nominal"
        groups = {"choice" if project.task == "pairwise" else "label": entries.get("", [])}
    for group_name, triples in groups.items():
        if not triples:
            agreement_rows.append(AgreementRow(group_name, level, float("nan"), None, 0))
            continue
        data, _, _ = agreement.reliability_matrix(triples)
        kappa = (
            agreement.fleiss_kappa(agreement.category_counts(data))
            if project.task != "ranking"
            else None
        )
        agreement_rows.append(
            AgreementRow(
                group_name,
                level,
                agreement.krippendorff_alpha(data, level),  # type: ignore[arg-type]
                kappa,
                agreement.pairable_units(data),
            )
        )

    all_triples = [entry for triples in groups.values() for entry in triples]
    if all_triples:
        data, coders, _ = agreement.reliability_matrix(all_triples)
        for coder, result in zip(coders, agreement.coder_agreement(data, level)):  # type: ignore[arg-type]
            rows[coder].agreement = None if result.n_units == 0 else result.agreement
            rows[coder].n_shared = result.n_units
    for name_, row in rows.items():
        if seconds[name_]:
            row.median_seconds = statistics.median(seconds[name_])
        if gold_scores[name_]:
            row.n_gold = len(gold_scores[name_])
            row.gold_accuracy = statistics.fmean(gold_scores[name_])
        if row.n_shared >= MIN_SHARED_FOR_FLAG and row.agreement is not None:
            if row.agreement < config.flag_below:
                row.flags.append(f"agreement {row.agreement:.2f} < {config.flag_below:g}")
        if row.n_gold >= MIN_GOLD_FOR_FLAG and row.gold_accuracy is not None:
            if row.gold_accuracy < config.flag_below:
                row.flags.append(f"gold accuracy {row.gold_accuracy:.2f} < {config.flag_below:g}")

    regular = [row for row in item_rows if not row.is_gold]
    return ProjectReport(
        name=project.name,
        task=project.task,
        overlap=config.overlap,
        n_items=len(regular),
        n_gold=len(item_rows) - len(regular),
        n_answers=len(votes),
        labels_needed=len(regular) * config.overlap,
        labels_done=sum(min(row.n_done, config.overlap) for row in regular),
        items_complete=sum(row.n_done >= config.overlap for row in regular),
        annotators=list(rows.values()),
        items=[
            ItemRow(
                row.external_id,
                bool(row.is_gold),
                row.n_done,
                row.n_taken,
                _summary(project.task, values_by_item.get(row.id, [])),
                row.model_margin,
            )
            for row in item_rows
        ],
        agreement=agreement_rows,
        flag_below=config.flag_below,
    )


# --------------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    n_written: int
    n_items: int
    n_votes: int
    skipped: Counter
    """Items not written, by reason."""

    def describe(self) -> str:
        text = f"wrote {self.n_written} records with {self.n_votes} votes (of {self.n_items} items)"
        if self.skipped:
            text += "; not written: " + ", ".join(
                f"{count} with {reason}" for reason, count in self.skipped.most_common()
            )
        return text


def export_records(
    store: Store, name: str, *, include_gold: bool = True, min_votes: int = 1
) -> tuple[list[AnyRecord], ExportSummary]:
    """Canonical records, one per item with at least ``min_votes`` answers, every vote kept."""
    if min_votes < 1:
        raise AnnotateError(f"min_votes must be >= 1, found {min_votes}")
    project = require_project(store, name)
    with store.read() as connection:
        item_rows = connection.execute(
            select(
                items.c.id,
                items.c.external_id,
                items.c.content,
                items.c.is_gold,
                items.c.gold_answer,
            )
            .where(items.c.project_id == project.id)
            .order_by(items.c.id)
        ).all()
    by_item: dict[int, list[Vote]] = defaultdict(list)
    for row in _load_votes(store, project):
        by_item[row.item_id].append(
            Vote(
                annotator=row.annotator,
                answer=row.value,
                rationale=row.rationale,
                seconds=row.seconds,
                server_seconds=row.server_seconds,
                submitted_at=row.submitted_at,
                display_order=list(row.display_order),
            )
        )
    records: list[AnyRecord] = []
    skipped: Counter = Counter()
    n_votes = 0
    for row in item_rows:
        if row.is_gold and not include_gold:
            skipped["gold items left out"] += 1
            continue
        votes = by_item.get(row.id, [])
        if len(votes) < min_votes:
            skipped[f"fewer than {min_votes} answers" if min_votes > 1 else "no answers"] += 1
            continue
        record, reason = export_record(
            project.task,
            project.config,
            row.external_id,
            row.content,
            votes,
            gold=row.gold_answer if row.is_gold else None,
            project=project.name,
        )
        if record is None:
            skipped[reason] += 1
            continue
        records.append(record)
        n_votes += len(votes)
    return records, ExportSummary(len(records), len(item_rows), n_votes, skipped)


def export_project(
    store: Store, name: str, out: str | Path, *, include_gold: bool = True, min_votes: int = 1
) -> ExportSummary:
    """Write :func:`export_records` to ``out`` (.jsonl, .jsonl.gz or .parquet)."""
    from prefkit.data.write import output_kind, write_records

    try:
        output_kind(out)
    except ValueError as error:
        raise AnnotateError(str(error)) from None
    records, summary = export_records(store, name, include_gold=include_gold, min_votes=min_votes)
    write_records(records, out)
    return summary
