"""rakuten_mlops.quality.drift against hand-computed values and scipy (no services needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from rakuten_mlops.quality import drift
from rakuten_mlops.quality.drift import Histogram, SampleRule

ANY_SIZE = SampleRule(min_current=1, min_reference=1, max_bias_fraction=math.inf)


def hist(reference, current, n_reference=-1, n_current=-1) -> Histogram:
    bins = tuple(str(i) for i in range(len(reference)))
    return Histogram(bins, reference, current, n_reference, n_current)


def smoothed(counts, eps=drift.DEFAULT_EPS):
    p = np.asarray(counts, float) / np.sum(counts)
    p = np.maximum(p, eps)
    return p / p.sum()


# --------------------------------------------------------------------------- binning


def test_quantile_edges_are_numpys_linear_quantiles():
    # 1..10, 5 bins: positions 9 x (0.2, 0.4, 0.6, 0.8) = 1.8, 3.6, 5.4, 7.2
    assert drift.quantile_edges(np.arange(1, 11), 5) == pytest.approx([2.8, 4.6, 6.4, 8.2])


def test_a_point_mass_gets_one_bin_and_a_constant_reference_two():
    edges = drift.quantile_edges([0] * 50 + list(range(1, 51)), 10)
    assert edges[0] == 0 and len(edges) == len(set(edges)) < 9 + 1
    assert list(drift.quantile_edges([500] * 20, 10)) == [500]
    h = drift.numeric_histogram([500] * 20, [500, 500, 640])
    assert h.bins == ("(-inf, 500]", "(500, inf]")
    assert list(h.reference) == [20, 0] and list(h.current) == [2, 1]


def test_bins_are_right_closed_open_ended_and_drop_nan():
    h = drift.numeric_histogram([1, 2, 3, 4], [-100, 2, 2.5, 4, 1e9, np.nan], edges=[2, 3])
    assert h.bins == ("(-inf, 2]", "(2, 3]", "(3, inf]")
    assert list(h.reference) == [2, 1, 1]
    assert list(h.current) == [2, 1, 2]  # -100 and 2 | 2.5 | 4 and 1e9; NaN left out
    assert h.n_current == 5


def test_categorical_bins_are_the_union_of_categories():
    h = drift.categorical_histogram(["fr", "fr", "en"], ["fr", "de", None])
    assert h.bins == ("de", "en", "fr")
    assert list(h.reference) == [0, 1, 2] and list(h.current) == [1, 0, 1]


# --------------------------------------------------------------------------- values


def test_psi_hand_computed():
    # p = (0.5, 0.5), q = (0.25, 0.75):
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    result = drift.psi(hist([50, 50], [25, 75]), rule=ANY_SIZE)
    assert result.value == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert result.value == pytest.approx(0.274653, abs=1e-6)
    assert result.drifted and result.enough_data  # >= 0.2


def test_psi_is_the_sum_of_both_kl_divergences():
    h = hist([10, 20, 30, 40], [40, 30, 20, 10])
    p, q = smoothed(h.reference), smoothed(h.current)
    assert drift.psi(h, rule=ANY_SIZE).value == pytest.approx(entropy(q, p) + entropy(p, q))


def test_kl_is_current_relative_to_reference_like_scipy_entropy():
    h = hist([10, 20, 30, 40], [5, 5, 45, 45])
    p, q = smoothed(h.reference), smoothed(h.current)
    assert drift.kl_divergence(h, rule=ANY_SIZE).value == pytest.approx(entropy(q, p))
    assert drift.kl_divergence(h, rule=ANY_SIZE).value != pytest.approx(entropy(p, q))


def test_js_distance_is_scipys_in_base_2():
    h = hist([10, 20, 30, 40], [5, 5, 45, 45])
    expected = jensenshannon(h.reference / 100, h.current / 100, base=2)
    assert drift.js_distance(h, rule=ANY_SIZE).value == pytest.approx(expected)
    # base 2: disjoint distributions are at distance exactly 1
    assert drift.js_distance(hist([10, 0], [0, 10]), rule=ANY_SIZE).value == pytest.approx(1.0)


def test_empty_bins_are_smoothed_for_psi_and_kl_not_for_js():
    h = hist([50, 50, 0], [40, 40, 20])  # the current fills a bin the reference never saw
    p, q = smoothed(h.reference), smoothed(h.current)
    assert p[2] == pytest.approx(1e-4 / 1.0001)
    expected_psi = float(np.sum((q - p) * np.log(q / p)))
    assert drift.psi(h, rule=ANY_SIZE).value == pytest.approx(expected_psi)
    assert drift.kl_divergence(h, rule=ANY_SIZE).value == pytest.approx(entropy(q, p))
    assert math.isfinite(expected_psi) and expected_psi > 1  # a real shift, not infinity
    assert drift.js_distance(h, rule=ANY_SIZE).value == pytest.approx(
        jensenshannon([0.5, 0.5, 0], [0.4, 0.4, 0.2], base=2)
    )


def test_a_single_category_window():
    h = drift.categorical_histogram(["a"] * 40 + ["b"] * 30 + ["c"] * 30, ["a"] * 100)
    p, q = smoothed(h.reference), smoothed(h.current)
    results = {r.metric: r for r in drift.compare(h, rule=ANY_SIZE)}
    assert results["psi"].value == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert results["kl_divergence"].value == pytest.approx(entropy(q, p))
    assert results["js_distance"].value == pytest.approx(
        jensenshannon([0.4, 0.3, 0.3], [1, 0, 0], base=2)
    )
    assert all(r.drifted for r in results.values())
    # one category on both sides: nothing moved
    same = drift.compare(drift.categorical_histogram(["a"] * 5, ["a"] * 9), rule=ANY_SIZE)
    assert [r.value for r in same] == [0.0, 0.0, 0.0]


def test_identical_distributions_give_zero_drift():
    values = np.random.default_rng(0).lognormal(4, 1, 1000)
    for h in (
        drift.numeric_histogram(values, values),
        drift.categorical_histogram(list("aabbbc"), list("aabbbc") * 3),
    ):
        results = drift.compare(h)
        assert [r.value for r in results] == pytest.approx([0, 0, 0], abs=1e-12)
        assert not any(r.drifted for r in results)


# --------------------------------------------------------------------------- sample sizes


def test_expected_bias_formulas():
    assert drift.expected_bias("psi", 27, 100, 100) == pytest.approx(26 * 0.02)
    assert drift.expected_bias("kl_divergence", 27, 100, 100) == pytest.approx(26 * 0.01)
    assert drift.expected_bias("js_distance", 27, 100, 100) == pytest.approx(
        math.sqrt(26 * 0.02 / (8 * math.log(2)))
    )
    assert drift.expected_bias("psi", 10, 0, 10) == math.inf


def test_psi_of_two_samples_of_one_distribution_is_about_the_expected_bias():
    # 27 classes, 300 rows per side: E[PSI] ~ 26 (1/300 + 1/300) = 0.173 with no drift.
    rng = np.random.default_rng(1)
    weights = rng.dirichlet(np.full(27, 5.0))
    values = []
    for _ in range(300):
        a = rng.multinomial(300, weights)
        b = rng.multinomial(300, weights)
        if a.min() and b.min():  # the formula holds where no bin is empty
            values.append(drift.psi(hist(a, b), rule=ANY_SIZE).value)
    assert len(values) > 100
    assert np.mean(values) == pytest.approx(drift.expected_bias("psi", 27, 300, 300), rel=0.15)


def test_too_small_windows_are_reported_but_never_flagged():
    h = hist([30, 70], [70, 30])  # a big shift, on 100-row samples
    small = drift.psi(h, rule=SampleRule(min_current=150, min_reference=10))
    assert small.value > 0.2 and not small.drifted and not small.enough_data
    assert "current window has 100 rows < 150" in small.reason
    # Enough rows but too many bins for them: the no-drift bias alone is near the threshold.
    many = hist(np.full(27, 10), np.r_[np.full(13, 5), np.full(14, 15)])
    result = drift.psi(many, rule=SampleRule(min_current=100, min_reference=100))
    assert result.expected_bias == pytest.approx(26 * (1 / 270 + 1 / 275))
    assert not result.enough_data and not result.drifted
    assert "expected no-drift bias" in result.reason


def test_the_three_statistics_agree_on_when_a_window_is_too_small():
    for n in (300, 500, 700, 1000, 2000):
        h = hist(np.full(27, n // 27), np.full(27, n // 27))
        verdicts = {r.metric: r.enough_data for r in drift.compare(h)}
        assert len(set(verdicts.values())) == 1, (n, verdicts)


def test_rows_can_differ_from_counts():
    h = hist([300, 700], [500, 500], n_reference=100, n_current=120)  # e.g. tokens of texts
    result = drift.psi(h, rule=SampleRule(min_current=100, min_reference=100))
    assert (result.n_reference, result.n_current) == (100, 120)
    assert result.expected_bias == pytest.approx(1 / 100 + 1 / 120)


def test_an_empty_sample_gives_nan_not_an_error():
    result = drift.psi(hist([5, 5], [0, 0]))
    assert math.isnan(result.value) and not result.drifted and not result.enough_data
