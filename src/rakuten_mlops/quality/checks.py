"""Data-quality statistics of one sample (a load batch, an inference window): pure functions.

Each function computes one statistic and returns a `QualityResult` (value, the
threshold it was held to, whether it breached it, the sample size). A threshold of
None makes the statistic informational: reported, never a breach. Definitions:

empty_ratio
    Share of values that are missing (None, NaN) or blank (empty or whitespace-only
    strings): empty / n.
duplicate_ratio
    Share of rows whose key repeats an earlier row's key: (n - distinct keys) / n. Two
    copies of one product give 0.5 on a two-row window.
outlier_ratio
    Share of values outside Tukey's fences [Q1 - k IQR, Q3 + k IQR], with Q1, Q3 the
    25th/75th percentiles (numpy's linear interpolation) of the *reference* sample
    (of the sample itself when no reference is given); k = 1.5 by default. Values on
    a fence are not outliers.
class_imbalance_ratio
    Rows of the most frequent class / rows of the least frequent class, among the
    classes present (1.0: balanced). Classes absent from the window are counted in the
    details (`classes`, `missing`), not in the ratio, which would be infinite.
emptiness_association
    How strongly a field's emptiness is tied to the class: Cramer's V of the 2 x K
    table (empty or not) x (class), with Bergsma's (2013) small-sample bias correction
    by default (plain V: sqrt(chi2 / (n min(r-1, k-1))), as scipy's
    `contingency.association(method="cramer")`). 0: emptiness says nothing about the
    class; 1: it determines it. Real catalogues have a strong baseline (some product
    types never have a description), so the threshold is usually the reference's own
    value plus a margin, and the details name the class most tied to emptiness.
basic_stats
    count, mean, standard deviation (ddof=1), min, quartiles and max of the finite
    values: informational.

Statistics that need a minimum sample say so (`enough_data=False`) below `min_rows`
instead of flagging a breach.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

DEFAULT_IQR_K = 1.5


@dataclass(frozen=True)
class QualityResult:
    metric: str
    value: float
    threshold: float | None
    breach: bool
    n: int
    enough_data: bool = True
    reason: str = ""
    details: dict = field(default_factory=dict)

    @classmethod
    def judged(
        cls,
        metric: str,
        value: float,
        threshold: float | None,
        n: int,
        too_little: str = "",
        details: dict | None = None,
    ) -> QualityResult:
        """A computed value, a breach when above `threshold`, unless `too_little` says why
        the window cannot tell (then it is never flagged)."""
        enough = not too_little
        breach = enough and _above(value, threshold)
        return cls(metric, value, threshold, breach, n, enough, too_little, details or {})


@dataclass(frozen=True)
class BasicStats:
    count: int
    mean: float
    std: float
    min: float
    p25: float
    p50: float
    p75: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _above(value: float, threshold: float | None) -> bool:
    return threshold is not None and not math.isnan(value) and value > threshold


def _finite(values) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _too_few(n: int, min_rows: int) -> str:
    return "" if n >= min_rows else f"{n} rows < {min_rows}"


# --------------------------------------------------------------------------- statistics


def is_empty(values: Iterable) -> np.ndarray:
    """True where a value is missing (None, NaN) or a blank string."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
    missing = series.isna().to_numpy()
    blank = np.array([isinstance(v, str) and not v.strip() for v in series.to_numpy()], dtype=bool)
    return missing | blank


def empty_ratio(
    values: Iterable | None = None,
    threshold: float | None = None,
    min_rows: int = 1,
    *,
    mask: Iterable[bool] | None = None,
) -> QualityResult:
    """Share of missing or blank values (or of True in `mask`, an emptiness already known)."""
    empty_mask = np.asarray(list(mask) if mask is not None else is_empty(values), dtype=bool)
    n = int(empty_mask.size)
    if n == 0:
        return QualityResult("empty_ratio", math.nan, threshold, False, 0, False, "no rows")
    empty = int(empty_mask.sum())
    value = empty / n
    return QualityResult.judged(
        "empty_ratio", value, threshold, n, _too_few(n, min_rows), {"empty": empty}
    )


def duplicate_ratio(
    keys: Iterable, threshold: float | None = None, min_rows: int = 1
) -> QualityResult:
    """Share of rows repeating an earlier row's key: (n - distinct) / n."""
    series = keys if isinstance(keys, pd.Series) else pd.Series(list(keys), dtype=object)
    n = len(series)
    if n == 0:
        return QualityResult("duplicate_ratio", math.nan, threshold, False, 0, False, "no rows")
    distinct = int(series.nunique(dropna=False))
    value = (n - distinct) / n
    return QualityResult.judged(
        "duplicate_ratio",
        value,
        threshold,
        n,
        _too_few(n, min_rows),
        {"duplicates": n - distinct, "distinct": distinct},
    )


def iqr_fences(values, k: float = DEFAULT_IQR_K) -> tuple[float, float]:
    """Tukey's fences (Q1 - k IQR, Q3 + k IQR) of the finite values."""
    array = _finite(values)
    if array.size == 0:
        return (math.nan, math.nan)
    q1, q3 = np.percentile(array, [25, 75])
    iqr = q3 - q1
    return (float(q1 - k * iqr), float(q3 + k * iqr))


