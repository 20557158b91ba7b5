"""Agreement between annotators: Krippendorff's alpha, Fleiss' kappa, per-annotator rates.

Pure numpy. Reliability data is a ``(coders, units)`` array with ``NaN`` where a
coder did not label a unit (the layout of Krippendorff 2011 and of the
``krippendorff`` package).

Krippendorff's alpha (Krippendorff 2011, "Computing Krippendorff's
Alpha-Reliability", eqs. for the coincidence matrix and the metric differences):

    o_ck  = sum over units u with m_u >= 2 values of (n_uc n_uk - [c = k] n_uc) / (m_u - 1)
    n_c   = sum_k o_ck,   n = sum_c n_c
    alpha = 1 - (n - 1) * sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck

with the squared difference ``d2`` of the level of measurement: nominal
``[c != k]``; interval ``(c - k)^2``; ordinal
``(sum_{g from c to k} n_g - (n_c + n_k) / 2)^2``. Units with fewer than two
values are not pairable and are left out. When every pairable value is the
same, the expected disagreement is 0 and alpha is undefined (NaN).

Fleiss' kappa (Fleiss 1971) on a ``(units, categories)`` table of counts:

    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)),   P = mean_i P_i
    p_j = sum_i n_ij / sum_i n_i,                   P_e = sum_j p_j^2
    kappa = (P - P_e) / (1 - P_e)

Departure from the paper: units may have different numbers of ratings n_i (each
unit's P_i uses its own n_i, and p_j pools all ratings); with equal n_i this is
exactly Fleiss' statistic. Units with fewer than two ratings are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Level = Literal["nominal", "ordinal", "interval"]


def reliability_matrix(
    entries: Iterable[tuple[str, str, float]],
) -> tuple[np.ndarray, list[str], list[str]]:
    """``(unit, coder, value)`` triples -> ((coders, units) array with NaN, coder names, unit names)."""
    triples = list(entries)
    coders = sorted({coder for _, coder, _ in triples})
    units = sorted({unit for unit, _, _ in triples})
    coder_index = {name: i for i, name in enumerate(coders)}
    unit_index = {name: i for i, name in enumerate(units)}
    data = np.full((len(coders), len(units)), np.nan)
    for unit, coder, value in triples:
        data[coder_index[coder], unit_index[unit]] = value
    return data, coders, units


def _value_counts(reliability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values (V,), counts (units, V)) over the pairable units only."""
    data = np.asarray(reliability, dtype=float)
    if data.ndim != 2:
        raise ValueError(f"reliability data must be (coders, units), got shape {data.shape}")
    values = np.unique(data[~np.isnan(data)])
    counts = (
        np.stack([(data == value).sum(axis=0) for value in values], axis=1)
        if values.size
        else np.zeros((data.shape[1], 0))
    )
    pairable = counts.sum(axis=1) >= 2
    return values, counts[pairable].astype(float)


def coincidence_matrix(reliability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values (V,), o (V, V)): the coincidences of values within pairable units."""
    values, counts = _value_counts(reliability)
    m = counts.sum(axis=1)  # (U,) values per unit
    if counts.shape[0] == 0:
        return values, np.zeros((values.size, values.size))
    outer = counts[:, :, None] * counts[:, None, :]  # (U, V, V)
    outer -= np.einsum("uv,vw->uvw", counts, np.eye(values.size))
    return values, (outer / (m - 1)[:, None, None]).sum(axis=0)


def squared_differences(values: np.ndarray, n_c: np.ndarray, level: Level) -> np.ndarray:
    """(V, V) metric differences d2_ck for the level of measurement."""
    if level == "nominal":
        return 1.0 - np.eye(values.size)
    if level == "interval":
        return (values[:, None] - values[None, :]) ** 2
    if level == "ordinal":
        cumulative = np.concatenate([[0.0], np.cumsum(n_c)])  # cumulative[i] = sum of n_g, g < i
        low = np.minimum.outer(np.arange(values.size), np.arange(values.size))
        high = np.maximum.outer(np.arange(values.size), np.arange(values.size))
        between = cumulative[high + 1] - cumulative[low]  # sum of n_g for g from c to k
        return (between - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    raise ValueError(f"level must be nominal, ordinal or interval, got {level!r}")


def krippendorff_alpha(reliability: np.ndarray, level: Level = "nominal") -> float:
    """Krippendorff's alpha of ``(coders, units)`` data with NaN for missing (see module)."""
    values, o = coincidence_matrix(reliability)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if values.size == 0 or n < 2:
        return float("nan")
    d2 = squared_differences(values, n_c, level)
    expected = (np.outer(n_c, n_c) * d2).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * (o * d2).sum() / expected)


