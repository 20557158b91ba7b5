"""Reliability on both databases: kill -9 of the server, and 20 annotators at once.

The kill test runs ``prefkit annotate serve`` as its own process, sends answers,
and kills it with SIGKILL right after the last one was acknowledged (the 303
redirect); a new server on the same database must show every one of them. The
concurrency test lets 20 simulated annotators (httpx clients in threads, started
together by a barrier) label a project on a real server on loopback, each also
sending its first form twice at the same moment; afterwards no item exceeds its
overlap, nobody answered an item twice and every acknowledged answer is stored
exactly once. Both loops are bounded in count and time.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from annotate_helpers import Annotator, ThreadServer, make_project, start_cli_server
from prefkit.annotate.project import export_records
from prefkit.annotate.schema import annotators, answers, items
from prefkit.annotate.store import open_store

N_ANNOTATORS = 20
N_ITEMS = 30
OVERLAP = 3
DEADLINE_S = 120.0


@pytest.mark.slow
def test_acknowledged_answers_survive_kill_9(database_url: str) -> None:
    store = open_store(database_url)
    tokens = make_project(store, n_items=6, annotators=("ana",), overlap=1)
    store.close()
    # the first server through the full `prefkit` command line (on SQLite), the second alone
    process, url = start_cli_server(database_url, full_cli=database_url.startswith("sqlite"))
    try:
        ana = Annotator(url)
        assert ana.login(tokens["ana"]).status_code == 303
        acknowledged = []
        for _ in range(3):
            shown = ana.page()
            response = ana.post("submit", shown, choice="right", rationale="sure")
            assert response.status_code == 303  # the browser is told it is stored
            acknowledged.append(shown.assignment)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL

    process, url = start_cli_server(database_url)
    try:
        # the session lives in the database too: the same cookie works on the new server
        ana.client.base_url = url
        after = ana.page()
        assert after.progress == (3, 6)
        assert after.assignment not in acknowledged
    finally:
        process.terminate()
        process.wait(timeout=30)
        ana.close()
    store = open_store(database_url)
    try:
        with store.read() as connection:
            stored = connection.execute(select(answers.c.assignment_id)).scalars().all()
        assert sorted(stored) == sorted(acknowledged)
        records, _ = export_records(store, "demo")
        assert len(records) == 3 and all(
            r.metadata["annotate"]["votes"][0]["rationale"] == "sure" for r in records
        )
    finally:
        store.close()


@pytest.mark.slow
def test_twenty_annotators_at_once(database_url: str) -> None:
    store = open_store(database_url)
    names = tuple(f"annotator-{i:02d}" for i in range(N_ANNOTATORS))
    tokens = make_project(store, n_items=N_ITEMS, annotators=names, overlap=OVERLAP, seed=3)
    acknowledged: dict[str, list[int]] = {name: [] for name in names}
    failures: list[str] = []
    start = threading.Barrier(N_ANNOTATORS)
    deadline = time.monotonic() + DEADLINE_S

    def work(name: str, server_url: str) -> None:
        person = Annotator(server_url, timeout_s=60.0)
        rng = random.Random(name)
        try:
            assert person.login(tokens[name]).status_code == 303
            start.wait(timeout=60)
            for step in range(N_ITEMS + 5):  # bounded: nobody can get more than every item
                if time.monotonic() > deadline:
                    failures.append(f"{name}: past the deadline")
                    return
                shown = person.page()
                if shown.assignment is None:
                    return
                choice = rng.choice(["left", "right", "tie"])
                if step == 0:  # a double click: the same form twice, at the same moment
                    replies: list[int] = []

                    def send(shown=shown, choice=choice, replies=replies) -> None:
                        replies.append(person.post("submit", shown, choice=choice).status_code)

                    senders = [threading.Thread(target=send) for _ in range(2)]
                    for sender in senders:
                        sender.start()
                    for sender in senders:
                        sender.join(timeout=60)
                    assert replies == [303, 303], replies
                else:
                    assert person.post("submit", shown, choice=choice).status_code == 303
                acknowledged[name].append(shown.assignment)  # type: ignore[arg-type]
            failures.append(f"{name}: still had items after {N_ITEMS + 5} steps")
        except Exception as error:  # noqa: BLE001 - reported below with the annotator's name
            failures.append(f"{name}: {type(error).__name__}: {error}")
        finally:
            person.close()

    try:
        with ThreadServer(store) as server:
            threads = [threading.Thread(target=work, args=(name, server.url)) for name in names]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=DEADLINE_S + 30)
            assert not any(thread.is_alive() for thread in threads)
        assert failures == []
        with store.read() as connection:
            per_item = connection.execute(
                select(items.c.n_done, items.c.n_taken).where(items.c.is_gold.is_(False))
            ).all()
            rows = connection.execute(
                select(answers.c.assignment_id, answers.c.item_id, annotators.c.name).join(
                    annotators, annotators.c.id == answers.c.annotator_id
                )
            ).all()
            n_answers = connection.execute(select(func.count()).select_from(answers)).scalar_one()
        assert len(per_item) == N_ITEMS
        assert all(n_done == OVERLAP and n_taken == OVERLAP for n_done, n_taken in per_item)
        assert n_answers == N_ITEMS * OVERLAP == len(rows)
        assert len({(row.item_id, row.name) for row in rows}) == len(rows)  # nobody twice
        stored = {(row.name, row.assignment_id) for row in rows}
        sent = {(name, assignment) for name, ids in acknowledged.items() for assignment in ids}
        assert stored == sent  # every acknowledged answer is there, once, under its annotator
        assert sum(len(ids) for ids in acknowledged.values()) == len(sent)
        busy = Counter(row.name for row in rows)
        assert len(busy) >= N_ANNOTATORS // 2  # the work really was shared out
    finally:
        store.close()
