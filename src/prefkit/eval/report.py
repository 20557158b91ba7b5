"""The HTML report of an evaluation: one self-contained file for people to read.

:func:`render_report` turns an :class:`~prefkit.eval.results.EvaluationRun` into a
single HTML document: inline CSS, plots drawn here as inline SVG, no script, no
font, image or style sheet fetched from anywhere (a Content-Security-Policy meta
tag forbids it as well). Every string that comes from the data set or the run
(prompts, responses, ids, categories, model names, notes, metric keys) passes
through :func:`_text`, i.e. ``html.escape(..., quote=True)``, whether it lands in
element text, an attribute or an SVG ``<title>`` tooltip.

Per model the report shows a summary card and these plots, side by side when
several models are compared: reward of the preferred vs the other response,
the margin toward the preferred response (correct vs wrong), a reliability
diagram of the confidence in the preferred response, reward against response length and
accuracy per category with 95% intervals. Then the most confidently wrong
pairs. The numbers come from the metrics dict (the schema of
:func:`prefkit.eval.metrics.pairwise_report`); the plots are drawn from the
scored pairs. Output is deterministic: the same run gives the same bytes.

Standard library only.
"""

from __future__ import annotations

import html
import math
import numbers
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit import __version__
from prefkit.eval.results import EvaluationRun, ModelEvaluation, ScoredPair

__all__ = ["render_report", "write_report", "MAX_SCATTER_POINTS", "N_WRONG_EXAMPLES"]

MAX_SCATTER_POINTS = 2000
"""Reward-vs-length plots draw at most this many points (a seeded sample, so reruns match)."""
N_WRONG_EXAMPLES = 10
"""Rows per model in the table of most confidently wrong pairs."""
TEXT_PREVIEW_CHARS = 240
"""Characters of a prompt or response shown before 'show more'."""
MAX_CATEGORY_BARS = 40
"""Per-category plots show the largest categories up to this many."""

_PLOT_WIDTH = 440
_PLOT_HEIGHT = 270