def category_counts(reliability: np.ndarray) -> np.ndarray:
    """(units, categories) counts of each distinct value per unit, for Fleiss' kappa."""
    return _value_counts(reliability)[1]


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a ``(units, categories)`` count table (see module)."""
    table = np.asarray(counts, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"counts must be (units, categories), got shape {table.shape}")
    n_i = table.sum(axis=1)
    table, n_i = table[n_i >= 2], n_i[n_i >= 2]
    if table.shape[0] == 0:
        return float("nan")
    p_i = ((table**2).sum(axis=1) - n_i) / (n_i * (n_i - 1.0))
    p_j = table.sum(axis=0) / n_i.sum()
    chance = float((p_j**2).sum())
    if chance >= 1.0:
        return float("nan")
    return float((p_i.mean() - chance) / (1.0 - chance))


@dataclass(frozen=True)
class CoderAgreement:
    """How often one annotator agrees with what the others said on the same units."""

    agreement: float
    """nominal: the share of units where this coder's value is the others' plurality;
    ordinal/interval: 1 - mean |value - median of the others| / (range of all values)."""
    n_units: int
    """Units compared (0: this coder shares no unit with anyone, or the others never agreed)."""


def coder_agreement(reliability: np.ndarray, level: Level = "nominal") -> list[CoderAgreement]:
    """Per coder (row), agreement with the consensus of the other coders, unit by unit.

    The consensus leaves the coder out, so one careless annotator does not drag the
    others down: nominal data compares with the plurality of the others' values
    (a unit where their top count is shared is not compared); ordinal and interval
    data with the median of the others' values.
    """
    data = np.asarray(reliability, dtype=float)
    present = ~np.isnan(data)
    finite = data[present]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    results = []
    for coder in range(data.shape[0]):
        total, n_units = 0.0, 0
        for unit in np.flatnonzero(present[coder]):
            others = np.delete(data[:, unit], coder)
            others = others[~np.isnan(others)]
            if others.size == 0:
                continue
            value = data[coder, unit]
            if level == "nominal":
                values, counts = np.unique(others, return_counts=True)
                if (counts == counts.max()).sum() > 1:
                    continue
                total += float(value == values[np.argmax(counts)])
            else:
                gap = abs(value - float(np.median(others)))
                total += 1.0 - gap / spread if spread > 0 else 1.0
            n_units += 1
        results.append(CoderAgreement(total / n_units if n_units else float("nan"), n_units))
    return results


def pairable_units(reliability: np.ndarray) -> int:
    """Units with at least two values (the ones agreement is computed on)."""
    data = np.asarray(reliability, dtype=float)
    return int(((~np.isnan(data)).sum(axis=0) >= 2).sum())


def describe_alpha(alpha: float) -> str:
    """Krippendorff's (2004) reading: >= 0.8 reliable, >= 0.667 tentative, else low."""
    if alpha != alpha:  # NaN
        return "undefined (no pairable disagreement possible)"
    if alpha >= 0.8:
        return "reliable (>= 0.8)"
    if alpha >= 0.667:
        return "tentative (0.667 - 0.8)"
    return "low (< 0.667)"
