"""Who labels what: leases with overlap, gold items, submit, skip and undo.

An assignment is a lease on one item for one annotator. Taking a lease takes one
of the item's ``overlap`` slots with a conditional update (see
:mod:`prefkit.annotate.schema`); a lease that is not answered before it expires
gives its slot back, and the item returns to the pool. An answer that arrives
after its lease expired is still stored while the item has a free slot (nothing
the annotator did is lost unless someone else took the place).

Regular items are offered in ``priority`` order. Gold items (known answers) are
not limited by the overlap: each annotator meets each gold item once, as one of
every ``gold_every`` items, until the gold runs out or nothing else is left.

Every function here opens its own transactions on a :class:`Store` and commits
before it returns, so an acknowledged submission is on disk.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from prefkit.annotate.config import ProjectConfig
from prefkit.annotate.schema import (
    DONE,
    EXPIRED,
    LEASED,
    SKIPPED,
    answers,
    assignments,
    items,
    projects,
)
from prefkit.annotate.store import Store
from prefkit.annotate.tasks import display_order

CANDIDATES_PER_ROUND = 8


class AssignmentError(Exception):
    """A submission, skip or undo that cannot be applied; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Project:
    id: int
    name: str
    task: str
    config: ProjectConfig
    guidelines: str


@dataclass(frozen=True)
class Lease:
    """An item given to one annotator, as it is shown to them."""

    assignment_id: int
    item_id: int
    external_id: str
    content: dict[str, Any]
    display_order: list[int]
    is_gold: bool
    expires_at: float
    draft: dict[str, Any] | None
    """The answer taken back by an undo, shown pre-filled."""


@dataclass(frozen=True)
class Progress:
    done: int
    """Answers this annotator has given."""
    total: int
    """done + open leases + items still open to this annotator (changes as others label)."""


def load_project(connection: Connection, name: str) -> Project | None:
    row = connection.execute(select(projects).where(projects.c.name == name)).first()
    if row is None:
        return None
    return Project(row.id, row.name, row.task, ProjectConfig.from_json(row.config), row.guidelines)


def expire_leases(store: Store, project: Project, now: float) -> int:
    """Return the slots of leases that ran out; returns how many expired."""

    def attempt() -> int:
        with store.write() as connection:
            expired = connection.execute(
                update(assignments)
                .where(
                    assignments.c.project_id == project.id,
                    assignments.c.state == LEASED,
                    assignments.c.expires_at < now,
                )
                .values(state=EXPIRED)
                .returning(assignments.c.item_id)
            ).all()
            per_item = Counter(row.item_id for row in expired)
            for item_id in sorted(per_item):
                connection.execute(
                    update(items)
                    .where(items.c.id == item_id)
                    .values(n_taken=items.c.n_taken - per_item[item_id])
                )
            return len(expired)

    return store.retry(attempt)


def next_lease(store: Store, project: Project, annotator_id: int, now: float) -> Lease | None:
    """The item this annotator should label now (their open lease first); ``None`` when done."""
    expire_leases(store, project, now)
    for _ in range(10):
        try:
            return store.retry(lambda: _lease(store, project, annotator_id, now))
        except IntegrityError:
            # Another request of the same annotator leased the same item first.
            continue
    raise RuntimeError("could not lease an item after 10 attempts")


def _lease(store: Store, project: Project, annotator_id: int, now: float) -> Lease | None:
    lease_seconds = project.config.lease_seconds
    with store.write() as connection:
        current = connection.execute(
            select(assignments.c.id)
            .where(
                assignments.c.annotator_id == annotator_id,
                assignments.c.project_id == project.id,
                assignments.c.state == LEASED,
            )
            .order_by(assignments.c.leased_at.desc(), assignments.c.id.desc())
            .limit(1)
        ).first()
        if current is not None:
            connection.execute(
                update(assignments)
                .where(assignments.c.id == current.id)
                .values(expires_at=now + lease_seconds)
            )
            return _load_lease(connection, current.id)
        item_id = None
        if _gold_is_due(connection, project, annotator_id):
            item_id = _take_gold(connection, project, annotator_id)
        if item_id is None:
            item_id = _take_regular(connection, project, annotator_id)
        if item_id is None:
            return None
        n_responses = len(
            connection.execute(select(items.c.content).where(items.c.id == item_id)).scalar_one()[
                "responses"
            ]
        )
        order = display_order(
            n_responses, random.Random(f"{project.config.seed}:{item_id}:{annotator_id}")
        )
        values = {
            "state": LEASED,
            "display_order": order,
            "leased_at": now,
            "expires_at": now + lease_seconds,
            "shown_at": now,
            "draft": None,
        }
        earlier = connection.execute(
            select(assignments.c.id).where(
                assignments.c.item_id == item_id,
                assignments.c.annotator_id == annotator_id,
                assignments.c.state == EXPIRED,
            )
        ).first()
        if earlier is not None:
            connection.execute(
                update(assignments).where(assignments.c.id == earlier.id).values(**values)
            )
            assignment_id = earlier.id
        else:
            assignment_id = connection.execute(
                insert(assignments)
                .values(project_id=project.id, item_id=item_id, annotator_id=annotator_id, **values)
                .returning(assignments.c.id)
            ).scalar_one()
        return _load_lease(connection, assignment_id)


