"""The HTML report: escaping, self-containment, plots, edge cases, and a real browser.

The browser tests open the report in headless Chromium (see ``tests/browser.py``)
and fail on any console error, any request other than the file itself, an opened
dialog, a script element or an ``on*`` attribute in the DOM, or a blank
screenshot. ``make test`` installs Debian's ``chromium`` when it is missing; without
it the tests skip saying why, except under ``CI=true``, where they fail.
Each of those checks is itself shown to fail on a page built to break it.
"""

from __future__ import annotations

import html
import math
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from browser import Browser, colour_profile, looks_blank
from prefkit.eval.metrics import pairwise_report
from prefkit.eval.report import MAX_SCATTER_POINTS, N_WRONG_EXAMPLES, render_report, write_report
from prefkit.eval.results import EvaluationRun, ModelEvaluation, ScoredPair

SCRIPT_PAYLOAD = "<script>alert(1)</script>"
IMG_PAYLOAD = "<img src=x onerror=alert(1)>"
ATTRIBUTE_PAYLOAD = '" onmouseover="alert(2)" x="'
PAYLOADS = (SCRIPT_PAYLOAD, IMG_PAYLOAD, ATTRIBUTE_PAYLOAD)
PLOTS_PER_MODEL = 5  # reward distributions, margins, calibration, reward vs length, categories


# ------------------------------------------------------------------------ builders