def render_report(run: EvaluationRun, *, title: str = "prefkit evaluation") -> str:
    """The report of ``run`` as one self-contained HTML document."""
    models = run.models
    parts = [
        _header(run, title),
        _summary_section(models),
    ]
    if len(models) > 1:
        parts.append(_comparison_section(models))
    if models:
        parts.extend(
            _plot_section(heading, explanation, models, draw)
            for heading, explanation, draw in _PLOTS
        )
        parts.append(_agreement_section(models))
        parts.append(_extra_metrics_section(models))
        parts.append(_wrong_examples_section(models))
    parts.append(
        f"<footer>Written by prefkit {_text(__version__)}. This file makes no network requests "
        "and runs no script.</footer>"
    )
    body = "\n".join(part for part in parts if part)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="prefkit {_text(__version__)}">\n'
        f"<title>{_text(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_report(
    run: EvaluationRun, path: str | Path, *, title: str = "prefkit evaluation"
) -> Path:
    """Write :func:`render_report` to ``path`` (UTF-8, parent folders created); return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(run, title=title), encoding="utf-8")
    return target


# --------------------------------------------------------------------- formatting


def _text(value: Any) -> str:
    """Escape anything for HTML element text and quoted attributes alike."""
    return html.escape(str(value), quote=True)


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None for None, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars are Real
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _number(value: Any, digits: int = 3, *, signed: bool = False) -> str:
    number = _finite(value)
    if number is None:
        return "n/a"
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


def _percent(value: Any) -> str:
    number = _finite(value)
    return "n/a" if number is None else f"{100 * number:.1f}%"


def _interval(value: Any) -> str:
    """A ``[low, high]`` interval of proportions as ``[71.2%, 76.0%]``; n/a when absent."""
    bounds = _bounds(value)
    if bounds is None:
        return "n/a"
    return f"[{_percent(bounds[0])}, {_percent(bounds[1])}]"


def _with_interval(value: Any, interval: Any) -> str:
    """``74.5% [70.1%, 78.9%]``, the interval left out when there is none."""
    shown = _interval(interval)
    return _percent(value) + (f" <small>{shown}</small>" if shown != "n/a" else "")


def _bounds(value: Any) -> tuple[float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    low, high = _finite(value[0]), _finite(value[1])
    return None if low is None or high is None else (low, high)


def _count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return "n/a"
    return f"{int(value):,}"


def _block(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    """A nested metrics block, or {} when it is absent or null."""
    value = metrics.get(key)
    return value if isinstance(value, dict) else {}


def _clipped(text: str, limit: int = TEXT_PREVIEW_CHARS) -> str:
    """Escaped text; past ``limit`` characters the rest hides behind 'show more'."""
    if len(text) <= limit:
        return f'<div class="text">{_text(text)}</div>'
    return (
        f'<details class="more"><summary><span class="text">{_text(text[:limit])}</span>'
        f'<span class="ellipsis">…</span> <span class="toggle">show more '
        f"({len(text) - limit:,} more characters)</span></summary>"
        f'<span class="text">{_text(text[limit:])}</span></details>'
    )


# ------------------------------------------------------------------------- header


def _header(run: EvaluationRun, title: str) -> str:
    models = run.models
    facts = [
        f"<dt>Data</dt><dd><code>{_text(run.data)}</code></dd>",
        f"<dt>Records read</dt><dd>{_count(run.n_records)}</dd>",
        f"<dt>Records rejected</dt><dd>{_count(run.n_rejected)}</dd>",
        f"<dt>Models</dt><dd>{len(models)}</dd>",
    ]
    notes = _notes_list(run.notes)
    navigation = ""
    if len(models) > 1:
        links = "".join(
            f'<li><a href="#model-{index}">{_text(model.name)}</a></li>'
            for index, model in enumerate(models)
        )
        navigation = f'<nav aria-label="models"><ul>{links}</ul></nav>'
    return (
        f'<header><h1>{_text(title)}</h1><dl class="facts">{"".join(facts)}</dl>'
        f"{notes}{navigation}</header>"
    )


def _notes_list(notes: Iterable[Any], heading: str = "Notes") -> str:
    items = "".join(f"<li>{_text(note)}</li>" for note in notes)
    return f'<div class="notes"><h3>{_text(heading)}</h3><ul>{items}</ul></div>' if items else ""


# ----------------------------------------------------------------------- summaries


def _summary_section(models: Sequence[ModelEvaluation]) -> str:
    if not models:
        return '<section><h2>Summary</h2><p class="empty">No model was evaluated.</p></section>'
    cards = "".join(_summary_card(index, model) for index, model in enumerate(models))
    return f'<section><h2>Summary</h2><div class="cards">{cards}</div></section>'


def _summary_card(index: int, model: ModelEvaluation) -> str:
    metrics = model.metrics
    calibration = _block(metrics, "calibration")
    bias = _block(metrics, "length_bias")
    n_total = metrics.get("n_total", len(model.pairs))
    rows = [
        ("pairs with a human preference (n)", _count(metrics.get("n"))),
        ("all pairs / human ties", f"{_count(n_total)} / {_count(metrics.get('n_human_ties'))}"),
        ("pairs with equal rewards", _count(metrics.get("n_tied_scores"))),
        (
            "accuracy, half credit for equal rewards",
            _with_interval(
                metrics.get("accuracy_half_credit"), metrics.get("accuracy_half_credit_ci95")
            ),
        ),
        (
            "3-way accuracy (a / b / tie)",
            _with_interval(
                metrics.get("three_way_accuracy"), metrics.get("three_way_accuracy_ci95")
            ),
        ),
        ("expected calibration error (ECE)", _number(calibration.get("ece"))),
        ("Brier score", _number(calibration.get("brier"))),
        ("calibration temperature T", _number(calibration.get("temperature"))),
        ("Spearman(reward, length)", _number(bias.get("spearman"), signed=True)),
        (
            "accuracy when preferred is longer",
            f"{_percent(bias.get('accuracy_when_chosen_longer'))} "
            f"<small>n = {_count(bias.get('n_chosen_longer'))}</small>",
        ),
        (
            "accuracy when preferred is shorter",
            f"{_percent(bias.get('accuracy_when_chosen_shorter'))} "
            f"<small>n = {_count(bias.get('n_chosen_shorter'))}</small>",
        ),
    ]
    table = "".join(f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows)
    return (
        f'<article class="card" id="model-{index}">'
        f'<h3 class="model-name">{_text(model.name)}</h3>'
        f'<div class="headline"><span class="big">{_percent(metrics.get("accuracy"))}</span>'
        f'<span class="label">accuracy (equal rewards count as wrong)<br>95% CI '
        f"{_interval(metrics.get('accuracy_ci95'))}</span></div>"
        f'<table class="stats">{table}</table>'
        f"{_notes_list(metrics.get('notes') or [])}</article>"
    )


def _comparison_section(models: Sequence[ModelEvaluation]) -> str:
    header = (
        "<tr><th>model</th><th>n</th><th>accuracy</th><th>95% CI</th><th>half credit</th>"
        "<th>3-way</th><th>ECE</th><th>Brier</th><th>Spearman(reward, length)</th>"
        "<th>acc. preferred longer</th><th>acc. preferred shorter</th></tr>"
    )
    rows = []
    for index, model in enumerate(models):
        metrics = model.metrics
        calibration = _block(metrics, "calibration")
        bias = _block(metrics, "length_bias")
        cells = [
            f'<th><a href="#model-{index}">{_text(model.name)}</a></th>',
            _count(metrics.get("n")),
            _percent(metrics.get("accuracy")),
            _interval(metrics.get("accuracy_ci95")),
            _percent(metrics.get("accuracy_half_credit")),
            _percent(metrics.get("three_way_accuracy")),
            _number(calibration.get("ece")),
            _number(calibration.get("brier")),
            _number(bias.get("spearman"), signed=True),
            _percent(bias.get("accuracy_when_chosen_longer")),
            _percent(bias.get("accuracy_when_chosen_shorter")),
        ]
        rows.append(
            "<tr>"
            + cells[0]
            + "".join(f'<td class="num">{cell}</td>' for cell in cells[1:])
            + "</tr>"
        )
    chart = _interval_bars(
        [
            _Bar(
                model.name,
                _finite(model.metrics.get("accuracy")),
                _bounds(model.metrics.get("accuracy_ci95")),
                model.metrics.get("n"),
            )
            for model in models
        ],
        title="Accuracy of each model, 95% CI",
    )
    return (
        '<section><h2>Comparison</h2><p class="explain">All models scored the same records. '
        "Overlapping intervals mean the data cannot tell the models apart with confidence.</p>"
        f'<div class="scroll"><table class="compare">{header}{"".join(rows)}</table></div>'
        f'<div class="panel wide">{chart}</div></section>'
    )


# --------------------------------------------------------------------------- plots


def _plot_section(
    heading: str,
    explanation: str,
    models: Sequence[ModelEvaluation],
    draw: Callable[[ModelEvaluation], tuple[str, str]],
) -> str:
    panels = []
    for model in models:
        figure, legend = draw(model)
        panels.append(
            f'<figure class="panel"><figcaption>{_text(model.name)}</figcaption>{figure}'
            f"{legend}</figure>"
        )
    layout = "grid single" if len(models) == 1 else "grid"
    return (
        f'<section><h2>{heading}</h2><p class="explain">{explanation}</p>'
        f'<div class="{layout}">{"".join(panels)}</div></section>'
    )


def _legend(*entries: tuple[str, str]) -> str:
    items = "".join(
        f'<span><i class="swatch {css_class}"></i>{label}</span>' for css_class, label in entries
    )
    return f'<div class="legend">{items}</div>'


def _empty_plot(message: str) -> tuple[str, str]:
    return f'<div class="empty-plot">{_text(message)}</div>', ""


def _oriented(pairs: Sequence[ScoredPair]) -> list[tuple[float, float, ScoredPair]]:
    """(preferred reward, other reward, pair) for the pairs with a strict preference and finite rewards."""
    oriented = []
    for pair in pairs:
        reward_a, reward_b = _finite(pair.reward_a), _finite(pair.reward_b)
        if reward_a is None or reward_b is None or pair.outcome not in ("a", "b"):
            continue
        if pair.outcome == "a":
            oriented.append((reward_a, reward_b, pair))
        else:
            oriented.append((reward_b, reward_a, pair))
    return oriented


def _no_preference_message(model: ModelEvaluation) -> str:
    if not model.pairs:
        return "No pairs were scored."
    return "No pair has a strict human preference with finite rewards (all ties?)."


def _reward_distributions(model: ModelEvaluation) -> tuple[str, str]:
    oriented = _oriented(model.pairs)
    if not oriented:
        return _empty_plot(_no_preference_message(model))
    preferred = [item[0] for item in oriented]
    other = [item[1] for item in oriented]
    edges = _bin_edges(preferred + other)
    preferred_counts = _histogram(preferred, edges)
    other_counts = _histogram(other, edges)
    frame = _Frame(edges[0], edges[-1], 0, max(max(preferred_counts), max(other_counts)))
    marks = []
    for css_class, label, counts in (
        ("other", "other", other_counts),
        ("preferred", "preferred", preferred_counts),
    ):
        marks.extend(_histogram_bars(frame, edges, counts, css_class, label))
    svg = frame.svg(
        marks,
        x_label="reward",
        y_label="pairs",
        title=f"Preferred vs other response, {len(oriented):,} pairs",
    )
    return svg, _legend(("preferred", "preferred response"), ("other", "other response"))


def _margin_histogram(model: ModelEvaluation) -> tuple[str, str]:
    oriented = _oriented(model.pairs)
    if not oriented:
        return _empty_plot(_no_preference_message(model))
    margins = [preferred - other for preferred, other, _ in oriented]
    edges = _bin_edges(margins + [0.0])
    correct = _histogram([m for m in margins if m > 0], edges)
    wrong = _histogram([m for m in margins if m <= 0], edges)
    frame = _Frame(edges[0], edges[-1], 0, max(c + w for c, w in zip(correct, wrong)))
    marks = []
    for left, right, n_correct, n_wrong in zip(edges, edges[1:], correct, wrong):
        x, width = frame.x(left), max(frame.x(right) - frame.x(left) - 1, 0.5)
        for css_class, label, bottom, count in (
            ("correct", "ranked correctly", 0, n_correct),
            ("wrong", "ranked wrongly or equal", n_correct, n_wrong),
        ):
            if count:
                top = frame.y(bottom + count)
                marks.append(
                    f'<rect class="{css_class}" x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" '
                    f'height="{frame.y(bottom) - top:.1f}"><title>margin {_tick(left)} to '
                    f"{_tick(right)}: {count:,} {label}</title></rect>"
                )
    marks.append(frame.vertical_rule(0.0))
    svg = frame.svg(
        marks,
        x_label="reward(preferred) − reward(other)",
        y_label="pairs",
        title=f"Margin toward the preferred response, {len(margins):,} pairs",
    )
    return svg, _legend(("correct", "margin > 0: correct"), ("wrong", "margin ≤ 0: wrong"))


def _calibration_plot(model: ModelEvaluation) -> tuple[str, str]:
    calibration = _block(model.metrics, "calibration")
    bins = [entry for entry in calibration.get("bins") or [] if isinstance(entry, dict)]
    if not bins or not any(isinstance(entry.get("n"), int) and entry["n"] > 0 for entry in bins):
        return _empty_plot("No calibration data (no pair with a strict human preference).")
    frame = _Frame(0.0, 1.0, 0.0, 1.0, pad=False)
    largest = max(entry.get("n") or 0 for entry in bins)
    marks = [
        f'<line class="diagonal" x1="{frame.x(0):.1f}" y1="{frame.y(0):.1f}" '
        f'x2="{frame.x(1):.1f}" y2="{frame.y(1):.1f}"><title>perfect calibration</title></line>'
    ]
    points = []
    for entry in bins:
        lower, upper, count = (
            _finite(entry.get("lower")),
            _finite(entry.get("upper")),
            entry.get("n"),
        )
        if lower is None or upper is None or not isinstance(count, int):
            continue
        # Bin counts as a strip of bars along the bottom, labelled with n.
        strip_height = 0.15 * count / largest if largest else 0
        x = frame.x(lower) + 1
        width = max(frame.x(upper) - frame.x(lower) - 2, 0.5)
        marks.append(
            f'<rect class="count" x="{x:.1f}" y="{frame.y(strip_height):.1f}" '
            f'width="{width:.1f}" height="{frame.y(0) - frame.y(strip_height):.1f}">'
            f"<title>confidence in [{lower:.2f}, {upper:.2f}): {count:,} pairs</title></rect>"
        )
        marks.append(
            f'<text class="count-label" x="{x + width / 2:.1f}" '
            f'y="{frame.y(strip_height) - 3:.1f}">{count:,}</text>'
        )
        predicted, observed = (
            _finite(entry.get("mean_predicted")),
            _finite(entry.get("observed_frequency")),
        )
        if count > 0 and predicted is not None and observed is not None:
            points.append((predicted, observed, count, lower, upper))
    before = calibration.get("before_scaling")
    before = before if isinstance(before, dict) else {}
    before_points = _reliability_points(before)
    if len(before_points) > 1:
        marks.append(
            f'<path class="reliability-before" d="{_polyline(frame, before_points)}"></path>'
        )
    for predicted, observed, count, lower, upper in before_points:
        marks.append(
            f'<circle class="reliability-before" cx="{frame.x(predicted):.1f}" '
            f'cy="{frame.y(observed):.1f}" r="2.5"><title>before temperature scaling (T = 1), '
            f"confidence in [{lower:.2f}, {upper:.2f}): {count:,} pairs, mean confidence "
            f"{predicted:.3f}, share where the preferred response won {observed:.3f}</title></circle>"
        )
    if len(points) > 1:
        marks.append(f'<path class="reliability" d="{_polyline(frame, points)}"></path>')
    for predicted, observed, count, lower, upper in points:
        radius = 2.5 + 4.5 * math.sqrt(count / largest)
        marks.append(
            f'<circle class="reliability" cx="{frame.x(predicted):.1f}" cy="{frame.y(observed):.1f}" '
            f'r="{radius:.1f}"><title>confidence in [{lower:.2f}, {upper:.2f}): {count:,} '
            f"pairs, mean confidence {predicted:.3f}, share where the preferred response won {observed:.3f}"
            f"</title></circle>"
        )
    svg = frame.svg(
        marks,
        x_label=f"confidence max(p, 1 − p), p = {_probability_formula(calibration)}",
        y_label="share where the model's choice won",
        title=f"Reliability diagram, ECE {_number(calibration.get('ece'))}",
    )
    entries = [
        (
            "reliability",
            f"bins (ECE {_number(calibration.get('ece'))}, "
            f"Brier {_number(calibration.get('brier'))})",
        )
    ]
    if before_points:
        entries.append(
            (
                "reliability-before",
                f"before temperature scaling, T = 1 (ECE {_number(before.get('ece'))}, "
                f"Brier {_number(before.get('brier'))})",
            )
        )
    return svg, _legend(*entries, ("diagonal", "perfect calibration"), ("count", "pairs per bin"))


def _reliability_points(block: dict[str, Any]) -> list[tuple[float, float, int, float, float]]:
    """(mean confidence, observed share, n, lower, upper) of each filled bin of a calibration
    block."""
    points = []
    for entry in block.get("bins") or []:
        if not isinstance(entry, dict):
            continue
        count = entry.get("n")
        values = [_finite(entry.get(key)) for key in ("mean_predicted", "observed_frequency")]
        bounds = [_finite(entry.get(key)) for key in ("lower", "upper")]
        if isinstance(count, int) and count > 0 and None not in values and None not in bounds:
            points.append((values[0], values[1], count, bounds[0], bounds[1]))
    return points  # type: ignore[return-value]


def _polyline(frame: Any, points: Sequence[tuple[float, float, Any, Any, Any]]) -> str:
    return " ".join(
        f"{'M' if i == 0 else 'L'}{frame.x(p):.1f},{frame.y(o):.1f}"
        for i, (p, o, *_rest) in enumerate(points)
    )


def _probability_formula(calibration: dict[str, Any]) -> str:
    """sigmoid(margin), or sigmoid(margin / T) with the model's fitted T."""
    temperature = _finite(calibration.get("temperature"))
    if temperature is None or temperature == 1.0:
        return "sigmoid(margin)"
    return f"sigmoid(margin / {_number(temperature)})"