def _mine(annotator_id: int):  # noqa: ANN202 - an EXISTS clause
    return (
        select(assignments.c.id)
        .where(
            assignments.c.item_id == items.c.id,
            assignments.c.annotator_id == annotator_id,
            assignments.c.state != EXPIRED,
        )
        .exists()
    )


def _gold_is_due(connection: Connection, project: Project, annotator_id: int) -> bool:
    has_gold = connection.execute(
        select(items.c.id).where(items.c.project_id == project.id, items.c.is_gold).limit(1)
    ).first()
    if has_gold is None:
        return False
    given = connection.execute(
        select(func.count())
        .select_from(assignments)
        .where(
            assignments.c.annotator_id == annotator_id,
            assignments.c.project_id == project.id,
            assignments.c.state != EXPIRED,
        )
    ).scalar_one()
    every = project.config.gold_every
    return given % every == every - 1


def _take_gold(connection: Connection, project: Project, annotator_id: int) -> int | None:
    item_id = connection.execute(
        select(items.c.id)
        .where(items.c.project_id == project.id, items.c.is_gold, ~_mine(annotator_id))
        .order_by(items.c.priority, items.c.id)
        .limit(1)
    ).scalar()
    if item_id is not None:
        connection.execute(
            update(items).where(items.c.id == item_id).values(n_taken=items.c.n_taken + 1)
        )
    return item_id


def _take_regular(connection: Connection, project: Project, annotator_id: int) -> int | None:
    overlap = project.config.overlap
    for _ in range(4):
        candidates = (
            connection.execute(
                select(items.c.id)
                .where(
                    items.c.project_id == project.id,
                    items.c.is_gold.is_(False),
                    items.c.n_taken < overlap,
                    ~_mine(annotator_id),
                )
                .order_by(items.c.priority, items.c.id)
                .limit(CANDIDATES_PER_ROUND)
            )
            .scalars()
            .all()
        )
        if not candidates:
            return None
        for item_id in candidates:
            taken = connection.execute(
                update(items)
                .where(items.c.id == item_id, items.c.n_taken < overlap)
                .values(n_taken=items.c.n_taken + 1)
            )
            if taken.rowcount == 1:
                return item_id
    return None


def _load_lease(connection: Connection, assignment_id: int) -> Lease:
    row = connection.execute(
        select(
            assignments.c.id,
            assignments.c.item_id,
            assignments.c.display_order,
            assignments.c.expires_at,
            assignments.c.draft,
            items.c.external_id,
            items.c.content,
            items.c.is_gold,
        )
        .join(items, items.c.id == assignments.c.item_id)
        .where(assignments.c.id == assignment_id)
    ).one()
    return Lease(
        assignment_id=row.id,
        item_id=row.item_id,
        external_id=row.external_id,
        content=row.content,
        display_order=list(row.display_order),
        is_gold=bool(row.is_gold),
        expires_at=row.expires_at,
        draft=row.draft,
    )


def lease_for(
    connection: Connection, project: Project, annotator_id: int, assignment_id: int
) -> Lease:
    """The lease ``assignment_id`` if it belongs to this annotator (any state), else an error."""
    owner = connection.execute(
        select(assignments.c.id).where(
            assignments.c.id == assignment_id,
            assignments.c.annotator_id == annotator_id,
            assignments.c.project_id == project.id,
        )
    ).first()
    if owner is None:
        raise AssignmentError("no such assignment", status=404)
    return _load_lease(connection, assignment_id)


