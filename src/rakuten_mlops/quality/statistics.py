"""A window's statistics, assembled into result rows: pure (frames in, rows out).

`evaluate` compares a window's profile with the reference's: drift per feature
(`drift`: PSI, Jensen-Shannon distance, KL divergence on the features' histograms), the
window's own quality (`checks`: empty, duplicate and outlier ratios, class imbalance,
emptiness/class association) and informational basic statistics, each judged against
config/quality.yaml. `window_status` sums a window up for quality_windows.
"""

from __future__ import annotations

import numpy as np

from rakuten_mlops.quality import checks, drift
from rakuten_mlops.quality.config import QualityConfig
from rakuten_mlops.quality.features import (
    CATEGORICAL,
    IMAGE_NUMERIC,
    IMAGE_SIZE_FEATURES,
    LENGTH_FEATURES,
    TEXT_NUMERIC,
    Profile,
)
from rakuten_mlops.quality.results import Reference, ResultRow

STATS = ("mean", "std", "min", "p50", "max")


def _drift_rows(feature: str, hist: drift.Histogram, config: QualityConfig) -> list[ResultRow]:
    p = hist.reference / hist.reference.sum() if hist.reference.sum() else hist.reference
    q = hist.current / hist.current.sum() if hist.current.sum() else hist.current
    histogram = {
        "bins": list(hist.bins),
        "reference": [float(x) for x in p],
        "current": [float(x) for x in q],
    }
    rows = []
    for result in drift.compare(
        hist, config.drift.threshold_map, config.drift.epsilon, config.drift.rule
    ):
        rows.append(
            ResultRow(
                feature,
                result.metric,
                "drift",
                result.value,
                result.n_current,
                result.threshold,
                result.drifted,
                result.enough_data,
                result.n_reference,
                result.bins,
                result.expected_bias,
                result.reason,
                # the histogram once per feature (on the PSI row) is enough for reports
                {"histogram": histogram} if result.metric == "psi" else {},
            )
        )
    return rows


def _quality_row(
    feature: str, result: checks.QualityResult, n_reference: int | None = None
) -> ResultRow:
    return ResultRow(
        feature,
        result.metric,
        "quality",
        result.value,
        result.n,
        result.threshold,
        result.breach,
        result.enough_data,
        n_reference,
        reason=result.reason,
        details=result.details,
    )


def _stats_rows(feature: str, values) -> list[ResultRow]:
    stats = checks.basic_stats(values)
    return [ResultRow(feature, name, "stats", getattr(stats, name), stats.count) for name in STATS]


def evaluate(reference: Profile | None, current: Profile, config: QualityConfig) -> list[ResultRow]:
    """Every statistic of `current` (against `reference` when there is one)."""
    label = "predicted_class" if "predicted_class" in current.features else "label"
    return [
        *_drift_against(reference, current, label, config),
        *_window_quality(reference, current, label, config),
        *_informational(current),
    ]


def _drift_against(
    reference: Profile | None, current: Profile, label: str, config: QualityConfig
) -> list[ResultRow]:
    """Drift of each feature the two samples share (none without a reference)."""
    cur = current.features
    ref = reference.features if reference is not None else None
    rows: list[ResultRow] = []

    if ref is not None and len(ref):
        for feature in TEXT_NUMERIC:
            if feature in ref and feature in cur:
                hist = drift.numeric_histogram(ref[feature], cur[feature], config.drift.bins)
                rows += _drift_rows(feature, hist, config)
        for feature in IMAGE_NUMERIC:
            ref_values, cur_values = reference.images.get(feature), current.images.get(feature)
            if (
                ref_values is not None
                and cur_values is not None
                and ref_values.notna().any()
                and cur_values.notna().any()
            ):
                hist = drift.numeric_histogram(ref_values, cur_values, config.drift.bins)
                rows += _drift_rows(feature, hist, config)
        for feature in CATEGORICAL:
            if feature in ref and feature in cur:
                hist = drift.categorical_histogram(
                    ref[feature].astype(str), cur[feature].astype(str)
                )
                rows += _drift_rows(feature, hist, config)
        if "label" in ref and label in cur:
            ref_labels, cur_labels = ref["label"].dropna(), cur[label].dropna()
            if len(cur_labels):
                hist = drift.categorical_histogram(ref_labels.astype(int), cur_labels.astype(int))
                rows += _drift_rows(label, hist, config)
        if len(reference.tokens) and current.texts:
            rows += _drift_rows(
                "text_tokens", token_histogram(reference, current, config.drift.top_tokens), config
            )
    return rows