def _length_scatter(model: ModelEvaluation) -> tuple[str, str]:
    points = []  # (length, reward, css class, pair id, which response)
    for pair in model.pairs:
        for side, length, reward in (
            ("a", pair.length_a, pair.reward_a),
            ("b", pair.length_b, pair.reward_b),
        ):
            value, size = _finite(reward), _finite(length)
            if value is None or size is None:
                continue
            role = (
                "tie"
                if pair.outcome not in ("a", "b")
                else ("preferred" if pair.outcome == side else "other")
            )
            points.append((size, value, role, pair.id, side))
    if not points or all(point[0] == 0 for point in points):
        return _empty_plot("No response lengths were recorded.")
    n_points = len(points)
    if n_points > MAX_SCATTER_POINTS:
        kept = sorted(random.Random(0).sample(range(n_points), MAX_SCATTER_POINTS))
        points = [points[i] for i in kept]
    frame = _Frame(
        min(p[0] for p in points),
        max(p[0] for p in points),
        min(p[1] for p in points),
        max(p[1] for p in points),
    )
    # Ties first, then other, then preferred on top.
    layer = {"tie": 0, "other": 1, "preferred": 2}
    marks = [
        f'<circle class="{role}" cx="{frame.x(size):.1f}" cy="{frame.y(value):.1f}" r="2.2">'
        f"<title>{_text(pair_id)} ({side}): {size:,.0f} characters, reward {value:.3g}</title></circle>"
        for size, value, role, pair_id, side in sorted(points, key=lambda p: layer[p[2]])
    ]
    sampled = (
        f"{len(points):,} of {n_points:,} responses (fixed sample)"
        if n_points > len(points)
        else f"{n_points:,} responses"
    )
    svg = frame.svg(
        marks,
        x_label="response length (characters)",
        y_label="reward",
        title=f"Reward vs length, {sampled}",
    )
    entries = [("preferred", "preferred"), ("other", "other")]
    if any(point[2] == "tie" for point in points):
        entries.append(("tie", "human tie"))
    legend = _legend(*entries)
    return svg, legend


