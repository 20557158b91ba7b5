"""The annotation pages in a real browser: headless Chromium driven by Playwright.

An annotator logs in, labels five pairs with the keyboard only (1 / 2 / 3, Enter),
undoes the last one with U and sends it again, skips with S; the database then
holds five answers and the export holds them as votes, with the left/right order
undone. A project whose items, guidelines and annotator names carry ``<script>``,
``<img onerror>`` and ``javascript:`` links shows them as text: no dialog opens,
no script but the page's own runs, no handler attribute or ``javascript:`` link
exists, and the Content-Security-Policy reports nothing.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from annotate_helpers import ThreadServer, pairs
from browser import Browser, colour_profile, looks_blank
from prefkit.annotate.config import ProjectConfig
from prefkit.annotate.project import add_annotator, create_project, export_records
from prefkit.annotate.schema import answers, assignments
from prefkit.annotate.store import open_store
from prefkit.data.records import PairwiseRecord

SCRIPT = "<script>alert('script')</script>"
IMAGE = "<img src=x onerror=alert('img')>"
LINK = "<a href=\"javascript:alert('link')\">click me</a>"
MARKDOWN_LINK = "[click me](javascript:alert('md'))"
PAYLOADS = (SCRIPT, IMAGE, LINK, MARKDOWN_LINK)


@pytest.fixture
def store(tmp_path):
    opened = open_store(f"sqlite:///{tmp_path / 'annotate.db'}")
    try:
        yield opened
    finally:
        opened.close()


def log_in(browser: Browser, url: str, token: str):
    page, seen = browser.page()
    page.goto(f"{url}/login")
    page.fill("#token", token)
    with page.expect_navigation():
        page.press("#token", "Enter")
    return page, seen


@pytest.mark.slow
def test_an_annotator_labels_five_pairs_with_the_keyboard(browser: Browser, store) -> None:
    create_project(
        store,
        "demo",
        pairs(6),
        ProjectConfig(overlap=1, seed=5),
        guidelines="# Guide\n\nPick the **better** answer.",
    )
    token = add_annotator(store, "demo", "ana")
    expected: dict[str, str] = {}
    with ThreadServer(store) as server:
        page, seen = log_in(browser, server.url, token)
        assert page.url.endswith("/p/demo/")
        for step in range(5):
            assert page.text_content("#progress") == f"{step} of 6"
            left = page.text_content("#response-1 .text")
            item = re.search(r"item (\d+)", left).group(1)
            if step == 3:
                key, vote = "3", "tie"
            else:  # always the side that shows response B, wherever it was put
                key, vote = ("1" if "response B" in left else "2"), "b"
            page.keyboard.press(key)
            with page.expect_navigation():
                page.keyboard.press("Enter")
            expected[f"p{item}"] = vote
        assert page.text_content("#progress") == "5 of 6"
        browser.observe(page, seen)
        assert not looks_blank(seen.screenshot_png), colour_profile(seen.screenshot_png)

        with page.expect_navigation():  # U takes the last answer back, pre-filled
            page.keyboard.press("u")
        assert page.text_content("#progress") == "4 of 6"
        assert page.is_checked("input[name=choice]:checked")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.text_content("#progress") == "5 of 6"

        with page.expect_navigation():  # S skips the sixth
            page.keyboard.press("s")
        assert "All done" in page.text_content("main")
        assert seen.console_errors == [] and seen.dialogs == []
        page.context.close()

    with store.read() as connection:
        stored = connection.execute(select(answers.c.seconds)).scalars().all()
        states = sorted(connection.execute(select(assignments.c.state)).scalars().all())
    assert len(stored) == 5 and all(seconds is not None and seconds > 0 for seconds in stored)
    assert states == ["done"] * 5 + ["skipped"]
    records, summary = export_records(store, "demo")
    assert {record.id: record.votes[0] for record in records} == expected
    assert summary.n_votes == 5


def hostile_project(store) -> tuple[str, str]:
    hostile = " ".join(PAYLOADS)
    records = [
        PairwiseRecord(
            id=f"x{i}{IMAGE}",
            prompt=f"{SCRIPT} question {i} {LINK}",
            response_a=f"{IMAGE} yes {MARKDOWN_LINK}",
            response_b=f"no {SCRIPT}",
            outcome="a",
        )
        for i in range(2)
    ] + [
        PairwiseRecord(
            id="conversation",
            prompt=[{"role": "user", "content": hostile}, {"role": "assistant", "content": SCRIPT}],
            response_a=[{"role": "assistant", "content": IMAGE}],
            response_b=LINK,
            outcome="a",
        )
    ]
    guidelines = (
        f"# Rules {SCRIPT}\n\n{IMAGE} {MARKDOWN_LINK} {LINK}\n\n![x](javascript:alert('image'))"
    )
    create_project(store, "hostile", records, ProjectConfig(overlap=2), guidelines=guidelines)
    token = add_annotator(store, "hostile", f"ana {SCRIPT}")
    admin = add_annotator(store, "hostile", f"boss {IMAGE}", admin=True)
    return token, admin


def assert_inert(seen, *, scripts: int = 1) -> None:
    assert seen.dialogs == []  # no alert() ran
    assert seen.console_errors == []  # not even a blocked one: CSP violations are reported here
    assert seen.dom["scripts"] == scripts  # /static/annotate.js only
    assert seen.dom["handlers"] == [] and seen.dom["images"] == 0 and seen.dom["iframes"] == 0
    assert seen.dom["javascript_links"] == 0


@pytest.mark.slow
def test_dataset_strings_are_shown_as_text_in_a_real_browser(browser: Browser, store) -> None:
    token, admin = hostile_project(store)
    with ThreadServer(store) as server:
        page, seen = log_in(browser, server.url, token)
        page.click("details.guidelines summary")  # the guidelines are one click away
        assert page.is_visible("details.guidelines h1")
        page.wait_for_timeout(300)
        browser.observe(page, seen)
        assert_inert(seen)
        for payload in (SCRIPT, IMAGE, LINK):
            assert payload in seen.dom["text"]  # shown literally
        assert "click me" in seen.dom["text"] and "javascript:alert('md')" in seen.dom["text"]
        assert not looks_blank(seen.screenshot_png)
        # every item of the project, the conversation included
        for _ in range(3):
            shown_text = page.text_content("main")
            assert SCRIPT in shown_text or IMAGE in shown_text or LINK in shown_text
            page.keyboard.press("3")
            with page.expect_navigation():
                page.keyboard.press("Enter")
        browser.observe(page, seen)
        assert_inert(seen)
        page.context.close()

        page, seen = log_in(browser, server.url, admin)
        assert page.url.endswith("/p/hostile/admin")
        browser.observe(page, seen)
        assert_inert(seen)
        assert f"x0{IMAGE}" in seen.dom["text"] and f"ana {SCRIPT}" in seen.dom["text"]
        assert page.text_content("#summary").startswith("3 of 6 labels")
        page.context.close()

        load = browser.load(f"{server.url}/p/hostile/guidelines")  # not logged in: the login page
        assert load.dialogs == [] and load.console_errors == []
        assert load.requests[0].endswith("/p/hostile/guidelines")
