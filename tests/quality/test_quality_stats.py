"""rakuten_mlops.quality.checks against hand-computed values and scipy (no services needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats.contingency import association

from rakuten_mlops.quality import checks


def test_empty_ratio_counts_missing_and_blank_values():
    result = checks.empty_ratio([None, "", "  \t", "x", float("nan")], threshold=0.5)
    assert result.value == pytest.approx(4 / 5)
    assert result.breach and result.n == 5 and result.details == {"empty": 4}
    assert checks.empty_ratio(mask=[True, False, False, False]).value == 0.25
    assert not checks.empty_ratio(["a"], threshold=None).breach  # informational
    assert math.isnan(checks.empty_ratio([]).value)


def test_duplicate_ratio_counts_repeats_of_earlier_rows():
    result = checks.duplicate_ratio(["a", "a", "b", "a"], threshold=0.4)
    assert result.value == pytest.approx((4 - 2) / 4) and result.breach
    assert result.details == {"duplicates": 2, "distinct": 2}
    assert checks.duplicate_ratio(["a", "a"]).value == 0.5


def test_outlier_ratio_uses_the_references_tukey_fences():
    # 1..8: Q1 = 2.75, Q3 = 6.25 (linear), IQR 3.5, fences 2.75 - 5.25, 6.25 + 5.25
    assert checks.iqr_fences(range(1, 9)) == pytest.approx((-2.5, 11.5))
    result = checks.outlier_ratio([0, 12, 5, 11.5], reference=range(1, 9), threshold=0.2)
    assert result.value == 0.25  # 12 only: a value on a fence is not an outlier
    assert result.breach and result.details["reference_ratio"] == 0.0
    own = checks.outlier_ratio([1, 2, 3, 4, 100])  # the sample's own fences
    assert own.value == pytest.approx(1 / 5)


def test_class_imbalance_ratio():
    result = checks.class_imbalance_ratio([1, 1, 1, 2, 2, 3], threshold=2.5, expected=[1, 2, 3, 4])
    assert result.value == 3.0 and result.breach
    assert result.details["classes"] == 3 and result.details["missing"] == ["4"]
    assert result.details["most_frequent"] == "1" and result.details["least_frequent"] == "3"
    assert checks.class_imbalance_ratio([7] * 10).value == 1.0  # one class: balanced


def test_cramers_v_without_correction_is_scipys():
    table = np.array([[30, 5, 10, 2], [3, 25, 12, 40]])
    assert checks.cramers_v(table, bias_correction=False) == pytest.approx(
        association(table, method="cramer")
    )


def test_cramers_v_bias_correction_hand_computed():
    table = np.array([[30, 5, 10, 2], [3, 25, 12, 40]])
    n, r, k = table.sum(), 2, 4
    expected = np.outer(table.sum(1), table.sum(0)) / n
    phi2 = ((table - expected) ** 2 / expected).sum() / n
    phi2_plus = max(0, phi2 - (k - 1) * (r - 1) / (n - 1))
    k_tilde, r_tilde = k - (k - 1) ** 2 / (n - 1), r - (r - 1) ** 2 / (n - 1)
    assert checks.cramers_v(table) == pytest.approx(
        math.sqrt(phi2_plus / min(k_tilde - 1, r_tilde - 1))
    )
    # Independence: the plain V of a finite sample is biased upward, the corrected one is 0.
    independent = np.array([[10, 10, 10, 10], [11, 9, 10, 10]])
    assert checks.cramers_v(independent) == 0.0 < checks.cramers_v(independent, False)


def test_cramers_v_degenerate_tables():
    assert checks.cramers_v(np.array([[5, 5, 5]])) == 0.0  # nothing ever empty
    assert checks.cramers_v(np.array([[5, 0], [0, 5]]), bias_correction=False) == 1.0


def test_emptiness_association_names_the_class_most_tied_to_emptiness():
    labels = [1] * 50 + [2] * 50 + [3] * 50
    empty = [True] * 45 + [False] * 5 + [False] * 100  # class 1 almost never has one
    result = checks.emptiness_association(empty, labels, threshold=0.5, min_rows=100)
    assert result.value > 0.8 and result.breach
    assert result.details["top_class"] == "1"
    assert result.details["top_class_share_of_empty"] == 1.0
    assert result.details["top_class_empty_rate"] == pytest.approx(0.9)
    random = np.random.default_rng(0).random(150) < 0.3
    assert checks.emptiness_association(random, labels).value < 0.15


def test_small_samples_are_reported_not_flagged():
    result = checks.emptiness_association([True, False] * 10, [1, 2] * 10, threshold=0.1)
    assert not result.enough_data and not result.breach and "20 rows < 100" in result.reason
    dup = checks.duplicate_ratio(["a", "a"], threshold=0.1, min_rows=100)
    assert dup.value == 0.5 and not dup.breach and not dup.enough_data


def test_basic_stats_match_numpy():
    values = np.random.default_rng(0).normal(10, 2, 500)
    stats = checks.basic_stats(np.r_[values, np.nan])
    assert stats.count == 500
    assert stats.mean == pytest.approx(values.mean()) and stats.std == pytest.approx(
        values.std(ddof=1)
    )
    assert (stats.min, stats.p50, stats.max) == pytest.approx(
        (values.min(), np.median(values), values.max())
    )
    assert checks.basic_stats([]).count == 0 and math.isnan(checks.basic_stats([]).mean)