def _category_plot(model: ModelEvaluation) -> tuple[str, str]:
    categories = _block(model.metrics, "by_category")
    if not categories:
        return _empty_plot("No categories (evaluate with --by FIELD to break results down).")
    entries = sorted(
        ((str(name), entry) for name, entry in categories.items() if isinstance(entry, dict)),
        key=lambda item: (-(item[1].get("n") or 0), item[0]),
    )
    shown = entries[:MAX_CATEGORY_BARS]
    bars = [
        _Bar(
            name,
            _finite(entry.get("accuracy")),
            _bounds(entry.get("accuracy_ci95")),
            entry.get("n"),
        )
        for name, entry in sorted(shown, key=lambda item: item[0])
    ]
    svg = _interval_bars(bars, title=f"Accuracy by category, {len(entries):,} categories")
    note = (
        f'<p class="small">Showing the {len(shown)} largest of {len(entries):,} categories.</p>'
        if len(entries) > len(shown)
        else ""
    )
    return svg, _legend(("bar", "accuracy"), ("whisker", "95% CI"), ("chance", "50%")) + note


_PLOTS = (
    (
        "Reward distributions",
        "Rewards given to the response the human preferred and to the other one "
        "(pairs judged a tie are left out). The further apart, the better the model separates them.",
        _reward_distributions,
    ),
    (
        "Margins",
        "reward(preferred) − reward(other) for each pair with a human preference. "
        "Everything right of zero is ranked correctly; large negative margins are confident mistakes.",
        _margin_histogram,
    ),
    (
        "Calibration",
        "Reliability diagram: the confidence max(p, 1 − p) in the preferred response, "
        "p = sigmoid((reward_a − reward_b) / T) with the model's calibration temperature T "
        "(1 unless it was fitted on held-out pairs), in 10 bins, against how often that response won "
        "(the same whichever response is stored first). Points on the diagonal are well "
        "calibrated; the bars at the bottom count the pairs per bin.",
        _calibration_plot,
    ),
    (
        "Reward and length",
        "Reward against the length of each response. A strong upward trend is a length bias.",
        _length_scatter,
    ),
    (
        "Accuracy by category",
        "Strict accuracy per category with its 95% bootstrap interval; the dashed line is 50%.",
        _category_plot,
    ),
)