def _window_quality(
    reference: Profile | None, current: Profile, label: str, config: QualityConfig
) -> list[ResultRow]:
    """The window's own quality; outliers and class coverage judged on the reference's."""
    cur = current.features
    ref = reference.features if reference is not None else None
    rows: list[ResultRow] = []
    min_rows = config.quality.min_rows
    for field_name, column in (
        ("designation", "designation_empty"),
        ("description", "description_empty"),
        ("image", "has_image"),
    ):
        if column in cur:
            mask = ~cur[column] if column == "has_image" else cur[column]
            rows.append(
                _quality_row(
                    field_name,
                    checks.empty_ratio(
                        mask=mask,
                        threshold=getattr(config.quality.empty_ratio, field_name),
                        min_rows=min_rows,
                    ),
                )
            )
    if "text_key" in cur:
        rows.append(
            _quality_row(
                "text",
                checks.duplicate_ratio(cur["text_key"], config.quality.duplicate_ratio, min_rows),
            )
        )
    for feature in LENGTH_FEATURES:
        if feature in cur:
            base = ref[feature] if ref is not None and len(ref) and feature in ref else None
            rows.append(
                _quality_row(
                    feature,
                    checks.outlier_ratio(
                        cur[feature],
                        base,
                        config.quality.outlier_iqr_k,
                        config.quality.outlier_ratio,
                        min_rows,
                    ),
                    None if base is None else len(base),
                )
            )
    for feature in IMAGE_SIZE_FEATURES:
        if feature in current.images and current.images[feature].notna().any():
            base = None
            if reference is not None and reference.images[feature].notna().any():
                base = reference.images[feature]
            rows.append(
                _quality_row(
                    feature,
                    checks.outlier_ratio(
                        current.images[feature],
                        base,
                        config.quality.outlier_iqr_k,
                        config.quality.outlier_ratio,
                        min_rows,
                    ),
                    None if base is None else int(base.notna().sum()),
                )
            )
    if label in cur and cur[label].notna().any():
        rows.append(
            _quality_row(
                label,
                checks.class_imbalance_ratio(
                    cur[label].dropna().astype(int),
                    config.quality.class_imbalance_ratio,
                    expected=sorted(ref["label"].dropna().astype(int).unique())
                    if ref is not None and "label" in ref
                    else None,
                    min_rows=min_rows,
                ),
            )
        )
        rows.append(_association_row(reference, current, label, config))
    return rows


def _informational(current: Profile) -> list[ResultRow]:
    """Basic statistics of the numeric features: reported, never judged."""
    cur = current.features
    rows: list[ResultRow] = []
    for feature in (*TEXT_NUMERIC, "confidence"):
        if feature in cur:
            rows += _stats_rows(feature, cur[feature])
    for feature in IMAGE_NUMERIC:
        if feature in current.images and current.images[feature].notna().any():
            rows += _stats_rows(feature, current.images[feature])
    return rows


def token_histogram(reference: Profile, current: Profile, top: int) -> drift.Histogram:
    """Counts over the reference's `top` tokens plus one "<other>" bin; rows = texts."""
    tokens = reference.tokens.head(top)
    ref_counts = tokens.to_numpy(dtype=float)
    cur_counts = current.tokens.reindex(tokens.index, fill_value=0).to_numpy(dtype=float)
    return drift.Histogram(
        (*tokens.index, "<other>"),
        np.append(ref_counts, max(reference.token_total - ref_counts.sum(), 0)),
        np.append(cur_counts, max(current.token_total - cur_counts.sum(), 0)),
        n_reference=reference.texts,
        n_current=current.texts,
    )


def _association_row(
    reference: Profile | None, current: Profile, label: str, config: QualityConfig
) -> ResultRow:
    cur = current.features.dropna(subset=[label])
    baseline = None
    if reference is not None and "label" in reference.features:
        ref = reference.features.dropna(subset=["label"])
        if len(ref):
            baseline = checks.emptiness_association(
                ref["description_empty"], ref["label"].astype(int), min_rows=0, min_empty=0
            ).value
    margin = config.quality.emptiness_association_margin
    threshold = None if baseline is None or margin is None else min(1.0, baseline + margin)
    result = checks.emptiness_association(
        cur["description_empty"],
        cur[label].astype(int),
        threshold,
        min_rows=config.quality.min_rows,
    )
    row = _quality_row("description", result, None if baseline is None else len(ref))
    row.details = {**row.details, "reference_value": baseline, "margin": margin}
    return row


def window_status(
    rows: list[ResultRow], n_rows: int, reference: Reference, config: QualityConfig
) -> str:
    if n_rows == 0:
        return "empty"
    if any(row.breach for row in rows):
        return "breach"
    if reference.kind == "none":
        return "no_reference"
    if n_rows < max(config.drift.rule.min_current, config.quality.min_rows):
        return "insufficient"
    return "ok"
