"""The HTML report of a selection: the distribution of scores, pool against selected.

One self-contained file: inline CSS and an inline SVG histogram, nothing fetched
(a Content-Security-Policy meta tag forbids it). Every string from the data
(ids, texts, paths) passes through ``html.escape``. Standard library and numpy.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from prefkit import __version__

_WIDTH, _HEIGHT, _MARGIN = 640, 300, 44


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def histogram_svg(scores: np.ndarray, selected: np.ndarray, *, label: str, bins: int = 40) -> str:
    """Bars of the pool's scores with the selected records' share drawn over them."""
    finite = np.isfinite(scores)
    values, chosen = scores[finite], selected[finite]
    if not len(values):
        return "<p>No finite scores to plot.</p>"
    low, high = float(values.min()), float(values.max())
    if high == low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    pool_counts, _ = np.histogram(values, edges)
    selected_counts, _ = np.histogram(values[chosen], edges)
    tallest = max(1, int(pool_counts.max()))
    plot_width, plot_height = _WIDTH - 2 * _MARGIN, _HEIGHT - 2 * _MARGIN
    bar_width = plot_width / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'role="img" aria-label="{_text(label)}">',
        f'<line x1="{_MARGIN}" y1="{_HEIGHT - _MARGIN}" x2="{_WIDTH - _MARGIN}" '
        f'y2="{_HEIGHT - _MARGIN}" class="axis"/>',
    ]
    for index, (pool_count, selected_count) in enumerate(
        zip(pool_counts, selected_counts, strict=True)
    ):
        x = _MARGIN + index * bar_width
        for count, css in ((pool_count, "pool"), (selected_count, "selected")):
            if not count:
                continue
            height = plot_height * count / tallest
            parts.append(
                f'<rect class="{css}" x="{x:.1f}" y="{_HEIGHT - _MARGIN - height:.1f}" '
                f'width="{max(bar_width - 1, 1):.1f}" height="{height:.1f}">'
                f"<title>{edges[index]:.4g} to {edges[index + 1]:.4g}: {count} {css}</title></rect>"
            )
    parts.append(
        f'<text x="{_MARGIN}" y="{_HEIGHT - 12}">{low:.4g}</text>'
        f'<text x="{_WIDTH - _MARGIN}" y="{_HEIGHT - 12}" text-anchor="end">{high:.4g}</text>'
        f'<text x="{_WIDTH / 2}" y="{_HEIGHT - 12}" text-anchor="middle">{_text(label)}</text>'
        f'<text x="{_MARGIN - 6}" y="{_MARGIN}" text-anchor="end">{tallest}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def render_selection_report(
    *,
    title: str,
    method: str,
    score_label: str,
    scores: np.ndarray,
    selected: np.ndarray,
    ids: Sequence[str],
    summary: dict[str, object],
    examples: int = 10,
) -> str:
    """The report as one HTML document: the counts, the histogram, the top and bottom kept ids."""
    rows = "".join(
        f"<tr><th>{_text(key)}</th><td>{_text(value)}</td></tr>" for key, value in summary.items()
    )
    order = np.argsort(-np.where(np.isfinite(scores), scores, -np.inf), kind="stable")
    kept = [int(i) for i in order if selected[i]]

    def listing(chosen: list[int]) -> str:
        return "".join(f"<li>{_text(ids[i])}: {scores[i]:.6g}</li>" for i in chosen)

    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">"
        f"<title>{_text(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}"
        "table{border-collapse:collapse}th,td{text-align:left;padding:2px 10px}"
        ".pool{fill:#b8c4d6}.selected{fill:#2b6cb0;opacity:.85}.axis{stroke:#444}"
        "text{font-size:12px;fill:#333}</style></head><body>"
        f"<h1>{_text(title)}</h1><p>Method: {_text(method)} (prefkit {_text(__version__)})</p>"
        f"<table>{rows}</table>"
        f"<h2>Distribution of scores</h2><p>Light: every pool record; dark: the selected ones. "
        f"Score: {_text(score_label)}.</p>"
        f"{histogram_svg(scores, selected, label=score_label)}"
        f"<h2>Highest scores kept</h2><ol>{listing(kept[:examples])}</ol>"
        f"<h2>Lowest scores kept</h2><ol>{listing(kept[-examples:][::-1])}</ol>"
        "</body></html>\n"
    )