def make_model(
    name: str,
    n_pairs: int,
    *,
    seed: int = 0,
    categories: tuple[str, ...] = ("math", "chat", "safety"),
    tie_share: float = 0.15,
    hostile: bool = False,
) -> ModelEvaluation:
    """A scored model with a known signal: rewards follow a hidden quality plus noise.

    With ``hostile``, every text field of every third pair carries an XSS payload.
    """
    rng = random.Random(seed)
    pairs = []
    for i in range(n_pairs):
        quality = rng.gauss(0.0, 1.0)
        outcome = "tie" if rng.random() < tie_share else ("a" if quality > 0 else "b")
        length_a, length_b = rng.randint(10, 1500), rng.randint(10, 1500)
        prompt = f"Question {i}: " + "why " * rng.randint(1, 100)
        response_a, response_b = "answer a " * (length_a // 9), "answer b " * (length_b // 9)
        pair_id, category = f"pair-{i}", categories[i % len(categories)] if categories else None
        if hostile and i % 3 == 0:
            prompt = f"{SCRIPT_PAYLOAD} {prompt}"
            response_a = f"{IMG_PAYLOAD} {response_a}"
            response_b = f"{ATTRIBUTE_PAYLOAD}{SCRIPT_PAYLOAD} {response_b}"
            pair_id = f"{pair_id}{ATTRIBUTE_PAYLOAD}{IMG_PAYLOAD}"
        pairs.append(
            ScoredPair(
                id=pair_id,
                prompt=prompt,
                response_a=response_a,
                response_b=response_b,
                outcome=outcome,
                reward_a=rng.gauss(0.7 * quality, 1.0),
                reward_b=rng.gauss(-0.7 * quality, 1.0),
                category=category,
                length_a=len(response_a),
                length_b=len(response_b),
            )
        )
    return ModelEvaluation(name=name, metrics=metrics_of(pairs), pairs=pairs)


def metrics_of(pairs: list[ScoredPair]) -> dict:
    has_categories = any(pair.category is not None for pair in pairs)
    return pairwise_report(
        [pair.reward_a for pair in pairs],
        [pair.reward_b for pair in pairs],
        [pair.outcome for pair in pairs],
        lengths_a=[pair.length_a for pair in pairs],
        lengths_b=[pair.length_b for pair in pairs],
        category=[pair.category or "" for pair in pairs] if has_categories else None,
        n_resamples=50,
    )


def hostile_run(n_models: int = 2) -> EvaluationRun:
    """A run whose every string field (data, names, notes, texts, categories) is hostile."""
    models = [
        make_model(
            f"model {index} {SCRIPT_PAYLOAD}{ATTRIBUTE_PAYLOAD}",
            120,
            seed=index,
            hostile=True,
            categories=("plain", f"cat {IMG_PAYLOAD}", f"cat {ATTRIBUTE_PAYLOAD}"),
        )
        for index in range(n_models)
    ]
    models[0].metrics["notes"].append(f"note {SCRIPT_PAYLOAD}")
    models[0].metrics[f"extra {IMG_PAYLOAD}"] = {"value": f"text {SCRIPT_PAYLOAD}", "n": 3}
    return EvaluationRun(
        data=f"data/{IMG_PAYLOAD}.jsonl",
        models=models,
        n_records=120,
        n_rejected=1,
        notes=[f"run note {SCRIPT_PAYLOAD}", f"{ATTRIBUTE_PAYLOAD}"],
    )


class TagCollector(HTMLParser):
    """Every start tag with its attributes, as the browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(document: str) -> list[tuple[str, dict[str, str | None]]]:
    collector = TagCollector()
    collector.feed(document)
    collector.close()
    return collector.tags


ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "main",
    "header",
    "nav",
    "section",
    "article",
    "footer",
    "h1",
    "h2",
    "h3",
    "p",
    "ul",
    "li",
    "dl",
    "dt",
    "dd",
    "a",
    "code",
    "small",
    "br",
    "div",
    "span",
    "i",
    "table",
    "tr",
    "th",
    "td",
    "details",
    "summary",
    "figure",
    "figcaption",
    "svg",
    "g",
    "rect",
    "line",
    "circle",
    "path",
    "text",
}


def assert_structurally_safe(document: str) -> list[tuple[str, dict[str, str | None]]]:
    """Only the report's own tags, no event handlers, no links or sources leaving the page."""
    tags = tags_of(document)
    unexpected = {tag for tag, _ in tags} - ALLOWED_TAGS
    assert not unexpected, f"unexpected elements {unexpected}"
    for tag, attributes in tags:
        for name, value in attributes.items():
            assert not name.startswith("on"), f"event handler {name} on <{tag}>"
            assert name not in ("src", "srcset", "xlink:href", "action", "formaction"), (tag, name)
            if name == "href":
                assert value is not None and value.startswith("#"), f"link leaves the page: {value}"
    return tags


def count_plots(document: str) -> int:
    return document.count("<svg")


# ------------------------------------------------------------------- unit tests


def test_every_plot_is_present_for_one_and_for_several_models() -> None:
    one = render_report(EvaluationRun("d.jsonl", [make_model("m", 200)]))
    assert count_plots(one) == PLOTS_PER_MODEL
    three = render_report(
        EvaluationRun("d.jsonl", [make_model(f"m{i}", 200, seed=i) for i in range(3)])
    )
    assert count_plots(three) == 3 * PLOTS_PER_MODEL + 1  # + the accuracy comparison chart
    assert "Comparison" in three and "Comparison" not in one
    for document in (one, three):
        assert_structurally_safe(document)


def test_every_dataset_string_is_escaped_in_text_attributes_and_tooltips() -> None:
    run = hostile_run()
    hostile_pair = run.models[0].pairs[0]  # make it the most confidently wrong row
    hostile_pair.outcome, hostile_pair.reward_a, hostile_pair.reward_b = "a", -9.0, 9.0
    document = render_report(run, title=f"title {SCRIPT_PAYLOAD}")
    for payload in PAYLOADS:
        assert payload not in document
    assert html.escape(SCRIPT_PAYLOAD, quote=True) in document
    assert html.escape(IMG_PAYLOAD, quote=True) in document
    assert html.escape(ATTRIBUTE_PAYLOAD, quote=True) in document
    tags = assert_structurally_safe(document)
    assert not any(tag in ("script", "img", "iframe", "object", "embed") for tag, _ in tags)
    # The hostile id reaches an attribute intact (escaped, then decoded by the parser),
    # and svg tooltips in the scatter plots carry it as text.
    hostile_id = hostile_pair.id
    assert any(attributes.get("data-pair-id") == hostile_id for _, attributes in tags)
    escaped_id = html.escape(hostile_id, quote=True)
    assert re.search(r"<circle [^>]*><title>" + re.escape(escaped_id), document)
    # Category names (bar labels and their tooltips) and the extra-metrics key are escaped too.
    assert f"<title>cat {html.escape(IMG_PAYLOAD, quote=True)}</title>" in document
    assert f"extra {html.escape(IMG_PAYLOAD, quote=True)}" in document


def test_no_external_resource_is_referenced() -> None:
    document = render_report(hostile_run())
    assert "http://" not in document and "https://" not in document
    assert "url(" not in document and "@import" not in document
    assert "<script" not in document.lower()
    assert "default-src 'none'" in document  # the CSP forbids fetching anything anyway


def test_a_url_in_the_data_stays_text() -> None:
    model = make_model("m", 30)
    model.pairs[0].prompt = 'see https://example.com/x.js" onload="x'
    model.pairs[0].outcome, model.pairs[0].reward_a, model.pairs[0].reward_b = "a", -50.0, 50.0
    document = render_report(EvaluationRun("d", [model]))
    assert "https://example.com/x.js&quot; onload=&quot;x" in document
    for _tag, attributes in assert_structurally_safe(document):
        assert not any("example.com" in (value or "") for value in attributes.values())


def test_wrong_examples_are_the_largest_wrong_margins_in_order() -> None:
    model = make_model("m", 300, seed=3)
    document = render_report(EvaluationRun("d", [model]))
    wrong = []
    for pair in model.pairs:
        if pair.outcome == "tie":
            continue
        toward_preferred = pair.margin if pair.outcome == "a" else -pair.margin
        if toward_preferred < 0:
            wrong.append((toward_preferred, pair.id))
    expected = [pair_id for _, pair_id in sorted(wrong)[:N_WRONG_EXAMPLES]]
    shown = [
        attributes["data-pair-id"]
        for tag, attributes in tags_of(document)
        if tag == "tr" and "data-pair-id" in attributes
    ]
    assert shown == expected
    assert f"{len(wrong):,} pairs ranked wrongly" in document


def test_long_texts_are_clipped_behind_show_more_without_losing_text() -> None:
    model = make_model("m", 40)
    target = model.pairs[0]
    target.outcome, target.reward_a, target.reward_b = "a", -100.0, 100.0  # the top wrong row
    target.prompt = "".join(f"<{i}>" for i in range(400))
    document = render_report(EvaluationRun("d", [model]))
    row = document[document.index(f'data-pair-id="{html.escape(target.id)}"') :]
    prompt_cell = row[: row.index("</details>")]
    assert "show more" in prompt_cell
    shown_text = re.sub(r"<span class=\"(ellipsis|toggle)\">.*?</span>", "", prompt_cell)
    shown_text = html.unescape(re.sub(r"<[^>]+>", "", shown_text.split("<td>", 2)[-1]))
    assert shown_text.replace(" ", "") == target.prompt


def test_reward_vs_length_is_subsampled_deterministically() -> None:
    model = make_model("m", 1500, categories=())  # 3,000 responses
    run = EvaluationRun("d", [model])
    document = render_report(run)
    scatter = next(svg for svg in document.split("<svg")[1:] if "Reward vs length" in svg)
    assert scatter.count("<circle") == MAX_SCATTER_POINTS
    assert "2,000 of 3,000 responses" in scatter
    assert render_report(run) == document


def test_undefined_metrics_read_n_a() -> None:
    model = make_model("m", 50)
    model.metrics["accuracy"] = None
    model.metrics["accuracy_ci95"] = [float("nan"), 0.5]
    model.metrics["calibration"]["ece"] = float("nan")
    model.metrics["length_bias"] = None
    document = render_report(EvaluationRun("d", [model]))
    card = document[document.index('<article class="card"') : document.index("</article>")]
    assert '<span class="big">n/a</span>' in card
    assert "95% CI n/a" in card
    assert card.count("n/a") >= 6  # accuracy, CI, ECE, Spearman, the two length accuracies
    assert "nan" not in card.lower().replace("tie_band", "")


def n_a_model(name: str) -> ModelEvaluation:
    return ModelEvaluation(name=name, metrics={})


def ties_only() -> ModelEvaluation:
    pairs = [ScoredPair(f"t{i}", "p", "x", "y", "tie", 1.0, 1.0, "only", 1, 1) for i in range(5)]
    return ModelEvaluation("ties", metrics_of(pairs), pairs)


def non_finite_rewards() -> ModelEvaluation:
    model = make_model("inf", 20)
    model.pairs[0].reward_a = math.inf
    model.pairs[1].reward_b = math.nan
    return model


EDGE_CASES = {
    "zero pairs": lambda: [ModelEvaluation("empty", metrics_of([]), [])],
    "metrics missing entirely": lambda: [n_a_model("bare")],
    "all human ties with equal rewards": lambda: [ties_only()],
    "one category": lambda: [make_model("one", 30, categories=("solo",))],
    "no categories": lambda: [make_model("none", 30, categories=())],
    "single pair": lambda: [make_model("single", 1)],
    "constant rewards": lambda: [
        ModelEvaluation(
            "flat",
            *(lambda ps: (metrics_of(ps), ps))(
                [
                    ScoredPair(f"c{i}", "p", "a", "b", "ab"[i % 2], 0.0, 0.0, None, 5, 5)
                    for i in range(8)
                ]
            ),
        )
    ],
    "non-finite rewards in pairs": lambda: [non_finite_rewards()],
    "five models": lambda: [make_model(f"model {i}", 60, seed=i) for i in range(5)],
    "no models": lambda: [],
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_render(case: str) -> None:
    run = EvaluationRun("d.jsonl", EDGE_CASES[case]())
    document = render_report(run)
    assert_structurally_safe(document)
    assert document.startswith("<!DOCTYPE html>") and document.rstrip().endswith("</html>")
    assert "nan" not in re.sub(r"<style>.*?</style>", "", document, flags=re.S).lower().split()
    if case == "zero pairs":
        assert "No pairs were scored." in document
    if case == "all human ties with equal rewards":
        assert "all ties" in document
    if case == "five models":
        assert count_plots(document) == 5 * PLOTS_PER_MODEL + 1
    if case == "no models":
        assert "No model was evaluated." in document


def test_write_report_creates_the_file(tmp_path: Path) -> None:
    run = EvaluationRun("d", [make_model("m", 10)])
    written = write_report(run, tmp_path / "deep" / "report.html", title="t")
    assert written == tmp_path / "deep" / "report.html"
    assert written.read_text(encoding="utf-8") == render_report(run, title="t")


# ----------------------------------------------------------------- browser tests


@pytest.mark.slow
def test_report_in_a_real_browser(browser: Browser, tmp_path: Path) -> None:
    path = write_report(hostile_run(), tmp_path / "report.html")
    page = browser.load(path)
    assert page.console_errors == []
    assert page.dialogs == []  # no alert() ran
    assert page.requests == [page.url]  # the file itself, nothing else
    assert page.dom["scripts"] == 0 and page.dom["images"] == 0 and page.dom["iframes"] == 0
    assert page.dom["handlers"] == []
    assert page.dom["svgs"] == 2 * PLOTS_PER_MODEL + 1
    for payload in PAYLOADS:
        assert payload in page.dom["text"]  # shown as text, literally
    assert not looks_blank(page.screenshot_png), colour_profile(page.screenshot_png)


@pytest.mark.slow
def test_browser_checks_fail_on_a_page_built_to_break_them(
    browser: Browser, tmp_path: Path
) -> None:
    document = render_report(EvaluationRun("d", [make_model("m", 20)]))
    document = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", document)
    document = document.replace(
        "</main>",
        f"{IMG_PAYLOAD}<script>throw new Error('injected failure')</script></main>",
    )
    path = tmp_path / "broken.html"
    path.write_text(document, encoding="utf-8")
    page = browser.load(path)
    assert any("injected failure" in error for error in page.console_errors), page.console_errors
    assert page.dialogs == ["alert: 1"]
    assert page.dom["scripts"] == 1 and "IMG[onerror]" in page.dom["handlers"]
    assert len(page.requests) == 2  # the report and the broken image "x"

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title><p>.</p>", encoding="utf-8")
    assert looks_blank(browser.load(blank).screenshot_png)


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch) -> None:
    from conftest import skip_or_fail_in_ci

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is missing.*CI is set"):
        skip_or_fail_in_ci("chromium is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        skip_or_fail_in_ci("chromium is missing")