# ------------------------------------------------------------------- SVG drawing


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude


def _ticks(low: float, high: float, target: int = 5) -> list[float]:
    step = _nice_step(high - low, target)
    first = math.ceil(low / step - 1e-9)
    ticks = []
    index = first
    while index * step <= high + step * 1e-9:
        ticks.append(index * step)
        index += 1
    return ticks


def _tick(value: float) -> str:
    """Short label for an axis value: ``0.25``, ``1.5k``, ``-3``."""
    if abs(value) < 1e-12:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:.4g}"


class _Frame:
    """A plot area with linear x and y scales, in SVG user units."""

    left, right, top, bottom = 52, 14, 30, 44

    def __init__(
        self,
        x_low: float,
        x_high: float,
        y_low: float,
        y_high: float,
        *,
        pad: bool = True,
        width: int = _PLOT_WIDTH,
        height: int = _PLOT_HEIGHT,
    ) -> None:
        self.x_low, self.x_high = _widened(x_low, x_high, pad=pad)
        self.y_low, self.y_high = _widened(y_low, y_high, pad=pad, keep_zero=y_low == 0)
        self.width, self.height = width, height

    def x(self, value: float) -> float:
        span = self.width - self.left - self.right
        return self.left + (value - self.x_low) / (self.x_high - self.x_low) * span

    def y(self, value: float) -> float:
        span = self.height - self.top - self.bottom
        return self.height - self.bottom - (value - self.y_low) / (self.y_high - self.y_low) * span

    def vertical_rule(self, value: float) -> str:
        if not self.x_low <= value <= self.x_high:
            return ""
        return (
            f'<line class="rule" x1="{self.x(value):.1f}" y1="{self.top}" '
            f'x2="{self.x(value):.1f}" y2="{self.height - self.bottom}"></line>'
        )

    def svg(self, marks: list[str], *, x_label: str, y_label: str, title: str) -> str:
        plot_left, plot_right = self.left, self.width - self.right
        plot_top, plot_bottom = self.top, self.height - self.bottom
        axes = []
        for value in _ticks(self.x_low, self.x_high):
            x = self.x(value)
            axes.append(
                f'<line class="grid" x1="{x:.1f}" y1="{plot_top}" x2="{x:.1f}" y2="{plot_bottom}"></line>'
                f'<text class="tick" x="{x:.1f}" y="{plot_bottom + 14}" text-anchor="middle">'
                f"{_tick(value)}</text>"
            )
        for value in _ticks(self.y_low, self.y_high):
            y = self.y(value)
            axes.append(
                f'<line class="grid" x1="{plot_left}" y1="{y:.1f}" x2="{plot_right}" y2="{y:.1f}"></line>'
                f'<text class="tick" x="{plot_left - 5}" y="{y + 3.5:.1f}" text-anchor="end">'
                f"{_tick(value)}</text>"
            )
        axes.append(
            f'<rect class="frame" x="{plot_left}" y="{plot_top}" width="{plot_right - plot_left}" '
            f'height="{plot_bottom - plot_top}"></rect>'
            f'<text class="axis-label" x="{(plot_left + plot_right) / 2:.1f}" '
            f'y="{self.height - 8}" text-anchor="middle">{_text(x_label)}</text>'
            f'<text class="axis-label" transform="translate(13 {(plot_top + plot_bottom) / 2:.1f}) '
            f'rotate(-90)" text-anchor="middle">{_text(y_label)}</text>'
            f'<text class="plot-title" x="{plot_left}" y="18">{_text(title)}</text>'
        )
        return (
            f'<svg class="plot" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{_text(title)}"><title>{_text(title)}</title>'
            f'{"".join(axes)}<g class="marks">{"".join(marks)}</g></svg>'
        )


