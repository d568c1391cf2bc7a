"""Drift between a reference sample and a current window: small pure functions.

Every statistic compares two histograms over the same K bins: `p` (reference) and `q`
(current), each the bin counts divided by their total.

Bins
    Numeric features: edges at the reference's quantiles (`n_bins` equal-frequency bins,
    edges that coincide dropped, so a point mass such as "no description" (0 characters)
    is one bin of its own); bins are right-closed, (-inf, e1], (e1, e2], ..., (e_k, inf),
    so the current window's values outside the reference's range still land in the end
    bins. Categorical features: one bin per category seen in either sample.

Smoothing
    PSI and KL are infinite when a bin is empty on one side. Both replace every
    proportion below `eps` (default 1e-4) by `eps` and renormalise:
    p_i = max(c_i / n, eps) / sum_j max(c_j / n, eps). The Jensen-Shannon distance
    needs no smoothing (it is finite with empty bins) and gets none.

Definitions (natural logarithm unless said otherwise)
    PSI  = sum_i (q_i - p_i) ln(q_i / p_i)   (= KL(q||p) + KL(p||q), Jeffreys divergence)
    KL   = KL(q || p) = sum_i q_i ln(q_i / p_i): how surprising the current window is
           under the reference (= `scipy.stats.entropy(q, p)` on the smoothed vectors)
    JS   = Jensen-Shannon *distance*, sqrt(JSD) with JSD = KL(p||m)/2 + KL(q||m)/2,
           m = (p + q)/2, in log base 2, so 0 <= JS <= 1
           (= `scipy.spatial.distance.jensenshannon(p, q, base=2)`)

Small samples
    Two samples of one distribution (n reference rows, m current rows) still differ by
    chance, and every statistic above is biased upward by it. To first order (the
    two-sample chi-square statistic sum_i (q_i - p_i)^2 / pi_i ~ chi2_{K-1} (1/n + 1/m)):
        E[PSI] ~ (K - 1)(1/n + 1/m)          E[KL] ~ (K - 1)(1/n + 1/m) / 2
        E[JSD] ~ (K - 1)(1/n + 1/m) / (8 ln 2), and E[JS] <= sqrt(E[JSD])
    so PSI on 27 classes with 100 rows per side is 0.52 *with no drift at all*. Each
    result reports n, m, K and this expected bias; drift is only flagged when the window
    can tell: m >= min_current, n >= min_reference and expected bias <= max_bias_fraction
    x threshold (for the JS distance on the divergence scale: bias^2 <= fraction x
    threshold^2). Otherwise the result says `enough_data=False` and why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_EPS = 1e-4
DEFAULT_BINS = 10
# Defaults; config/quality.yaml overrides them. Equivalent for a small shift (KL ~ PSI / 2,
# JSD ~ PSI / (8 ln 2), so JS 0.19 ~ PSI 0.2): the three statistics agree on a verdict, and
# on when a window is too small to tell.
DEFAULT_THRESHOLDS = {"psi": 0.2, "kl_divergence": 0.1, "js_distance": 0.19}
METRICS = tuple(DEFAULT_THRESHOLDS)


@dataclass(frozen=True)
class SampleRule:
    """When a comparison has enough data to flag drift."""

    min_current: int = 100
    min_reference: int = 100
    max_bias_fraction: float = 0.5  # expected no-drift bias must stay below this x threshold


@dataclass(frozen=True)
class Histogram:
    """Counts of the reference and the current sample over the same bins.

    `n_reference`/`n_current` are the sampling units (rows); they default to the count
    totals, and differ when a row contributes several counts (tokens of a text).
    """

    bins: tuple[str, ...]
    reference: np.ndarray
    current: np.ndarray
    n_reference: int = -1
    n_current: int = -1

    def __post_init__(self):
        object.__setattr__(self, "reference", np.asarray(self.reference, dtype=float))
        object.__setattr__(self, "current", np.asarray(self.current, dtype=float))
        if self.reference.shape != self.current.shape or self.reference.shape != (len(self.bins),):
            raise ValueError("reference, current and bins must have the same length")
        if self.n_reference < 0:
            object.__setattr__(self, "n_reference", int(self.reference.sum()))
        if self.n_current < 0:
            object.__setattr__(self, "n_current", int(self.current.sum()))

    @property
    def k(self) -> int:
        return len(self.bins)

    def proportions(self, eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        return proportions(self.reference, eps), proportions(self.current, eps)


@dataclass(frozen=True)
class DriftResult:
    metric: str
    value: float
    threshold: float
    drifted: bool
    enough_data: bool
    n_reference: int
    n_current: int
    bins: int
    expected_bias: float
    reason: str = ""  # why there is not enough data ("" when there is)
    details: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- binning


def quantile_edges(
    reference: Sequence[float] | np.ndarray, n_bins: int = DEFAULT_BINS
) -> np.ndarray:
    """Interior bin edges: the reference's 1/n_bins ... (n_bins-1)/n_bins quantiles, unique.

    Quantiles are numpy's default (linear interpolation). An empty reference gives no
    edges (one bin); a constant one gives one edge (two bins: <= value, > value).
    """
    values = _finite(reference)
    if values.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))


def numeric_histogram(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    n_bins: int = DEFAULT_BINS,
    edges: np.ndarray | None = None,
) -> Histogram:
    """Counts over reference-quantile bins (right-closed); NaN values are left out."""
    ref, cur = _finite(reference), _finite(current)
    edges = quantile_edges(ref, n_bins) if edges is None else np.asarray(edges, dtype=float)
    k = edges.size + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=k)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=k)
    return Histogram(_edge_labels(edges), ref_counts, cur_counts)


def categorical_histogram(
    reference: Iterable, current: Iterable, categories: Sequence | None = None
) -> Histogram:
    """Counts per category: `categories` in that order, else every one seen, sorted."""
    import pandas as pd

    ref = pd.Series(list(reference) if not hasattr(reference, "dtype") else reference)
    cur = pd.Series(list(current) if not hasattr(current, "dtype") else current)
    ref_counts, cur_counts = ref.dropna().value_counts(), cur.dropna().value_counts()
    if categories is None:
        categories = sorted(set(ref_counts.index) | set(cur_counts.index), key=_sort_key)
    return Histogram(
        tuple(str(c) for c in categories),
        ref_counts.reindex(categories, fill_value=0).to_numpy(),
        cur_counts.reindex(categories, fill_value=0).to_numpy(),
    )


def proportions(counts: np.ndarray, eps: float | None = None) -> np.ndarray:
    """counts / total; with `eps`, every proportion below eps raised to eps, renormalised."""
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no counts: an empty sample has no distribution")
    p = counts / total
    if eps:
        p = np.maximum(p, eps)
        p = p / p.sum()
    return p


# --------------------------------------------------------------------------- statistics


def expected_bias(metric: str, k: int, n_reference: int, n_current: int) -> float:
    """First-order expected value of `metric` between two samples of one distribution."""
    if n_reference <= 0 or n_current <= 0:
        return math.inf
    spread = (k - 1) * (1 / n_reference + 1 / n_current)
    if metric == "psi":
        return spread
    if metric == "kl_divergence":
        return spread / 2
    if metric == "js_distance":
        return math.sqrt(spread / (8 * math.log(2)))
    raise ValueError(f"unknown metric {metric!r}")


def psi(
    hist: Histogram,
    threshold: float = DEFAULT_THRESHOLDS["psi"],
    eps: float = DEFAULT_EPS,
    rule: SampleRule = SampleRule(),
) -> DriftResult:
    """Population Stability Index: sum (q - p) ln(q / p), eps-smoothed."""
    return _result("psi", hist, threshold, rule, lambda: _psi_value(hist, eps))


def kl_divergence(
    hist: Histogram,
    threshold: float = DEFAULT_THRESHOLDS["kl_divergence"],
    eps: float = DEFAULT_EPS,
    rule: SampleRule = SampleRule(),
) -> DriftResult:
    """KL(current || reference) = sum q ln(q / p), natural log, eps-smoothed."""

    def value() -> float:
        p, q = hist.proportions(eps)
        return float(np.sum(q * np.log(q / p)))

    return _result("kl_divergence", hist, threshold, rule, value)


def js_distance(
    hist: Histogram,
    threshold: float = DEFAULT_THRESHOLDS["js_distance"],
    rule: SampleRule = SampleRule(),
) -> DriftResult:
    """Jensen-Shannon distance, base 2 (0: identical, 1: disjoint), unsmoothed."""

    def value() -> float:
        p, q = hist.proportions(None)
        m = (p + q) / 2
        jsd = (_kl_base2(p, m) + _kl_base2(q, m)) / 2
        return float(math.sqrt(max(jsd, 0.0)))

    return _result("js_distance", hist, threshold, rule, value)


STATISTICS = {"psi": psi, "kl_divergence": kl_divergence, "js_distance": js_distance}


def compare(
    hist: Histogram,
    thresholds: dict[str, float] | None = None,
    eps: float = DEFAULT_EPS,
    rule: SampleRule = SampleRule(),
) -> list[DriftResult]:
    """Every statistic of `thresholds` (default: all three) on one histogram."""
    thresholds = thresholds or DEFAULT_THRESHOLDS
    results = []
    for metric, threshold in thresholds.items():
        kwargs = {"threshold": threshold, "rule": rule}
        if metric != "js_distance":
            kwargs["eps"] = eps
        results.append(STATISTICS[metric](hist, **kwargs))
    return results


# --------------------------------------------------------------------------- helpers


def _psi_value(hist: Histogram, eps: float) -> float:
    p, q = hist.proportions(eps)
    return float(np.sum((q - p) * np.log(q / p)))


def _kl_base2(a: np.ndarray, b: np.ndarray) -> float:
    mask = a > 0
    return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))


def _result(metric, hist: Histogram, threshold: float, rule: SampleRule, compute) -> DriftResult:
    n, m = hist.n_reference, hist.n_current
    bias = expected_bias(metric, hist.k, n, m)
    reasons = []
    if m < rule.min_current:
        reasons.append(f"current window has {m} rows < {rule.min_current}")
    if n < rule.min_reference:
        reasons.append(f"reference has {n} rows < {rule.min_reference}")
    if hist.reference.sum() <= 0 or hist.current.sum() <= 0:
        return DriftResult(
            metric,
            math.nan,
            threshold,
            False,
            False,
            n,
            m,
            hist.k,
            bias,
            "; ".join(reasons) or "an empty sample",
        )
    # Compared on the divergence scale: the JS *distance* is a square root.
    squared = metric == "js_distance"
    if (bias**2 if squared else bias) > rule.max_bias_fraction * (
        threshold**2 if squared else threshold
    ):
        reasons.append(
            f"expected no-drift bias {bias:.3g} > {rule.max_bias_fraction:g} x threshold "
            f"{threshold:g} ({hist.k} bins)"
        )
    value = compute()
    enough = not reasons
    return DriftResult(
        metric,
        value,
        threshold,
        bool(enough and value >= threshold),
        enough,
        n,
        m,
        hist.k,
        bias,
        "; ".join(reasons),
    )


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _edge_labels(edges: np.ndarray) -> tuple[str, ...]:
    if edges.size == 0:
        return ("all",)
    bounds = ["-inf", *(f"{e:.6g}" for e in edges), "inf"]
    return tuple(f"({lo}, {hi}]" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))


def _sort_key(value) -> tuple:
    return (0, value, "") if isinstance(value, int | float | np.number) else (1, 0, str(value))
