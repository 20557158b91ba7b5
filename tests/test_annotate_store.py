"""Storage and assignment on a real database: SQLite and PostgreSQL (see ``database_url``).

Leases, overlap, expiry, gold items, skip, undo and double submission are driven
through :mod:`prefkit.annotate.assign` with explicit clocks, so expiry needs no
waiting. The migrations are checked against the table definitions.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, inspect, select

from annotate_helpers import make_project, pairs
from prefkit.annotate import assign
from prefkit.annotate.config import AnnotateError, ProjectConfig, RatingAttribute
from prefkit.annotate.project import (
    add_annotator,
    create_project,
    export_records,
    project_report,
    require_project,
)
from prefkit.annotate.schema import annotators, answers, items, metadata
from prefkit.annotate.store import normalise_url, open_store, upgrade
from prefkit.annotate.tasks import parse_answer
from prefkit.data.records import BinaryRecord, PairwiseRecord, RankingRecord, RatingRecord

T0 = 1_000_000.0  # a fixed clock: seconds since the epoch


@pytest.fixture
def store(database_url: str):
    opened = open_store(database_url)
    try:
        yield opened
    finally:
        opened.close()


def annotator_ids(store, project) -> dict[str, int]:
    with store.read() as connection:
        rows = connection.execute(
            select(annotators.c.name, annotators.c.id).where(annotators.c.project_id == project.id)
        ).all()
    return dict(rows)


def label_everything(store, project, people: dict[str, int], now: float = T0) -> Counter:
    """Each annotator in turn takes and answers items until none is left; returns items per person."""
    done: Counter = Counter()
    active = list(people.items())
    while active:
        still = []
        for name, annotator_id in active:
            lease = assign.next_lease(store, project, annotator_id, now)
            if lease is None:
                continue
            assert assign.submit(
                store,
                project,
                annotator_id,
                lease.assignment_id,
                {"choice": "a", "strength": None},
                rationale=None,
                seconds=1.0,
                now=now,
            )
            done[name] += 1
            still.append((name, annotator_id))
        active = still
    return done


def test_migrations_match_the_tables_and_run_both_ways(database_url: str) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from prefkit.annotate.store import MIGRATIONS

    store = open_store(database_url)
    try:
        with store.engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}), metadata
            )
            assert differences == []
            assert set(inspect(connection).get_table_names()) >= {
                "projects",
                "items",
                "annotators",
                "assignments",
                "answers",
                "sessions",
                "alembic_version",
            }
        upgrade(store.engine)  # again: nothing to do, no error
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        with store.engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
        upgrade(store.engine)
        with store.engine.connect() as connection:
            assert "answers" in inspect(connection).get_table_names()
    finally:
        store.close()


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path) -> None:
    store = open_store(str(tmp_path / "a.db"))  # a plain path means SQLite
    try:
        with store.read() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()


def test_database_urls() -> None:
    assert normalise_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    assert normalise_url("runs/a.db").startswith("sqlite:////")
    with pytest.raises(AnnotateError, match="in-memory"):
        normalise_url("sqlite://")
    with pytest.raises(AnnotateError, match="use sqlite"):
        normalise_url("mysql://u@h/db")


def test_overlap_distinct_annotators_and_every_item_covered(store) -> None:
    make_project(store, n_items=6, annotators=("ana", "bob", "cy", "dee"), overlap=3)
    project = require_project(store, "demo")
    done = label_everything(store, project, annotator_ids(store, project))
    assert sum(done.values()) == 6 * 3
    with store.read() as connection:
        per_item = connection.execute(select(items.c.n_done, items.c.n_taken)).all()
        pairs_seen = connection.execute(select(answers.c.item_id, answers.c.annotator_id)).all()
    assert all(row.n_done == 3 and row.n_taken == 3 for row in per_item)
    assert len(set(pairs_seen)) == len(pairs_seen)  # nobody labelled an item twice
    report = project_report(store, "demo")
    assert report.labels_done == report.labels_needed == 18 and report.items_complete == 6


def test_a_lease_expires_and_the_item_goes_back_to_the_pool(store) -> None:
    make_project(store, n_items=1, annotators=("ana", "bob"), overlap=1, lease_minutes=1.0)
    project = require_project(store, "demo")
    ids = annotator_ids(store, project)
    lease = assign.next_lease(store, project, ids["ana"], T0)
    assert lease is not None
    assert assign.next_lease(store, project, ids["bob"], T0 + 30) is None  # taken, not expired
    assert (
        assign.next_lease(store, project, ids["ana"], T0 + 30).assignment_id == lease.assignment_id
    )
    # asking again renewed ana's lease to T0 + 90; at T0 + 91 it has run out and bob gets the item
    bob_lease = assign.next_lease(store, project, ids["bob"], T0 + 91)
    assert bob_lease is not None and bob_lease.item_id == lease.item_id
    # ana's late answer is refused: the only slot is bob's now
    with pytest.raises(assign.AssignmentError, match="not stored"):
        assign.submit(
            store,
            project,
            ids["ana"],
            lease.assignment_id,
            {"choice": "a", "strength": None},
            rationale=None,
            seconds=None,
            now=T0 + 92,
        )
    assert assign.submit(
        store,
        project,
        ids["bob"],
        bob_lease.assignment_id,
        {"choice": "b", "strength": None},
        rationale=None,
        seconds=None,
        now=T0 + 93,
    )
    with store.read() as connection:
        assert connection.execute(select(items.c.n_taken, items.c.n_done)).one() == (1, 1)


def test_a_late_answer_is_kept_while_a_slot_is_free(store) -> None:
    make_project(store, n_items=1, annotators=("ana",), overlap=1, lease_minutes=1.0)
    project = require_project(store, "demo")
    ana = annotator_ids(store, project)["ana"]
    lease = assign.next_lease(store, project, ana, T0)
    assert assign.expire_leases(store, project, T0 + 120) == 1
    assert assign.submit(
        store,
        project,
        ana,
        lease.assignment_id,
        {"choice": "tie", "strength": None},
        rationale="late",
        seconds=100.0,
        now=T0 + 130,
    )
    with store.read() as connection:
        assert connection.execute(select(items.c.n_taken, items.c.n_done)).one() == (1, 1)
        assert connection.execute(select(answers.c.server_seconds)).scalar_one() == pytest.approx(
            130.0
        )


def test_double_submit_stores_one_answer(store) -> None:
    make_project(store, n_items=2, annotators=("ana",), overlap=1)
    project = require_project(store, "demo")
    ana = annotator_ids(store, project)["ana"]
    lease = assign.next_lease(store, project, ana, T0)
    answer = {"choice": "a", "strength": 2}
    first = assign.submit(
        store, project, ana, lease.assignment_id, answer, rationale=None, seconds=1.0, now=T0
    )
    second = assign.submit(
        store, project, ana, lease.assignment_id, answer, rationale=None, seconds=1.0, now=T0 + 1
    )
    assert (first, second) == (True, False)
    with store.read() as connection:
        assert connection.execute(select(func.count()).select_from(answers)).scalar_one() == 1
        assert connection.execute(select(func.sum(items.c.n_done))).scalar_one() == 1


def test_skip_and_undo(store) -> None:
    make_project(store, n_items=3, annotators=("ana", "bob"), overlap=1)
    project = require_project(store, "demo")
    ids = annotator_ids(store, project)
    first = assign.next_lease(store, project, ids["ana"], T0)
    assign.skip(store, project, ids["ana"], first.assignment_id)
    second = assign.next_lease(store, project, ids["ana"], T0)
    assert second.item_id != first.item_id  # ana does not get the skipped item again
    assert assign.next_lease(store, project, ids["bob"], T0).item_id == first.item_id  # bob does
    with pytest.raises(assign.AssignmentError, match="skipped"):
        assign.submit(
            store,
            project,
            ids["ana"],
            first.assignment_id,
            {"choice": "a", "strength": None},
            rationale=None,
            seconds=None,
            now=T0,
        )
    assign.submit(
        store,
        project,
        ids["ana"],
        second.assignment_id,
        {"choice": "b", "strength": 3},
        rationale="clear",
        seconds=2.0,
        now=T0 + 5,
    )
    with store.read() as connection:
        assert assign.progress(connection, project, ids["ana"]).done == 1
    assert assign.undo_last(store, project, ids["ana"], T0 + 10) == second.assignment_id
    again = assign.next_lease(store, project, ids["ana"], T0 + 11)
    assert again.assignment_id == second.assignment_id  # the undone item comes back first...
    assert again.draft == {"choice": "b", "strength": 3}  # ...with the answer pre-filled
    with store.read() as connection:
        assert connection.execute(select(func.count()).select_from(answers)).scalar_one() == 0
        assert assign.progress(connection, project, ids["ana"]).done == 0
    assert assign.undo_last(store, project, ids["bob"], T0) is None  # nothing to undo
    with pytest.raises(assign.AssignmentError):  # bob cannot touch ana's assignment
        assign.submit(
            store,
            project,
            ids["bob"],
            second.assignment_id,
            {"choice": "a", "strength": None},
            rationale=None,
            seconds=None,
            now=T0,
        )


def test_gold_items_are_mixed_in_once_per_annotator(store) -> None:
    gold = [
        PairwiseRecord(
            id=f"g{i}", prompt="gold", response_a=f"good {i}", response_b=f"bad {i}", outcome="a"
        )
        for i in range(3)
    ]
    create_project(store, "demo", pairs(9), ProjectConfig(overlap=1, gold_every=3), gold=gold)
    for person in ("ana", "bob"):
        add_annotator(store, "demo", person)
    project = require_project(store, "demo")
    ids = annotator_ids(store, project)
    sequence = []
    while (lease := assign.next_lease(store, project, ids["ana"], T0)) is not None:
        sequence.append(lease.is_gold)
        choice = (
            "a" if lease.is_gold and lease.external_id != "g0" else "b"
        )  # one gold answer wrong
        assign.submit(
            store,
            project,
            ids["ana"],
            lease.assignment_id,
            {"choice": choice, "strength": None},
            rationale=None,
            seconds=None,
            now=T0,
        )
    # every third item is gold while gold lasts; the 9 regular items all go to ana (overlap 1)
    assert sequence == [
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    lease = assign.next_lease(store, project, ids["bob"], T0)
    assert lease is None  # no regular item left for bob, so no gold either
    report = project_report(store, "demo")
    row = next(r for r in report.annotators if r.name == "ana")
    assert row.n_gold == 3 and row.gold_accuracy == pytest.approx(2 / 3)
    assert row.flags == []  # 2/3 >= 0.6
    records, summary = export_records(store, "demo")
    assert summary.n_written == 12
    gold_record = next(r for r in records if r.id == "g1")
    assert gold_record.metadata["annotate"]["gold"] == {"choice": "a", "strength": None}
    records, summary = export_records(store, "demo", include_gold=False)
    assert summary.n_written == 9 and summary.skipped["gold items left out"] == 3


def test_export_undoes_the_left_right_order_and_keeps_every_vote(store) -> None:
    make_project(store, n_items=8, annotators=("ana", "bob", "cy"), overlap=3)
    project = require_project(store, "demo")
    ids = annotator_ids(store, project)
    swapped = 0
    for name, annotator_id in ids.items():
        if name == "admin":
            continue
        while (lease := assign.next_lease(store, project, annotator_id, T0)) is not None:
            # everybody clicks the side showing response B of the item, except cy, who says tie
            side = "left" if lease.display_order[0] == 1 else "right"
            swapped += lease.display_order == [1, 0]
            form = {"choice": "tie" if name == "cy" else side, "strength": "2", "rationale": ""}
            answer = parse_answer("pairwise", project.config, form, lease.display_order)
            assign.submit(
                store,
                project,
                annotator_id,
                lease.assignment_id,
                answer,
                rationale=f"{name} says so",
                seconds=3.5,
                now=T0,
            )
    assert 0 < swapped < 24  # both orders were shown
    records, summary = export_records(store, "demo")
    assert summary.n_written == 8 and summary.n_votes == 24
    for record in records:
        assert sorted(record.votes) == ["b", "b", "tie"]
        assert record.outcome == "b" and record.strength == 2.0
        votes = record.metadata["annotate"]["votes"]
        assert {v["annotator"] for v in votes} == {"ana", "bob", "cy"}
        assert all(v["seconds"] == 3.5 and v["rationale"].endswith("says so") for v in votes)
        assert "tie" in record.metadata["annotate"]["aggregation"]


def test_export_of_each_task(store) -> None:
    rating = ProjectConfig(
        task="rating",
        overlap=2,
        attributes=(RatingAttribute("help", 1, 5), RatingAttribute("safe", 0, 1)),
    )
    create_project(
        store, "rate", [RatingRecord(id="r", prompt="p", response="x", ratings={"help": 1})], rating
    )
    create_project(
        store,
        "thumbs",
        [BinaryRecord(id=f"b{i}", prompt="p", response=f"x{i}", label=True) for i in range(2)],
        ProjectConfig(task="binary", overlap=2),
    )
    create_project(
        store,
        "rank",
        [RankingRecord(id="k", prompt="p", responses=["x", "y", "z"], scores=[None] * 3)],
        ProjectConfig(task="ranking", overlap=2),
    )
    answers_by_project = {
        "rate": [{"ratings": {"help": 4, "safe": None}}, {"ratings": {"help": 5, "safe": 1}}],
        "thumbs": [{"label": True}, {"label": False}, {"label": True}, {"label": True}],
        "rank": [{"ranks": [1, 2, 3]}, {"ranks": [2, 1, 3]}],
    }
    for name, given in answers_by_project.items():
        tokens = [add_annotator(store, name, person) for person in ("ana", "bob")]
        assert len(set(tokens)) == 2
        project = require_project(store, name)
        ids = annotator_ids(store, project)
        queue = list(given)
        for person in ("ana", "bob"):
            while (lease := assign.next_lease(store, project, ids[person], T0)) is not None:
                assign.submit(
                    store,
                    project,
                    ids[person],
                    lease.assignment_id,
                    queue.pop(0),
                    rationale=None,
                    seconds=None,
                    now=T0,
                )
    (rated,), _ = export_records(store, "rate")
    assert rated.ratings == {"help": 4.5, "safe": 1.0}
    thumbs, summary = export_records(store, "thumbs")
    # ana answered b0 then b1, bob b0 then b1: b0 = (True, True), b1 = (False, True) is an even split
    assert [r.label for r in thumbs] == [True] and summary.skipped[
        "even split between thumbs up and down"
    ] == 1
    (ranked,), _ = export_records(store, "rank")
    assert ranked.ranks == (1.5, 1.5, 3.0) and ranked.responses == ("x", "y", "z")
    assert [v["ranks"] for v in ranked.metadata["annotate"]["votes"]] == [[1, 2, 3], [2, 1, 3]]


def test_create_rejects_bad_input_naming_the_record(store) -> None:
    config = ProjectConfig()
    with pytest.raises(AnnotateError, match=r"data \(record 1\): id 'p0' already used by record 0"):
        create_project(store, "dup", [pairs(1)[0], pairs(1)[0]], config)
    three = RankingRecord(id="k", prompt="p", responses=["x", "y", "z"], scores=[1, 2, 3])
    with pytest.raises(AnnotateError, match="record 0.*3 responses.*--task ranking"):
        create_project(store, "rank3", [three], config)
    with pytest.raises(AnnotateError, match="no records"):
        create_project(store, "empty", [], config)
    huge = PairwiseRecord(id="h", prompt="p", response_a="x" * 300_000, response_b="y", outcome="a")
    with pytest.raises(AnnotateError, match="300,00"):
        create_project(store, "huge", [huge], config)
    with pytest.raises(AnnotateError, match="project name"):
        create_project(store, "bad name!", pairs(1), config)
    with pytest.raises(AnnotateError, match="--reward"):
        create_project(store, "unc", pairs(1), ProjectConfig(priority="uncertainty"))
    with pytest.raises(AnnotateError, match="gold record 'g'"):
        create_project(
            store,
            "gold",
            pairs(1),
            config,
            gold=[BinaryRecord(id="g", prompt="p", response="r", label=True)],
        )
    create_project(store, "ok", pairs(2), config)
    with pytest.raises(AnnotateError, match="already exists"):
        create_project(store, "ok", pairs(2), config)
    add_annotator(store, "ok", "ana")
    with pytest.raises(AnnotateError, match="already has an annotator 'ana'"):
        add_annotator(store, "ok", "ana")
    with pytest.raises(AnnotateError, match="annotator name"):
        add_annotator(store, "ok", "bad\x00name")
    with pytest.raises(AnnotateError, match=r"no project 'nope'.*projects: ok"):
        add_annotator(store, "nope", "ana")
    with pytest.raises(AnnotateError, match="rating project needs its attributes"):
        ProjectConfig(task="rating")
    with pytest.raises(AnnotateError, match="overlap"):
        ProjectConfig(overlap=0)


def test_texts_round_trip_exactly(store) -> None:
    """Conversations, unicode, NUL characters and markup come back as they went in."""
    odd = "tab\there \x00 nul, emoji \U0001f600, <b>markup</b>, quote \" and ' \\"
    record = PairwiseRecord(
        id="odd/1",
        prompt=[{"role": "user", "content": odd}, {"role": "assistant", "content": "ok"}],
        response_a=odd,
        response_b="plain",
        outcome="a",
        category="c",
        metadata={"source": "x"},
    )
    create_project(store, "odd", [record], ProjectConfig())
    add_annotator(store, "odd", "ana")
    project = require_project(store, "odd")
    ana = annotator_ids(store, project)["ana"]
    lease = assign.next_lease(store, project, ana, T0)
    assign.submit(
        store,
        project,
        ana,
        lease.assignment_id,
        {"choice": "a", "strength": None},
        rationale="why \U0001f600",
        seconds=None,
        now=T0,
    )
    (exported,), _ = export_records(store, "odd")
    assert exported.prompt == record.prompt and exported.response_a == odd
    assert exported.category == "c" and exported.metadata["source"] == "x"
    assert exported.metadata["annotate"]["votes"][0]["rationale"] == "why \U0001f600"
