"""The annotation server over HTTP on loopback: login, pages, forms and security.

A real uvicorn server runs the app in a thread of the test process
(:class:`ThreadServer`), on a SQLite file unless a test says otherwise; annotators
are httpx clients that log in, read the page and post its forms.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from annotate_helpers import Annotator, ThreadServer, make_project, pairs, read_page
from prefkit.annotate.config import ProjectConfig, ServeConfig
from prefkit.annotate.project import add_annotator, create_project, export_records
from prefkit.annotate.schema import annotators, answers, assignments
from prefkit.annotate.store import open_store
from prefkit.annotate.web import CONTENT_SECURITY_POLICY, render_guidelines


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"sqlite:///{tmp_path / 'annotate.db'}")
    try:
        yield opened
    finally:
        opened.close()


def count_answers(store) -> int:
    with store.read() as connection:
        return connection.execute(select(func.count()).select_from(answers)).scalar_one()


def test_an_annotator_logs_in_labels_and_the_export_has_the_votes(store) -> None:
    tokens = make_project(store, n_items=3, annotators=("ana",), overlap=1)
    with ThreadServer(store) as server:
        ana = Annotator(server.url)
        response = ana.login(tokens["ana"])
        assert response.status_code == 303 and response.headers["location"] == "/p/demo/"
        cookie = response.headers["set-cookie"]
        assert "prefkit_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        expected = []
        for step in range(3):
            shown = ana.page()
            assert shown.progress == (step, 3)
            item = re.search(r"item (\d+)", shown.left).group(1)
            # click the side that shows response B
            side = "left" if "response B" in shown.left else "right"
            done = ana.post(
                "submit", shown, choice=side, strength="3", rationale="B says more", seconds="4.25"
            )
            assert done.status_code == 303 and done.headers["location"] == "/p/demo/"
            expected.append((f"p{item}", "b"))
        final = ana.page()
        assert final.assignment is None and "All done" in final.text and final.progress == (3, 3)
    records, _ = export_records(store, "demo")
    assert sorted((r.id, r.votes[0]) for r in records) == sorted(expected)
    vote = records[0].metadata["annotate"]["votes"][0]
    assert (vote["annotator"], vote["strength"], vote["rationale"], vote["seconds"]) == (
        "ana",
        3,
        "B says more",
        4.25,
    )
    assert vote["server_seconds"] is not None and vote["server_seconds"] >= 0


def test_resubmitting_the_same_form_stores_one_answer(store) -> None:
    tokens = make_project(store, n_items=3, annotators=("ana",), overlap=1)
    with ThreadServer(store) as server:
        ana = Annotator(server.url)
        ana.login(tokens["ana"])
        shown = ana.page()
        first = ana.post("submit", shown, choice="tie")
        second = ana.post("submit", shown, choice="left")  # the double click
        assert first.status_code == second.status_code == 303
        assert count_answers(store) == 1
        assert ana.page().progress == (1, 3)
    (record,), _ = export_records(store, "demo")
    assert record.votes == ("tie",)


def test_undo_and_skip_over_http(store) -> None:
    tokens = make_project(store, n_items=3, annotators=("ana",), overlap=1)
    with ThreadServer(store) as server:
        ana = Annotator(server.url)
        ana.login(tokens["ana"])
        shown = ana.page()
        assert 'id="undo-form"' not in shown.text  # nothing to undo yet
        ana.post("submit", shown, choice="left", strength="2", rationale="first try")
        assert ana.post("undo", ana.page()).status_code == 303
        again = ana.page()
        assert again.assignment == shown.assignment and again.progress == (0, 3)
        assert 'value="left" data-key="1" required checked' in again.text  # pre-filled
        assert 'value="2" checked' in again.text
        ana.post("skip", again)
        after = ana.page()
        assert after.assignment not in (None, shown.assignment)
        assert count_answers(store) == 0


def test_a_bad_answer_is_refused_with_the_reason_and_nothing_is_stored(store) -> None:
    tokens = make_project(store, n_items=1, annotators=("ana",), overlap=1)
    with ThreadServer(store, ServeConfig(max_rationale_chars=10)) as server:
        ana = Annotator(server.url)
        ana.login(tokens["ana"])
        shown = ana.page()
        for fields, reason in (
            ({"choice": "sideways"}, "choose A, B or tie"),
            ({"choice": "left", "strength": "9"}, "strength: expected one of [1, 2, 3]"),
            ({"choice": "left", "rationale": "x" * 11}, "at most 10"),
        ):
            response = ana.post("submit", shown, **fields)
            assert response.status_code == 400 and reason in response.text
        assert ana.post("submit", shown, assignment="abc", choice="left").status_code == 400
        assert count_answers(store) == 0


def test_security_headers_on_every_page(store) -> None:
    tokens = make_project(store)
    with ThreadServer(store) as server:
        ana = Annotator(server.url)
        responses = [
            ana.client.get("/login"),
            ana.client.get("/static/annotate.js"),
            ana.client.get("/nowhere"),
        ]
        ana.login(tokens["ana"])
        responses += [ana.client.get("/p/demo/"), ana.client.get("/p/demo/guidelines")]
        for response in responses:
            assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        assert (
            "script-src 'self';" in CONTENT_SECURITY_POLICY
            and "unsafe-inline" not in CONTENT_SECURITY_POLICY
        )
        assert "<script>" not in responses[3].text  # the only script is the file, no inline code
        assert responses[3].text.count("<script") == 1


def test_every_form_post_needs_the_csrf_token(store) -> None:
    tokens = make_project(store, n_items=2)
    with ThreadServer(store) as server:
        ana = Annotator(server.url)
        form = ana.client.get("/login")
        assert ana.client.post("/login", data={"token": tokens["ana"]}).status_code == 403
        assert (
            ana.client.post("/login", data={"token": tokens["ana"], "csrf": "forged"}).status_code
            == 403
        )
        assert form.status_code == 200
        ana.login(tokens["ana"])
        shown = ana.page()
        for action in ("submit", "skip", "undo"):
            data = {"assignment": str(shown.assignment), "choice": "left"}
            assert ana.client.post(f"/p/demo/{action}", data=data).status_code == 403
            assert (
                ana.client.post(f"/p/demo/{action}", data={**data, "csrf": "x" * 43}).status_code
                == 403
            )
        assert ana.client.post("/logout", data={}).status_code == 403
        assert count_answers(store) == 0
        with store.read() as connection:  # the skip was refused too
            assert connection.execute(select(assignments.c.state)).scalars().all() == ["leased"]


def test_failed_logins_are_rate_limited(store) -> None:
    tokens = make_project(store)
    with ThreadServer(store, ServeConfig(login_failures_per_minute=3)) as server:
        guesser = Annotator(server.url)
        statuses = [guesser.login(f"guess-{i}").status_code for i in range(3)]
        assert statuses == [401, 401, 401]
        refused = guesser.login(tokens["ana"])  # even the right token, until the minute is over
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0


def test_tokens_that_look_like_sql_are_just_wrong_tokens(store) -> None:
    tokens = make_project(store)
    with ThreadServer(store, ServeConfig(login_failures_per_minute=100)) as server:
        for attempt in ("' OR '1'='1", "x'; DROP TABLE answers; --", "%", "\x00"):
            assert Annotator(server.url).login(attempt).status_code == 401
        ana = Annotator(server.url)
        assert ana.login(tokens["ana"]).status_code == 303
        shown = ana.page()
        ana.post("submit", shown, choice="left", rationale="'); DELETE FROM answers; --")
    assert count_answers(store) == 1
    (record,), _ = export_records(store, "demo")
    assert record.metadata["annotate"]["votes"][0]["rationale"] == "'); DELETE FROM answers; --"
    with store.read() as connection:
        assert connection.execute(select(func.count()).select_from(annotators)).scalar_one() == 2


def test_an_annotator_sees_only_their_own_project_and_assignments(store) -> None:
    tokens = make_project(store, n_items=4, annotators=("ana", "bob"), overlap=2)
    create_project(store, "other", pairs(2, prefix="o"), ProjectConfig())
    other_admin = add_annotator(store, "other", "boss", admin=True)
    with ThreadServer(store) as server:
        ana, bob, boss = Annotator(server.url), Annotator(server.url), Annotator(server.url)
        ana.login(tokens["ana"])
        bob.login(tokens["bob"])
        assert boss.login(other_admin).headers["location"] == "/p/other/admin"
        # no admin pages for annotators
        assert ana.client.get("/p/demo/admin").status_code == 403
        assert ana.client.get("/p/demo/admin/export.jsonl").status_code == 403
        # another project looks like no project at all, for annotators and admins alike
        for person, project in ((ana, "other"), (boss, "demo")):
            for path in ("/", "/admin", "/guidelines", "/admin/export.jsonl"):
                assert person.client.get(f"/p/{project}{path}").status_code == 404
        assert boss.client.get("/p/nope/").status_code == 404
        # bob cannot answer ana's assignment, even with his own valid CSRF token
        ana_shown, bob_shown = ana.page(), bob.page()
        response = bob.post(
            "submit", bob_shown, assignment=str(ana_shown.assignment), choice="left"
        )
        assert response.status_code == 404
        assert bob.post("skip", bob_shown, assignment=str(ana_shown.assignment)).status_code == 404
        assert count_answers(store) == 0
        # logged out: redirected to the login page, and posts are refused
        stranger = Annotator(server.url)
        assert stranger.client.get("/p/demo/").headers["location"] == "/login"
        assert stranger.client.post("/p/demo/submit", data={"choice": "left"}).status_code == 401
        # the admin of demo sees its admin page and export
        admin = Annotator(server.url)
        assert admin.login(tokens["admin"]).headers["location"] == "/p/demo/admin"
        assert admin.client.get("/p/demo/admin").status_code == 200
        assert admin.client.get("/p/demo/admin/export.jsonl").status_code == 200
        # after logging out, the old cookie is worth nothing
        shown = read_page(ana.client.get("/p/demo/guidelines").text)
        ana.client.post("/logout", data={"csrf": shown.csrf})
        assert ana.client.get("/p/demo/").status_code == 303


def test_request_bodies_are_bounded(store) -> None:
    tokens = make_project(store)
    with ThreadServer(store, ServeConfig(max_body_kib=4)) as server:
        ana = Annotator(server.url)
        ana.login(tokens["ana"])
        shown = ana.page()
        response = ana.post("submit", shown, choice="left", rationale="x" * 10_000)
        assert response.status_code == 413
        chunked = ana.client.post(
            "/p/demo/submit",
            content=iter([b"csrf=" + shown.csrf.encode() + b"&rationale=", b"y" * 8192]),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert chunked.status_code == 413
        assert count_answers(store) == 0


def test_guidelines_markdown_is_sanitised() -> None:
    rendered = str(
        render_guidelines(
            "# Rules\n\n**Be fair.** <script>alert(1)</script> <img src=x onerror=alert(2)>\n\n"
            "[safe](https://example.org) [bad](javascript:alert(3)) [data](data:text/html,hi) "
            "![pic](https://example.org/p.png)"
        )
    )
    assert "<h1>Rules</h1>" in rendered and "<strong>Be fair.</strong>" in rendered
    assert "&lt;script&gt;" in rendered and "<script" not in rendered and "<img" not in rendered
    assert 'href="https://example.org"' in rendered
    assert "javascript:" not in rendered.replace("[bad](javascript:alert(3))", "")
    assert 'href="data:' not in rendered and 'href="javascript:' not in rendered


def test_ranking_rating_and_thumbs_pages_post_canonical_answers(store) -> None:
    """Each task's page has its inputs; posted answers are stored in canonical order."""
    from prefkit.annotate.config import RatingAttribute
    from prefkit.data.records import BinaryRecord, RankingRecord, RatingRecord

    conversation = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    create_project(
        store,
        "rank",
        [RankingRecord(id="k", prompt=conversation, responses=["x", "y", "z"], scores=[None] * 3)],
        ProjectConfig(task="ranking", seed=4),
    )
    attributes = (RatingAttribute("help", 1, 5, "how helpful"), RatingAttribute("safe", 0, 1))
    create_project(
        store,
        "rate",
        [RatingRecord(id="r", prompt="p", response="answer", ratings={"help": 1})],
        ProjectConfig(task="rating", attributes=attributes),
    )
    create_project(
        store,
        "thumbs",
        [BinaryRecord(id="b", prompt="p", response="answer", label=True)],
        ProjectConfig(task="binary"),
    )
    with ThreadServer(store) as server:
        person = Annotator(server.url)
        person.login(add_annotator(store, "rank", "ana"))
        shown = person.page()
        assert shown.text.count('<select name="rank.') == 3
        assert (
            'class="turn role-user"' in shown.text and 'class="turn role-assistant"' in shown.text
        )
        texts = re.findall(r'<div class="text">([xyz])</div>', shown.text)
        # rank what is shown: x best, z worst, wherever they are
        ranks = {
            f"rank.{position}": str({"x": 1, "y": 2, "z": 3}[t]) for position, t in enumerate(texts)
        }
        assert person.post("submit", shown, **{**ranks, "rank.0": ""}).status_code == 400
        assert person.post("submit", shown, **ranks).status_code == 303
        person.post("undo", person.page())
        again = person.page()
        assert again.text.count(" selected>") == 3  # the undone ranks come back selected
        assert person.post("submit", again, **ranks).status_code == 303

        person = Annotator(server.url)
        person.login(add_annotator(store, "rate", "ana"))
        shown = person.page()
        assert "how helpful" in shown.text and 'name="rating.safe" value="0"' in shown.text
        assert person.post("submit", shown).status_code == 400  # nothing rated
        assert person.post("submit", shown, **{"rating.help": "6"}).status_code == 400
        assert person.post("submit", shown, **{"rating.help": "4"}).status_code == 303

        person = Annotator(server.url)
        person.login(add_annotator(store, "thumbs", "ana"))
        shown = person.page()
        assert 'value="bad" data-key="2"' in shown.text
        assert person.post("submit", shown, label="bad").status_code == 303
    (ranked,), _ = export_records(store, "rank")
    assert ranked.ranks == (1.0, 2.0, 3.0) and ranked.responses == ("x", "y", "z")
    (rated,), _ = export_records(store, "rate")
    assert rated.ratings == {"help": 4.0, "safe": None}
    (thumb,), _ = export_records(store, "thumbs")
    assert thumb.label is False
