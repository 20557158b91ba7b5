"""Agreement metrics: hand-worked values, and the ``krippendorff`` package on the same data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import import_or_skip_outside_ci
from prefkit.annotate.agreement import (
    category_counts,
    coder_agreement,
    coincidence_matrix,
    fleiss_kappa,
    krippendorff_alpha,
    pairable_units,
    reliability_matrix,
)

NAN = float("nan")
# Example A: two coders, four units, values 0/1 (e.g. pairwise a/b).
TWO_CODERS = np.array([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=float)
# Example B: three coders on a 1..3 scale, two values missing.
THREE_CODERS = np.array([[1, 2, 3, NAN], [1, 2, 2, 3], [NAN, 3, 3, 3]])


def test_alpha_and_kappa_of_two_coders_by_hand() -> None:
    """Units (0,0) (0,1) (1,1) (1,1), every unit has m = 2 values, so each ordered pair
    of values counts 1/(m-1) = 1:

        o = [[2, 1], [1, 4]],  n_0 = 3, n_1 = 5, n = 8
        alpha = 1 - (n-1) * (o_01 + o_10) / (n_0 n_1 + n_1 n_0) = 1 - 7 * 2 / 30 = 8/15

    Fleiss: P_i = 1, 0, 1, 1 -> P = 3/4; p = (3/8, 5/8) -> P_e = 34/64;
    kappa = (3/4 - 34/64) / (1 - 34/64) = 14/30 = 7/15.
    Each coder agrees with the other (the consensus of the others) on 3 of 4 units.
    """
    values, o = coincidence_matrix(TWO_CODERS)
    assert values.tolist() == [0.0, 1.0]
    assert o.tolist() == [[2.0, 1.0], [1.0, 4.0]]
    assert krippendorff_alpha(TWO_CODERS, "nominal") == pytest.approx(8 / 15, abs=1e-12)
    assert category_counts(TWO_CODERS).tolist() == [[2, 0], [1, 1], [0, 2], [0, 2]]
    assert fleiss_kappa(category_counts(TWO_CODERS)) == pytest.approx(7 / 15, abs=1e-12)
    assert [(c.agreement, c.n_units) for c in coder_agreement(TWO_CODERS)] == [(0.75, 4), (0.75, 4)]


def test_alpha_at_three_levels_with_missing_values_by_hand() -> None:
    """Units {1,1} (m=2), {2,2,3} (m=3), {3,2,3} (m=3), {3,3} (m=2):

        u1: o_11 += 2;  u2: o_22 += (4-2)/2 = 1, o_23 = o_32 += 2/2 = 1;
        u3: o_23 = o_32 += 1, o_33 += (4-2)/2 = 1;  u4: o_33 += 2
        o = [[2,0,0],[0,1,2],[0,2,3]],  n = (2, 3, 5),  n.. = 10
        observed sum  = o_23 + o_32 = 4 times d2(2,3)
        expected sum  = 2 (n1 n2 d2(1,2) + n1 n3 d2(1,3) + n2 n3 d2(2,3))

    nominal (d2 = 1): 1 - 9 * 4 / (2 (6 + 10 + 15)) = 1 - 36/62 = 26/62
    interval (d2 = (c-k)^2): 1 - 9 * 4 / (2 (6 + 40 + 15)) = 1 - 36/122 = 86/122
    ordinal: d2(1,2) = (2 + 3 - 5/2)^2 = 6.25, d2(2,3) = (3 + 5 - 4)^2 = 16,
             d2(1,3) = (10 - 7/2)^2 = 42.25;
             1 - 9 * 4 * 16 / (2 (6 * 6.25 + 10 * 42.25 + 15 * 16)) = 1 - 576/1400
    Fleiss (n_i = 2, 3, 3, 2): P_i = 1, 1/3, 1/3, 1 -> P = 2/3; p = (.2, .3, .5)
    -> P_e = .38; kappa = (2/3 - .38) / .62.
    """
    _, o = coincidence_matrix(THREE_CODERS)
    assert o.tolist() == [[2, 0, 0], [0, 1, 2], [0, 2, 3]]
    assert krippendorff_alpha(THREE_CODERS, "nominal") == pytest.approx(26 / 62, abs=1e-12)
    assert krippendorff_alpha(THREE_CODERS, "interval") == pytest.approx(86 / 122, abs=1e-12)
    assert krippendorff_alpha(THREE_CODERS, "ordinal") == pytest.approx(1 - 576 / 1400, abs=1e-12)
    assert fleiss_kappa(category_counts(THREE_CODERS)) == pytest.approx(
        (2 / 3 - 0.38) / 0.62, abs=1e-12
    )
    assert pairable_units(THREE_CODERS) == 4


def test_agreement_of_each_coder_with_the_others_by_hand() -> None:
    """Example B, each coder against the others' consensus on the units they share.

    nominal (the others' plurality; a shared top is not compared):
      coder 1: u1 others {1} -> agrees; u2 others {2, 3} and u3 {2, 3} tie -> 1/1
      coder 2: u1 {1} agrees; u2 {2, 3} tie; u3 {3, 3} -> 3 != 2; u4 {3} agrees -> 2/3
      coder 3: u2 {2, 2} -> 2 != 3; u3 {3, 2} tie; u4 {3} agrees -> 1/2
    interval (1 - |value - median of the others| / range, range = 3 - 1 = 2):
      coder 1: u1 |1 - 1| -> 1; u2 |2 - 2.5| -> 0.75; u3 |3 - 2.5| -> 0.75 -> 2.5/3
    """
    nominal = coder_agreement(THREE_CODERS, "nominal")
    assert [(c.agreement, c.n_units) for c in nominal] == [
        (1.0, 1),
        (pytest.approx(2 / 3), 3),
        (0.5, 2),
    ]
    interval = coder_agreement(THREE_CODERS, "interval")
    assert interval[0].agreement == pytest.approx(2.5 / 3) and interval[0].n_units == 3


def test_one_careless_coder_does_not_drag_the_others_down() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=200).astype(float)
    careful = [np.where(rng.random(200) < 0.9, truth, (truth + 1) % 3) for _ in range(2)]
    careless = rng.integers(0, 3, size=200).astype(float)
    results = coder_agreement(np.stack([*careful, careless]), "nominal")
    assert results[0].agreement > 0.8 and results[1].agreement > 0.8
    assert results[2].agreement < 0.45


def test_agreement_edge_cases() -> None:
    perfect = np.array([[1, 2, 3], [1, 2, 3]], dtype=float)
    assert krippendorff_alpha(perfect, "nominal") == pytest.approx(1.0)
    assert fleiss_kappa(category_counts(perfect)) == pytest.approx(1.0)
    one_value = np.array([[1, 1], [1, 1]], dtype=float)  # no disagreement is possible
    assert math.isnan(krippendorff_alpha(one_value))
    assert math.isnan(fleiss_kappa(category_counts(one_value)))
    lonely = np.array([[1, NAN], [NAN, 2]])  # no unit has two values
    assert pairable_units(lonely) == 0 and math.isnan(krippendorff_alpha(lonely))
    assert math.isnan(coder_agreement(lonely)[0].agreement)
    # systematic disagreement goes below zero
    opposite = np.array([[0, 1, 0, 1], [1, 0, 1, 0]], dtype=float)
    assert krippendorff_alpha(opposite) < 0 and fleiss_kappa(category_counts(opposite)) < 0
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(TWO_CODERS, "ratio")  # type: ignore[arg-type]


def test_reliability_matrix_from_triples() -> None:
    data, coders, units = reliability_matrix(
        [("u2", "bob", 1.0), ("u1", "ana", 0.0), ("u2", "ana", 1.0)]
    )
    assert coders == ["ana", "bob"] and units == ["u1", "u2"]
    assert np.array_equal(data, np.array([[0.0, 1.0], [NAN, 1.0]]), equal_nan=True)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_matches_the_krippendorff_package(level: str) -> None:
    krippendorff = import_or_skip_outside_ci("krippendorff")
    rng = np.random.default_rng(7)
    for trial in range(20):
        n_coders, n_units = rng.integers(2, 7), rng.integers(5, 60)
        data = rng.integers(1, 6, size=(n_coders, n_units)).astype(float)
        if trial % 2:  # correlated coders: alpha well above zero
            truth = rng.integers(1, 6, size=n_units)
            data = np.where(rng.random(data.shape) < 0.7, truth, data)
        data[rng.random(data.shape) < 0.3] = np.nan
        if pairable_units(data) == 0 or np.unique(data[~np.isnan(data)]).size < 2:
            continue
        expected = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
        assert krippendorff_alpha(data, level) == pytest.approx(expected, abs=1e-10)  # type: ignore[arg-type]


def test_alpha_on_real_annotator_votes(shared_data) -> None:
    """PandaLM's test set has three annotators per pair: our alpha equals the package's."""
    krippendorff = import_or_skip_outside_ci("krippendorff")
    from prefkit.data import read_feedback

    path = shared_data / "pandalm-testset" / "testset-v1.json"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    records = list(read_feedback(path, format="pandalm", on_error="skip"))
    codes = {"a": 0.0, "b": 1.0, "tie": 2.0, None: NAN}
    data = np.array([[codes[r.votes[k]] for r in records] for k in range(3)])
    assert data.shape[1] > 500
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha(data, "nominal") == pytest.approx(expected, abs=1e-10)
    assert 0.2 < expected < 0.9  # real people agree, not perfectly
    # Fleiss' kappa agrees with the streaming one of `prefkit data inspect`
    from prefkit.data.inspect import VoteAgreement

    streaming = VoteAgreement()
    for record in records:
        streaming.add(record.votes)
    assert fleiss_kappa(category_counts(data)) == pytest.approx(streaming.fleiss_kappa(), abs=1e-12)