def _widened(low: float, high: float, *, pad: bool, keep_zero: bool = False) -> tuple[float, float]:
    """A drawable range: never empty, with 4% padding unless told otherwise."""
    if high < low:
        low, high = high, low
    if high == low:
        half = max(abs(low) * 0.1, 0.5)
        return (low if keep_zero else low - half), high + half
    if not pad:
        return low, high
    margin = 0.04 * (high - low)
    return (low if keep_zero else low - margin), high + margin


def _bin_edges(values: Sequence[float]) -> list[float]:
    """Equal-width bin edges over ``values``: about sqrt(n) bins, 8 to 40."""
    low, high = min(values), max(values)
    if high == low:
        low, high = low - 0.5, high + 0.5
    n_bins = min(40, max(8, round(math.sqrt(len(values)))))
    width = (high - low) / n_bins
    return [low + i * width for i in range(n_bins)] + [high]


def _histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    low, high = edges[0], edges[-1]
    scale = len(counts) / (high - low)
    for value in values:
        index = min(int((value - low) * scale), len(counts) - 1)
        counts[max(index, 0)] += 1
    return counts


def _histogram_bars(
    frame: _Frame, edges: Sequence[float], counts: Sequence[int], css_class: str, label: str
) -> list[str]:
    bars = []
    for left, right, count in zip(edges, edges[1:], counts):
        if not count:
            continue
        x, top = frame.x(left), frame.y(count)
        bars.append(
            f'<rect class="{css_class}" x="{x:.1f}" y="{top:.1f}" '
            f'width="{max(frame.x(right) - x - 1, 0.5):.1f}" height="{frame.y(0) - top:.1f}">'
            f"<title>{_tick(left)} to {_tick(right)}: {count:,} {label}</title></rect>"
        )
    return bars


@dataclass
class _Bar:
    label: str
    value: float | None
    interval: tuple[float, float] | None
    n: Any


def _interval_bars(bars: Sequence[_Bar], *, title: str) -> str:
    """Horizontal bars of proportions in [0, 1] with interval whiskers, one row per bar."""
    label_width, value_width, row_height = 150, 120, 24
    top, bottom = 30, 30
    width = _PLOT_WIDTH + 120
    height = top + bottom + row_height * max(len(bars), 1)
    span = width - label_width - value_width

    def x(value: float) -> float:
        return label_width + min(max(value, 0.0), 1.0) * span

    marks = [f'<text class="plot-title" x="4" y="18">{_text(title)}</text>']
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        marks.append(
            f'<line class="{"chance" if value == 0.5 else "grid"}" x1="{x(value):.1f}" y1="{top}" '
            f'x2="{x(value):.1f}" y2="{height - bottom}"></line>'
            f'<text class="tick" x="{x(value):.1f}" y="{height - bottom + 14}" '
            f'text-anchor="middle">{value:.0%}</text>'
        )
    for row, bar in enumerate(bars):
        middle = top + row * row_height + row_height / 2
        label = bar.label if len(bar.label) <= 22 else bar.label[:21] + "…"
        marks.append(
            f'<text class="bar-label" x="{label_width - 6}" y="{middle + 4:.1f}" '
            f'text-anchor="end"><title>{_text(bar.label)}</title>{_text(label)}</text>'
        )
        summary = f"{_percent(bar.value)}, 95% CI {_interval(bar.interval)}, n = {_count(bar.n)}"
        if bar.value is not None:
            marks.append(
                f'<rect class="bar" x="{x(0):.1f}" y="{middle - 7:.1f}" '
                f'width="{x(bar.value) - x(0):.1f}" height="14"><title>{_text(bar.label)}: '
                f"{summary}</title></rect>"
            )
        if bar.interval is not None:
            low, high = x(bar.interval[0]), x(bar.interval[1])
            marks.append(
                f'<path class="whisker" d="M{low:.1f},{middle:.1f} H{high:.1f} '
                f"M{low:.1f},{middle - 5:.1f} V{middle + 5:.1f} M{high:.1f},{middle - 5:.1f} "
                f'V{middle + 5:.1f}"></path>'
            )
        marks.append(
            f'<text class="bar-value" x="{width - value_width + 6}" y="{middle + 4:.1f}">'
            f"{_percent(bar.value)}  n={_count(bar.n)}</text>"
        )
    return (
        f'<svg class="plot bars" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_text(title)}"><title>{_text(title)}</title>{"".join(marks)}</svg>'
    )


# ------------------------------------------------------------------------- tables


def _agreement_section(models: Sequence[ModelEvaluation]) -> str:
    tables = []
    for model in models:
        agreement = _block(model.metrics, "annotator_agreement")
        if not agreement:
            continue
        rows = []
        people = [
            (f"annotator {entry.get('annotator', '?')}", entry)
            for entry in agreement.get("per_annotator") or []
            if isinstance(entry, dict)
        ]
        majority = agreement.get("majority")
        if isinstance(majority, dict):
            people.append(("majority", majority))
        for who, entry in people:
            rows.append(
                f'<tr><th>{_text(who)}</th><td class="num">{_count(entry.get("n_votes"))}</td>'
                f'<td class="num">{_count(entry.get("n_tie_votes"))}</td>'
                f'<td class="num">{_percent(entry.get("accuracy"))}</td>'
                f'<td class="num">{_interval(entry.get("accuracy_ci95"))}</td>'
                f'<td class="num">{_percent(entry.get("three_way_accuracy"))}</td>'
                f'<td class="num">{_interval(entry.get("three_way_accuracy_ci95"))}</td></tr>'
            )
        tables.append(
            f'<h3>{_text(model.name)}</h3><div class="scroll"><table class="compare">'
            "<tr><th>against</th><th>votes</th><th>tie votes</th><th>accuracy</th><th>95% CI</th>"
            f"<th>3-way</th><th>95% CI</th></tr>{''.join(rows)}</table></div>"
            f'<p class="small">Tie policy: {_text(agreement.get("tie_policy", "n/a"))}; '
            f"tie band {_number(agreement.get('tie_band'))}.</p>"
        )
    if not tables:
        return ""
    return (
        '<section><h2>Agreement with annotators</h2><p class="explain">How often the model '
        "agrees with each annotator and with the majority vote, over the items each one voted on.</p>"
        f"{''.join(tables)}</section>"
    )