def outlier_ratio(
    values,
    reference=None,
    k: float = DEFAULT_IQR_K,
    threshold: float | None = None,
    min_rows: int = 1,
) -> QualityResult:
    """Share of values outside the reference's (else the sample's) IQR fences."""
    array = _finite(values)
    n = int(array.size)
    base = array if reference is None else _finite(reference)
    low, high = iqr_fences(base, k)
    if n == 0 or math.isnan(low):
        return QualityResult(
            "outlier_ratio",
            math.nan,
            threshold,
            False,
            n,
            False,
            "no values" if n == 0 else "no reference values",
        )
    outside = int(np.count_nonzero((array < low) | (array > high)))
    value = outside / n
    details = {"low": low, "high": high, "k": k, "outliers": outside}
    if reference is not None:
        details["reference_ratio"] = float(np.mean((base < low) | (base > high)))
    return QualityResult.judged(
        "outlier_ratio", value, threshold, n, _too_few(n, min_rows), details
    )


def class_imbalance_ratio(
    labels: Iterable,
    threshold: float | None = None,
    expected: Sequence | None = None,
    min_rows: int = 1,
) -> QualityResult:
    """Most frequent class's rows / least frequent present class's rows."""
    counts = pd.Series(list(labels) if not isinstance(labels, pd.Series) else labels)
    counts = counts.dropna().value_counts()
    n = int(counts.sum())
    if n == 0:
        return QualityResult(
            "class_imbalance_ratio", math.nan, threshold, False, 0, False, "no labels"
        )
    value = float(counts.iloc[0] / counts.iloc[-1])
    details = {
        "classes": int(counts.size),
        "most_frequent": str(counts.index[0]),
        "most_frequent_rows": int(counts.iloc[0]),
        "least_frequent": str(counts.index[-1]),
        "least_frequent_rows": int(counts.iloc[-1]),
    }
    if expected is not None:
        details["missing"] = sorted(str(c) for c in set(expected) - set(counts.index))
    return QualityResult.judged(
        "class_imbalance_ratio", value, threshold, n, _too_few(n, min_rows), details
    )


def cramers_v(table: np.ndarray, bias_correction: bool = True) -> float:
    """Cramer's V of a contingency table (rows/columns without counts are dropped)."""
    table = np.asarray(table, dtype=float)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    r, k = table.shape
    n = table.sum()
    if r < 2 or k < 2 or n <= 1:
        return 0.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / n
    phi2 = float(((table - expected) ** 2 / expected).sum() / n)
    if not bias_correction:
        return math.sqrt(phi2 / min(r - 1, k - 1))
    phi2 = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    k_tilde = k - (k - 1) ** 2 / (n - 1)
    r_tilde = r - (r - 1) ** 2 / (n - 1)
    denominator = min(k_tilde - 1, r_tilde - 1)
    return math.sqrt(phi2 / denominator) if denominator > 0 else 0.0


def emptiness_association(
    empty: Iterable[bool],
    labels: Iterable,
    threshold: float | None = None,
    bias_correction: bool = True,
    min_rows: int = 100,
    min_empty: int = 10,
) -> QualityResult:
    """Cramer's V between a field's emptiness and the class (0: unrelated, 1: tied)."""
    empty_mask = np.asarray(list(empty) if not hasattr(empty, "__array__") else empty, dtype=bool)
    label_series = labels if isinstance(labels, pd.Series) else pd.Series(list(labels))
    codes, classes = pd.factorize(label_series.reset_index(drop=True), sort=True)
    known = codes >= 0  # rows without a label are left out
    codes, empty_mask = codes[known], empty_mask[known]
    n = int(codes.size)
    if n == 0:
        return QualityResult(
            "emptiness_association", math.nan, threshold, False, 0, False, "no labelled rows"
        )
    # The 2 x K table (not empty, empty) x class, by counting codes.
    table = np.bincount(codes + len(classes) * empty_mask, minlength=2 * len(classes))
    table = table.reshape(2, len(classes))
    empties = int(table[1].sum())
    value = cramers_v(table, bias_correction)
    details = {"empty": empties, "empty_rate": empties / n, "bias_corrected": bias_correction}
    if empties:
        top = int(np.argmax(table[1]))  # ties: the first class in sorted order
        details.update(
            {
                "top_class": str(classes[top]),
                "top_class_share_of_empty": float(table[1, top] / empties),
                "top_class_empty_rate": float(table[1, top] / table[:, top].sum()),
            }
        )
    reasons = []
    if n < min_rows:
        reasons.append(f"{n} rows < {min_rows}")
    if min(empties, n - empties) < min_empty:
        reasons.append(f"only {min(empties, n - empties)} rows on one side (< {min_empty})")
    return QualityResult.judged(
        "emptiness_association", value, threshold, n, "; ".join(reasons), details
    )


def basic_stats(values) -> BasicStats:
    """Summary statistics of the finite values (NaN everywhere when there are none)."""
    array = _finite(values)
    if array.size == 0:
        return BasicStats(0, *([math.nan] * 7))
    p25, p50, p75 = np.percentile(array, [25, 50, 75])
    std = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return BasicStats(
        int(array.size),
        float(array.mean()),
        std,
        float(array.min()),
        float(p25),
        float(p50),
        float(p75),
        float(array.max()),
    )