def submit(
    store: Store,
    project: Project,
    annotator_id: int,
    assignment_id: int,
    answer: dict[str, Any],
    *,
    rationale: str | None,
    seconds: float | None,
    now: float,
) -> bool:
    """Store the answer of an assignment; ``False`` when it was already stored (a resubmit)."""

    def attempt() -> bool | None:
        with store.write() as connection:
            row = connection.execute(
                select(
                    assignments.c.state,
                    assignments.c.item_id,
                    assignments.c.shown_at,
                    items.c.is_gold,
                )
                .join(items, items.c.id == assignments.c.item_id)
                .where(
                    assignments.c.id == assignment_id,
                    assignments.c.annotator_id == annotator_id,
                    assignments.c.project_id == project.id,
                )
            ).first()
            if row is None:
                raise AssignmentError("no such assignment", status=404)
            if row.state == DONE:
                return False
            if row.state == SKIPPED:
                raise AssignmentError("this item was skipped; its answer was not stored")
            if row.state == EXPIRED:
                condition = items.c.id == row.item_id
                if not row.is_gold:
                    condition = and_(condition, items.c.n_taken < project.config.overlap)
                retaken = connection.execute(
                    update(items).where(condition).values(n_taken=items.c.n_taken + 1)
                )
                if retaken.rowcount != 1:
                    raise AssignmentError(
                        "this item's reservation ran out and others have labelled it since; "
                        "your answer was not stored"
                    )
            closed = connection.execute(
                update(assignments)
                .where(assignments.c.id == assignment_id, assignments.c.state == row.state)
                .values(state=DONE, draft=None)
            )
            if closed.rowcount != 1:
                return None  # changed under us (expired or submitted): read it again
            connection.execute(
                insert(answers).values(
                    assignment_id=assignment_id,
                    project_id=project.id,
                    item_id=row.item_id,
                    annotator_id=annotator_id,
                    value=answer,
                    rationale=rationale,
                    seconds=seconds,
                    server_seconds=None if row.shown_at is None else max(0.0, now - row.shown_at),
                    submitted_at=now,
                )
            )
            connection.execute(
                update(items).where(items.c.id == row.item_id).values(n_done=items.c.n_done + 1)
            )
            return True

    for _ in range(5):
        try:
            outcome = store.retry(attempt)
        except IntegrityError:
            outcome = None  # the same form, submitted twice at once: the other one won
        if outcome is not None:
            return outcome
    return False


def skip(store: Store, project: Project, annotator_id: int, assignment_id: int) -> None:
    """Give the item back without an answer; this annotator will not get it again."""

    def attempt() -> None:
        with store.write() as connection:
            row = connection.execute(
                select(assignments.c.state, assignments.c.item_id).where(
                    assignments.c.id == assignment_id,
                    assignments.c.annotator_id == annotator_id,
                    assignments.c.project_id == project.id,
                )
            ).first()
            if row is None:
                raise AssignmentError("no such assignment", status=404)
            if row.state in (SKIPPED, DONE):
                return
            connection.execute(
                update(assignments)
                .where(assignments.c.id == assignment_id)
                .values(state=SKIPPED, draft=None)
            )
            if row.state == LEASED:
                connection.execute(
                    update(items)
                    .where(items.c.id == row.item_id)
                    .values(n_taken=items.c.n_taken - 1)
                )

    store.retry(attempt)


def undo_last(store: Store, project: Project, annotator_id: int, now: float) -> int | None:
    """Take back this annotator's newest answer: its item is theirs again, pre-filled.

    Returns the assignment id, or ``None`` when they have no answer to take back.
    """

    def attempt() -> int | None:
        with store.write() as connection:
            last = connection.execute(
                select(answers.c.id, answers.c.assignment_id, answers.c.item_id, answers.c.value)
                .where(answers.c.annotator_id == annotator_id, answers.c.project_id == project.id)
                .order_by(answers.c.submitted_at.desc(), answers.c.id.desc())
                .limit(1)
            ).first()
            if last is None:
                return None
            connection.execute(delete(answers).where(answers.c.id == last.id))
            connection.execute(
                update(assignments)
                .where(assignments.c.id == last.assignment_id)
                .values(
                    state=LEASED,
                    leased_at=now,
                    expires_at=now + project.config.lease_seconds,
                    shown_at=now,
                    draft=last.value,
                )
            )
            connection.execute(
                update(items).where(items.c.id == last.item_id).values(n_done=items.c.n_done - 1)
            )
            return last.assignment_id

    return store.retry(attempt)


def progress(connection: Connection, project: Project, annotator_id: int) -> Progress:
    done = connection.execute(
        select(func.count())
        .select_from(answers)
        .where(answers.c.annotator_id == annotator_id, answers.c.project_id == project.id)
    ).scalar_one()
    leased = connection.execute(
        select(func.count())
        .select_from(assignments)
        .where(
            assignments.c.annotator_id == annotator_id,
            assignments.c.project_id == project.id,
            assignments.c.state == LEASED,
        )
    ).scalar_one()
    # items still open to anyone (an index-only count), less those open ones this
    # annotator already holds, skipped or answered (a few rows through their index)
    open_items = connection.execute(
        select(func.count())
        .select_from(items)
        .where(
            items.c.project_id == project.id,
            items.c.is_gold.is_(False),
            items.c.n_taken < project.config.overlap,
        )
    ).scalar_one()
    open_but_mine = connection.execute(
        select(func.count())
        .select_from(assignments)
        .join(items, items.c.id == assignments.c.item_id)
        .where(
            assignments.c.annotator_id == annotator_id,
            assignments.c.state != EXPIRED,
            items.c.is_gold.is_(False),
            items.c.n_taken < project.config.overlap,
        )
    ).scalar_one()
    open_to_me = open_items - open_but_mine
    return Progress(done=done, total=done + leased + open_to_me)