_SHOWN_KEYS = {
    "n_total",
    "n",
    "n_human_ties",
    "n_tied_scores",
    "accuracy",
    "accuracy_ci95",
    "accuracy_half_credit",
    "accuracy_half_credit_ci95",
    "three_way_accuracy",
    "three_way_accuracy_ci95",
    "by_category",
    "calibration",
    "length_bias",
    "annotator_agreement",
    "notes",
}


def _flatten(value: Any, prefix: str, rows: list[tuple[str, str]], limit: int = 300) -> None:
    """Dotted-key rows for a nested metrics value (numbers formatted, strings escaped later)."""
    if len(rows) >= limit:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), rows, limit)
    elif isinstance(value, list | tuple) and any(isinstance(item, dict | list) for item in value):
        for index, item in enumerate(value):
            _flatten(item, f"{prefix}[{index}]", rows, limit)
    elif isinstance(value, list | tuple):
        rows.append((prefix, "[" + ", ".join(_plain(item) for item in value) + "]"))
    else:
        rows.append((prefix, _plain(value)))


def _plain(value: Any) -> str:
    """A metric value as text: numbers formatted, NaN and None as n/a, anything else as str."""
    if value is None:
        return "n/a"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        number = _finite(value)
        return "n/a" if number is None else f"{number:.4g}"
    return str(value)


def _extra_metrics_section(models: Sequence[ModelEvaluation]) -> str:
    blocks = []
    for model in models:
        rows: list[tuple[str, str]] = []
        for key, value in model.metrics.items():
            if key not in _SHOWN_KEYS:
                _flatten(value, str(key), rows)
        if rows:
            table = "".join(
                f"<tr><th><code>{_text(key)}</code></th><td>{_text(value)}</td></tr>"
                for key, value in rows
            )
            blocks.append(
                f"<details><summary>{_text(model.name)}: {len(rows):,} values</summary>"
                f'<div class="scroll"><table class="kv">{table}</table></div></details>'
            )
    if not blocks:
        return ""
    return (
        '<section><h2>All other metrics</h2><p class="explain">Every further value in the '
        "metrics (as in the JSON output), for reference.</p>" + "".join(blocks) + "</section>"
    )


def _wrong_examples_section(models: Sequence[ModelEvaluation]) -> str:
    parts = []
    for model in models:
        wrong = [
            (other - preferred, preferred, other, pair)
            for preferred, other, pair in _oriented(model.pairs)
            if preferred < other
        ]
        wrong.sort(key=lambda item: -item[0])
        heading = f"<h3>{_text(model.name)}</h3>" if len(models) > 1 else ""
        if not wrong:
            message = (
                "No pair is ranked wrongly with a nonzero margin."
                if _oriented(model.pairs)
                else _no_preference_message(model)
            )
            parts.append(f'{heading}<p class="empty">{_text(message)}</p>')
            continue
        rows = []
        for rank, (gap, _preferred, _other, pair) in enumerate(wrong[:N_WRONG_EXAMPLES], start=1):
            category = f'<div class="small">{_text(pair.category)}</div>' if pair.category else ""
            rows.append(
                f'<tr data-pair-id="{_text(pair.id)}"><td class="num">{rank}</td>'
                f"<td><code>{_text(pair.id)}</code>{category}</td>"
                f"<td>{_clipped(pair.prompt)}</td>"
                f'<td class="{"preferred-cell" if pair.outcome == "a" else ""}">'
                f"{_clipped(pair.response_a)}</td>"
                f'<td class="{"preferred-cell" if pair.outcome == "b" else ""}">'
                f"{_clipped(pair.response_b)}</td>"
                f'<td class="num">{_text(pair.outcome)}</td>'
                f'<td class="num">{_number(pair.reward_a)}</td>'
                f'<td class="num">{_number(pair.reward_b)}</td>'
                f'<td class="num">{_number(-gap)}</td></tr>'
            )
        parts.append(
            f'{heading}<p class="small">{len(wrong):,} pairs ranked wrongly with a nonzero '
            f"margin; the {min(len(wrong), N_WRONG_EXAMPLES)} with the largest margin:</p>"
            '<div class="scroll"><table class="examples"><tr><th>#</th><th>id</th>'
            "<th>prompt</th><th>response a</th><th>response b</th><th>human</th>"
            "<th>reward a</th><th>reward b</th><th>margin toward preferred</th></tr>"
            f"{''.join(rows)}</table></div>"
        )
    return (
        '<section><h2>Most confidently wrong</h2><p class="explain">Pairs with a human '
        "preference where the model prefers the other response by the largest margin. "
        "The response the human preferred is shaded. Such rows are often label noise "
        "worth a second look.</p>" + "".join(parts) + "</section>"
    )


# ---------------------------------------------------------------------------- CSS

_CSS = """
:root {
  --ink: #1d2430; --muted: #5b6576; --line: #d9dee7; --paper: #ffffff; --wash: #f4f6fa;
  --preferred: #2563eb; --other: #f08c00; --correct: #2f9e6e; --wrong: #d6336c;
  --tie: #8a94a6; --accent: #2563eb;
}
@media (prefers-color-scheme: dark) {
  :root { --ink: #e6e9ef; --muted: #a3acbb; --line: #3a4150; --paper: #171b22; --wash: #1f252e;
    --preferred: #5b8def; --other: #f5a524; --correct: #3fbf86; --wrong: #f06595; }
}
* { box-sizing: border-box; }
html { background: var(--wash); color: var(--ink); }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; }
main { max-width: 1440px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 28px; margin: 0 0 10px; letter-spacing: -0.01em; }
h2 { font-size: 20px; margin: 36px 0 6px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 8px; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  overflow-wrap: anywhere; }
a { color: var(--accent); }
small, .small { color: var(--muted); font-size: 13px; }
.explain { color: var(--muted); margin: 0 0 14px; max-width: 75ch; }
.empty { color: var(--muted); font-style: italic; }
dl.facts { display: flex; flex-wrap: wrap; gap: 4px 28px; margin: 0 0 12px; }
dl.facts dt { color: var(--muted); font-size: 13px; }
dl.facts dd { margin: 0; font-weight: 600; }
nav ul { list-style: none; padding: 0; margin: 10px 0 0; display: flex; flex-wrap: wrap; gap: 8px; }
nav a { display: inline-block; padding: 2px 10px; border: 1px solid var(--line); border-radius: 999px;
  background: var(--paper); text-decoration: none; }
.notes h3 { font-size: 13px; margin: 12px 0 4px; color: var(--muted); text-transform: uppercase;
  letter-spacing: 0.04em; }
.notes ul { margin: 0; padding-left: 18px; font-size: 13px; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 16px; }
.card, .panel { background: var(--paper); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; box-shadow: 0 1px 2px rgba(16, 24, 40, 0.05); }
.model-name { margin: 0 0 8px; overflow-wrap: anywhere; }
.headline { display: flex; align-items: baseline; gap: 14px; margin-bottom: 10px; }
.headline .big { font-size: 36px; font-weight: 700; color: var(--accent); line-height: 1.1; }
.headline .label { font-size: 13px; color: var(--muted); }
table { border-collapse: collapse; }
table.stats { width: 100%; font-size: 14px; }
table.stats th { text-align: left; font-weight: 400; color: var(--muted); padding: 3px 8px 3px 0; }
table.stats td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.compare, table.examples, table.kv { width: 100%; background: var(--paper); font-size: 14px;
  border: 1px solid var(--line); }
table.compare th, table.compare td, table.examples th, table.examples td, table.kv th, table.kv td {
  border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left; vertical-align: top; }
table.compare tr:first-child th, table.examples tr:first-child th { background: var(--wash);
  font-size: 13px; color: var(--muted); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.examples td { max-width: 360px; }
td.preferred-cell { background: color-mix(in srgb, var(--preferred) 8%, transparent); }
.text { white-space: pre-wrap; overflow-wrap: anywhere; }
details.more summary { cursor: pointer; list-style: none; }
details.more summary::-webkit-details-marker { display: none; }
details.more .toggle { color: var(--accent); font-size: 12px; white-space: nowrap; }
details.more[open] .toggle, details.more[open] .ellipsis { display: none; }
details > summary { cursor: pointer; }
.scroll { overflow-x: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 16px; }
.grid.single { grid-template-columns: minmax(380px, 720px); }
figure.panel { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 4px; overflow-wrap: anywhere; }
.panel.wide { max-width: 760px; margin-top: 16px; }
svg.plot { width: 100%; height: auto; display: block; font-size: 11px; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .frame { fill: none; stroke: var(--line); }
svg .tick { fill: var(--muted); font-size: 10.5px; }
svg .axis-label { fill: var(--muted); font-size: 11.5px; }
svg .plot-title { fill: var(--ink); font-size: 12.5px; font-weight: 600; }
svg .rule { stroke: var(--ink); stroke-width: 1; stroke-dasharray: 3 3; }
svg rect.preferred, svg circle.preferred { fill: var(--preferred); fill-opacity: 0.55; }
svg rect.other, svg circle.other { fill: var(--other); fill-opacity: 0.55; }
svg circle.tie { fill: var(--tie); fill-opacity: 0.5; }
svg rect.correct { fill: var(--correct); fill-opacity: 0.8; }
svg rect.wrong { fill: var(--wrong); fill-opacity: 0.8; }
svg .diagonal { stroke: var(--muted); stroke-dasharray: 4 4; }
svg path.reliability { fill: none; stroke: var(--preferred); stroke-width: 2; }
svg path.reliability-before { fill: none; stroke: var(--muted); stroke-width: 1.5; stroke-dasharray: 5 4; }
svg circle.reliability-before { fill: var(--muted); }
.swatch.reliability-before { background: var(--muted); }
svg circle.reliability { fill: var(--preferred); stroke: var(--paper); stroke-width: 1; }
svg rect.count { fill: var(--tie); fill-opacity: 0.35; }
svg .count-label { fill: var(--muted); font-size: 9px; text-anchor: middle; }
svg rect.bar { fill: var(--preferred); fill-opacity: 0.75; }
svg .whisker { stroke: var(--ink); stroke-width: 1.4; fill: none; }
svg .chance { stroke: var(--muted); stroke-dasharray: 4 3; }
svg .bar-label, svg .bar-value { fill: var(--ink); font-size: 11.5px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12.5px; color: var(--muted);
  margin-top: 6px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px;
  vertical-align: -1px; }
.swatch.preferred, .swatch.reliability, .swatch.bar { background: var(--preferred); }
.swatch.other { background: var(--other); }
.swatch.tie, .swatch.count { background: var(--tie); }
.swatch.correct { background: var(--correct); }
.swatch.wrong { background: var(--wrong); }
.swatch.diagonal, .swatch.chance { height: 0; border-top: 2px dashed var(--muted); border-radius: 0; }
.swatch.whisker { height: 2px; background: var(--ink); }
.empty-plot { display: flex; align-items: center; justify-content: center; min-height: 140px;
  color: var(--muted); font-style: italic; text-align: center; padding: 12px;
  border: 1px dashed var(--line); border-radius: 8px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12.5px; }
"""
