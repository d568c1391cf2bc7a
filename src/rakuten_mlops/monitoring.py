"""The data-quality job: windows compared with the champion's training data, into PostgreSQL.

What the `data_quality` DAG (and `rakuten-mlops data-quality`) runs, one **window** at a
time:

* each load batch (`batch-<id>`): the products it loaded; checked once, and again when a
  run's data interval contains the batch's end (so re-running a date replaces it);
* the inference log over the run's data interval (`inference-<start>`): the champion
  model's predictions, with the features the log records.

**Reference.** The training data of the current champion: the subsets its run trained
on (`train_subsets`) of the dataset version (`dataset_id` tag of the `MODEL_NAME@champion`
version or of its run; `rakuten_mlops.ml.dataset.load_dataset`). Without a champion, the
lake's own labelled `train` products: for a load batch those of *earlier* batches (the
first batch has no reference: quality only), for the inference log all of them. Each
window row says which reference it used (`reference_kind`, `reference_id`,
`reference_note`). A reference's profile (its features) is computed once and cached in S3
(`quality/reference/v<FEATURES_VERSION>/<reference_id>/`).

**Statistics** (definitions in `drift.py`, `quality.py`, `quality_features.py`;
thresholds in config/quality.yaml): PSI, Jensen-Shannon distance and KL divergence per
feature; empty, duplicate and outlier ratios, class imbalance, emptiness/class
association, basic statistics. Stored in `quality_results` keyed by (window, feature,
metric) with threshold, breach flag and sample sizes, upserted: re-checking a window
replaces all its rows. Each window also gets a self-contained HTML report in S3
(`quality/reports/<window_id>.html`, key in `quality_windows.report_key`).

`record_promotion` stores registry promotion decisions for the Model dashboard.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rakuten_mlops import drift, quality
from rakuten_mlops.quality_features import (
    CATEGORICAL,
    FEATURES_VERSION,
    IMAGE_NUMERIC,
    IMAGE_SIZE_FEATURES,
    LENGTH_FEATURES,
    TEXT_NUMERIC,
    TOKENS_KEPT,
    Profile,
)
from rakuten_mlops.settings import Settings

log = logging.getLogger("rakuten_mlops.monitoring")

REPORT_PREFIX = "quality/reports"
REFERENCE_PREFIX = "quality/reference"
STATS = ("mean", "std", "min", "p50", "max")


class QualityError(RuntimeError):
    """The job cannot run as configured (bad thresholds file, unusable champion, ...)."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class QualityConfig:
    bins: int = drift.DEFAULT_BINS
    epsilon: float = drift.DEFAULT_EPS
    top_tokens: int = 30
    thresholds: dict[str, float] = field(default_factory=lambda: dict(drift.DEFAULT_THRESHOLDS))
    rule: drift.SampleRule = drift.SampleRule()
    min_rows: int = 100
    empty_ratio: dict[str, float | None] = field(
        default_factory=lambda: {"designation": 0.01, "description": 0.8, "image": None}
    )
    duplicate_ratio: float | None = 0.05
    outlier_iqr_k: float = quality.DEFAULT_IQR_K
    outlier_ratio: float | None = 0.15
    class_imbalance_ratio: float | None = 50.0
    emptiness_association_margin: float | None = 0.25
    max_images: int = 300
    source: str = "defaults"


def load_config(path: str | Path) -> QualityConfig:
    """Thresholds from a YAML file (config/quality.yaml); unknown keys are refused."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise QualityError(f"thresholds file not found: {path} (setting QUALITY_CONFIG)")
    body = yaml.safe_load(path.read_text()) or {}
    sections = {"drift", "quality", "images"}
    if unknown := set(body) - sections:
        raise QualityError(f"{path}: unknown section(s) {sorted(unknown)}")
    d, q, i = body.get("drift") or {}, body.get("quality") or {}, body.get("images") or {}
    allowed = {
        "drift": {
            "bins",
            "epsilon",
            "top_tokens",
            "thresholds",
            "min_current",
            "min_reference",
            "max_bias_fraction",
        },
        "quality": {
            "min_rows",
            "empty_ratio",
            "duplicate_ratio",
            "outlier_iqr_k",
            "outlier_ratio",
            "class_imbalance_ratio",
            "emptiness_association_margin",
        },
        "images": {"max_images"},
    }
    for name, section in (("drift", d), ("quality", q), ("images", i)):
        if unknown := set(section) - allowed[name]:
            raise QualityError(f"{path}: unknown key(s) in {name}: {sorted(unknown)}")
    thresholds = {**drift.DEFAULT_THRESHOLDS, **(d.get("thresholds") or {})}
    if unknown := set(thresholds) - set(drift.METRICS):
        raise QualityError(f"{path}: unknown drift statistic(s) {sorted(unknown)}")
    defaults = QualityConfig()
    config = QualityConfig(
        bins=int(d.get("bins", defaults.bins)),
        epsilon=float(d.get("epsilon", defaults.epsilon)),
        top_tokens=int(d.get("top_tokens", defaults.top_tokens)),
        thresholds={k: float(v) for k, v in thresholds.items()},
        rule=drift.SampleRule(
            min_current=int(d.get("min_current", defaults.rule.min_current)),
            min_reference=int(d.get("min_reference", defaults.rule.min_reference)),
            max_bias_fraction=float(d.get("max_bias_fraction", defaults.rule.max_bias_fraction)),
        ),
        min_rows=int(q.get("min_rows", defaults.min_rows)),
        empty_ratio={**defaults.empty_ratio, **(q.get("empty_ratio") or {})},
        duplicate_ratio=q.get("duplicate_ratio", defaults.duplicate_ratio),
        outlier_iqr_k=float(q.get("outlier_iqr_k", defaults.outlier_iqr_k)),
        outlier_ratio=q.get("outlier_ratio", defaults.outlier_ratio),
        class_imbalance_ratio=q.get("class_imbalance_ratio", defaults.class_imbalance_ratio),
        emptiness_association_margin=q.get(
            "emptiness_association_margin", defaults.emptiness_association_margin
        ),
        max_images=int(i.get("max_images", defaults.max_images)),
        source=str(path),
    )
    if not 2 <= config.bins <= 100 or not 0 < config.epsilon < 0.01:
        raise QualityError(f"{path}: bins must be in [2, 100] and epsilon in (0, 0.01)")
    if not 1 <= config.top_tokens <= TOKENS_KEPT:
        raise QualityError(f"{path}: top_tokens must be in [1, {TOKENS_KEPT}]")
    return config


def settings_config(settings: Settings) -> QualityConfig:
    return load_config(settings.path(settings.quality_config))


# --------------------------------------------------------------------------- evaluation


@dataclass
class ResultRow:
    """One row of quality_results."""

    feature: str
    metric: str
    category: str  # drift | quality | stats
    value: float
    n_current: int
    threshold: float | None = None
    breach: bool = False
    enough_data: bool = True
    n_reference: int | None = None
    bins: int | None = None
    expected_bias: float | None = None
    reason: str = ""
    details: dict = field(default_factory=dict)


def _drift_rows(feature: str, hist: drift.Histogram, config: QualityConfig) -> list[ResultRow]:
    p = hist.reference / hist.reference.sum() if hist.reference.sum() else hist.reference
    q = hist.current / hist.current.sum() if hist.current.sum() else hist.current
    histogram = {
        "bins": list(hist.bins),
        "reference": [float(x) for x in p],
        "current": [float(x) for x in q],
    }
    rows = []
    for result in drift.compare(hist, config.thresholds, config.epsilon, config.rule):
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
    feature: str, result: quality.QualityResult, n_reference: int | None = None
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
    stats = quality.basic_stats(values)
    return [ResultRow(feature, name, "stats", getattr(stats, name), stats.count) for name in STATS]


def evaluate(reference: Profile | None, current: Profile, config: QualityConfig) -> list[ResultRow]:
    """Every statistic of `current` (against `reference` when there is one)."""
    cur = current.features
    ref = reference.features if reference is not None else None
    label = "predicted_class" if "predicted_class" in cur else "label"
    rows: list[ResultRow] = []

    # drift, against the reference
    if ref is not None and len(ref):
        for feature in TEXT_NUMERIC:
            if feature in ref and feature in cur:
                hist = drift.numeric_histogram(ref[feature], cur[feature], config.bins)
                rows += _drift_rows(feature, hist, config)
        for feature in IMAGE_NUMERIC:
            ref_values, cur_values = reference.images.get(feature), current.images.get(feature)
            if (
                ref_values is not None
                and cur_values is not None
                and ref_values.notna().any()
                and cur_values.notna().any()
            ):
                hist = drift.numeric_histogram(ref_values, cur_values, config.bins)
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
                "text_tokens", token_histogram(reference, current, config.top_tokens), config
            )

    # quality of the window itself
    min_rows = config.min_rows
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
                    quality.empty_ratio(
                        mask=mask, threshold=config.empty_ratio.get(field_name), min_rows=min_rows
                    ),
                )
            )
    if "text_key" in cur:
        rows.append(
            _quality_row(
                "text", quality.duplicate_ratio(cur["text_key"], config.duplicate_ratio, min_rows)
            )
        )
    for feature in LENGTH_FEATURES:
        if feature in cur:
            base = ref[feature] if ref is not None and len(ref) and feature in ref else None
            rows.append(
                _quality_row(
                    feature,
                    quality.outlier_ratio(
                        cur[feature], base, config.outlier_iqr_k, config.outlier_ratio, min_rows
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
                    quality.outlier_ratio(
                        current.images[feature],
                        base,
                        config.outlier_iqr_k,
                        config.outlier_ratio,
                        min_rows,
                    ),
                    None if base is None else int(base.notna().sum()),
                )
            )
    if label in cur and cur[label].notna().any():
        rows.append(
            _quality_row(
                label,
                quality.class_imbalance_ratio(
                    cur[label].dropna().astype(int),
                    config.class_imbalance_ratio,
                    expected=sorted(ref["label"].dropna().astype(int).unique())
                    if ref is not None and "label" in ref
                    else None,
                    min_rows=min_rows,
                ),
            )
        )
        rows.append(_association_row(reference, current, label, config))

    # informational statistics
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
            baseline = quality.emptiness_association(
                ref["description_empty"], ref["label"].astype(int), min_rows=0, min_empty=0
            ).value
    margin = config.emptiness_association_margin
    threshold = None if baseline is None or margin is None else min(1.0, baseline + margin)
    result = quality.emptiness_association(
        cur["description_empty"], cur[label].astype(int), threshold, min_rows=config.min_rows
    )
    row = _quality_row("description", result, None if baseline is None else len(ref))
    row.details = {**row.details, "reference_value": baseline, "margin": margin}
    return row


# --------------------------------------------------------------------------- references


@dataclass
class Reference:
    kind: str  # champion | lake_train | none
    reference_id: str | None
    note: str
    model_version: str | None = None
    dataset_id: str | None = None
    # The dataset's subsets the champion trained on (its run's `train_subsets`).
    subsets: tuple[str, ...] = ("train",)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion_reference(settings: Settings) -> Reference | None:
    """The champion's training data, or None when the registry has no champion."""
    from rakuten_mlops.ml import registry

    version = registry.champion(settings)
    if version is None:
        return None
    name, alias = settings.model_name, settings.model_alias
    client = registry.client(settings)
    run = client.get_run(version.run_id).data if version.run_id else None
    run_tags, run_params = (run.tags, run.params) if run else ({}, {})
    dataset_id = (version.tags or {}).get("dataset_id") or run_tags.get("dataset_id")
    if not dataset_id:
        raise QualityError(
            f"{name}@{alias} (v{version.version}) names no dataset_id: its training data is unknown"
        )
    subsets = tuple(run_params.get("train_subsets", "train").split(","))
    return Reference(
        "champion",
        f"dataset-{dataset_id}-{'+'.join(subsets)}",
        f"{' + '.join(subsets)} rows of dataset {dataset_id}, the training data of "
        f"{name}@{alias} v{version.version}",
        str(version.version),
        dataset_id,
        subsets,
    )


def resolve_reference(settings: Settings) -> Reference:
    """The champion's training data, else the fallback (decided per window, see below)."""
    found = champion_reference(settings)
    if found is not None:
        return found
    return Reference(
        "lake_train",
        None,
        f"no {settings.model_name}@{settings.model_alias} in the registry: the lake's "
        "labelled train-subset products (of earlier batches, for a load batch)",
    )


def _window_reference(base: Reference, conn, batch_id: int | None) -> Reference:
    """The reference of one window: the champion's, or the lake fallback for this window."""
    if base.kind == "champion":
        return base
    if batch_id is not None:
        earlier = conn.execute(
            "SELECT count(*) FROM products p JOIN dataset_split s USING (productid)"
            " WHERE s.subset = 'train' AND p.batch_id < %s",
            (batch_id,),
        ).fetchone()[0]
        if not earlier:
            return Reference(
                "none",
                None,
                "no champion and no earlier batch: no reference, quality statistics only",
            )
        return Reference(
            "lake_train",
            f"lake-train-before-batch-{batch_id}",
            f"no champion: labelled train-subset products of batches before {batch_id}",
        )
    last = conn.execute(
        "SELECT max(batch_id) FROM load_batches WHERE status = 'succeeded'"
    ).fetchone()[0]
    if last is None:
        return Reference("none", None, "no champion and an empty lake: no reference")
    return Reference(
        "lake_train",
        f"lake-train-upto-batch-{last}",
        f"no champion: labelled train-subset products of batches up to {last}",
    )


def _reference_products(settings: Settings, conn, ref: Reference) -> pd.DataFrame:
    if ref.kind == "champion":
        from rakuten_mlops.ml.dataset import load_dataset

        frame = load_dataset(settings, ref.dataset_id).frame
        return frame.loc[
            frame["subset"].isin(ref.subsets),
            ["productid", "designation", "description", "prdtypecode"],
        ]
    bound = int(ref.reference_id.rsplit("-", 1)[1])
    operator = "<" if "before" in ref.reference_id else "<="
    return _frame(
        conn,
        f"""
        SELECT p.productid, p.designation, p.description, l.prdtypecode
        FROM products p JOIN labels l USING (productid) JOIN dataset_split s USING (productid)
        WHERE s.subset = 'train' AND p.batch_id {operator} %s ORDER BY p.productid""",
        (bound,),
    )


class _Tools:
    """What building profiles needs, created once per process: S3, language, stopwords."""

    def __init__(self, settings: Settings):
        from rakuten_mlops.quality_features import language_guesser, stopword_set
        from rakuten_mlops.storage import get_bytes, s3_client

        self.settings = settings
        self.s3 = s3_client(settings)
        nltk_data = settings.path(settings.nltk_data_dir)
        self.guesser = language_guesser(nltk_data)
        self.stopwords = stopword_set(nltk_data)
        self.fetch = lambda bucket, key: get_bytes(self.s3, bucket, key)
        self._uploads: list = []
        self._buckets: set[str] = set()

    def upload(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        """Put an object in the background (the job goes on computing); see `finish`."""
        from concurrent.futures import ThreadPoolExecutor

        from rakuten_mlops.storage import ensure_buckets, put_bytes

        if bucket not in self._buckets:
            ensure_buckets(self.s3, [bucket])
            self._buckets.add(bucket)
        if not hasattr(self, "_pool"):
            self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="quality-s3")
        self._uploads.append(self._pool.submit(put_bytes, self.s3, bucket, key, body, content_type))

    def finish(self) -> None:
        """Wait for every upload; the first failure is raised (the task then retries)."""
        uploads, self._uploads = self._uploads, []
        for upload in uploads:
            upload.result()


def reference_profile(
    settings: Settings, conn, ref: Reference, config: QualityConfig, tools: _Tools | None = None
) -> Profile | None:
    """The reference's profile: from the S3 cache, else computed and cached."""
    from minio.error import S3Error

    from rakuten_mlops.quality_features import product_profile
    from rakuten_mlops.storage import get_bytes

    if ref.kind == "none":
        return None
    tools = tools or _Tools(settings)
    bucket = settings.s3_bucket_artifacts
    prefix = f"{REFERENCE_PREFIX}/v{FEATURES_VERSION}/{ref.reference_id}"
    names = ("features.parquet", "images.parquet", "profile.json")
    try:
        profile = Profile.from_objects(
            {n: get_bytes(tools.s3, bucket, f"{prefix}/{n}") for n in names}
        )
        if profile.meta.get("max_images") == config.max_images:
            log.info("reference %s: cached profile (%d rows)", ref.reference_id, profile.rows)
            return profile
    except S3Error as exc:
        if exc.code not in ("NoSuchKey", "NoSuchBucket"):
            raise
    started = time.perf_counter()
    products = _reference_products(settings, conn, ref)
    images = _images(conn, "WHERE i.productid = ANY(%s)", (products["productid"].tolist(),))
    images = _with_brightness(images, tools, config.max_images)
    profile = product_profile(
        products,
        images,
        tools.guesser,
        tools.stopwords,
        {"reference_id": ref.reference_id, "max_images": config.max_images},
    )
    for name, body in profile.to_objects().items():
        tools.upload(bucket, f"{prefix}/{name}", body, "application/octet-stream")
    log.info(
        "reference %s: profile of %d products, %d images computed in %.1f s and cached in "
        "s3://%s/%s/",
        ref.reference_id,
        profile.rows,
        len(images),
        time.perf_counter() - started,
        bucket,
        prefix,
    )
    return profile


def prepare_reference(settings: Settings, base: Reference) -> int:
    """Build and cache the champion's reference profile once, before windows are checked in
    parallel (they then read it from S3); its row count. The lake fallback differs per
    window and is built by each check."""
    from rakuten_mlops.storage import connect

    if base.kind != "champion":
        return 0
    tools = _Tools(settings)
    with connect(settings) as conn:
        profile = reference_profile(settings, conn, base, settings_config(settings), tools)
    tools.finish()
    return profile.rows


# --------------------------------------------------------------------------- windows


@dataclass
class Window:
    window_id: str
    kind: str  # load_batch | inference
    window_time: datetime
    batch_id: int | None = None
    interval_start: datetime | None = None
    interval_end: datetime | None = None


@dataclass
class WindowResult:
    """What checking one window produced (also the row of quality_windows)."""

    window: Window
    reference: Reference
    rows: list[ResultRow]
    n_rows: int
    reference_rows: int
    status: str
    report_bucket: str | None = None
    report_key: str | None = None
    dag_run_id: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def breaches(self) -> list[ResultRow]:
        return [row for row in self.rows if row.breach]

    @property
    def breached_features(self) -> list[str]:
        return sorted({f"{row.feature}" for row in self.breaches})

    def summary(self) -> dict[str, Any]:
        return {
            "window_id": self.window.window_id,
            "kind": self.window.kind,
            "status": self.status,
            "rows": self.n_rows,
            "reference": self.reference.reference_id,
            "reference_kind": self.reference.kind,
            "breaches": [
                f"{r.feature}.{r.metric}={r.value:.4g} (threshold {r.threshold:g})"
                for r in self.breaches
            ],
            "breached_features": self.breached_features,
            "report": f"s3://{self.report_bucket}/{self.report_key}" if self.report_key else None,
            "seconds": round(self.seconds, 3),
            "timings": self.timings,
        }


def window_status(
    rows: list[ResultRow], n_rows: int, reference: Reference, config: QualityConfig
) -> str:
    if n_rows == 0:
        return "empty"
    if any(row.breach for row in rows):
        return "breach"
    if reference.kind == "none":
        return "no_reference"
    if n_rows < max(config.rule.min_current, config.min_rows):
        return "insufficient"
    return "ok"


def _frame(conn, query: str, params: tuple = ()) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def _images(conn, where: str, params: tuple) -> pd.DataFrame:
    return _frame(
        conn,
        "SELECT i.productid, i.width, i.height, i.size_bytes, i.bucket, i.s3_key"
        f" FROM images i {where}",
        params,
    )


def _with_brightness(images: pd.DataFrame, tools: _Tools, max_images: int) -> pd.DataFrame:
    from rakuten_mlops.quality_features import measure_brightness

    if images.empty:
        return images
    return measure_brightness(images, tools.fetch, max_images)


def pending_batches(conn, interval_start: datetime, interval_end: datetime) -> list[int]:
    """Succeeded batches finished before the interval's end: never checked, or finished in it."""
    return [
        row[0]
        for row in conn.execute(
            """SELECT b.batch_id FROM load_batches b
           LEFT JOIN quality_windows w ON w.batch_id = b.batch_id
           WHERE b.status = 'succeeded' AND b.finished_at < %(end)s
             AND (w.window_id IS NULL OR b.finished_at >= %(start)s)
           ORDER BY b.batch_id""",
            {"start": interval_start, "end": interval_end},
        )
    ]


def batch_window(conn, batch_id: int) -> Window:
    row = conn.execute(
        "SELECT coalesce(finished_at, started_at) FROM load_batches WHERE batch_id = %s",
        (batch_id,),
    ).fetchone()
    if row is None:
        raise QualityError(f"no load batch {batch_id}")
    return Window(f"batch-{batch_id}", "load_batch", row[0], batch_id=batch_id)


def inference_window(interval_start: datetime, interval_end: datetime) -> Window:
    start = interval_start.astimezone(UTC)
    return Window(
        f"inference-{start:%Y-%m-%dT%H:%M:%SZ}",
        "inference",
        interval_start,  # plotted at the start of its interval, as time buckets are
        interval_start=interval_start,
        interval_end=interval_end,
    )


def _batch_profile(conn, batch_id: int, tools: _Tools, config: QualityConfig) -> Profile:
    from rakuten_mlops.quality_features import product_profile

    products = _frame(
        conn,
        """
        SELECT p.productid, p.designation, p.description, l.prdtypecode
        FROM products p LEFT JOIN labels l USING (productid)
        WHERE p.batch_id = %s ORDER BY p.productid""",
        (batch_id,),
    )
    images = _images(conn, "JOIN products p USING (productid) WHERE p.batch_id = %s", (batch_id,))
    images = _with_brightness(images, tools, config.max_images)
    if products.empty:
        return Profile(pd.DataFrame(), meta={"texts": 0})
    # A window keeps every token: the reference's top tokens are counted in it exactly.
    return product_profile(products, images, tools.guesser, tools.stopwords, keep_tokens=None)


def _inference_profile(conn, settings: Settings, window: Window) -> Profile:
    from rakuten_mlops.quality_features import inference_profile

    log_rows = _frame(
        conn,
        """
        SELECT prdtypecode, confidence, designation_chars, description_chars,
               designation_words, description_words, has_html, language, text_sha256,
               model_version
        FROM inference_log
        WHERE model_name = %s AND predicted_at >= %s AND predicted_at < %s""",
        (settings.model_name, window.interval_start, window.interval_end),
    )
    if log_rows.empty:
        return Profile(pd.DataFrame(), meta={"texts": 0})
    versions = log_rows["model_version"].value_counts().to_dict()
    return inference_profile(
        log_rows, {"model_versions": {str(k): int(v) for k, v in versions.items()}}
    )


def check_window(
    settings: Settings,
    window: Window,
    base: Reference,
    config: QualityConfig | None = None,
    dag_run_id: str | None = None,
    tools: _Tools | None = None,
    report: bool = True,
) -> WindowResult:
    """Compute, store (replacing) and report one window; the result and its breaches."""
    from rakuten_mlops.storage import connect

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        timings[stage] = round(time.perf_counter() - started - sum(timings.values()), 3)

    config = config or settings_config(settings)
    tools = tools or _Tools(settings)
    with connect(settings) as conn:
        ref = _window_reference(base, conn, window.batch_id)
        reference = reference_profile(settings, conn, ref, config, tools)
        lap("reference")
        if window.kind == "load_batch":
            current = _batch_profile(conn, window.batch_id, tools, config)
        else:
            current = _inference_profile(conn, settings, window)
        lap("window")
    rows = evaluate(reference, current, config) if current.rows else []
    lap("statistics")
    result = WindowResult(
        window,
        ref,
        rows,
        current.rows,
        0 if reference is None else reference.rows,
        window_status(rows, current.rows, ref, config),
        dag_run_id=dag_run_id,
    )
    if report:
        publish_report(settings, result, tools)
    tools.finish()  # the reference cache and the report are in S3 before the row says so
    lap("report")
    result.seconds = time.perf_counter() - started
    with connect(settings) as conn:
        store(conn, result)
    lap("store")
    result.timings = timings
    for row in result.breaches:
        log.warning(
            "%s: %s %s = %.4g breaches its threshold %g (n=%s, reference n=%s)",
            window.window_id,
            row.feature,
            row.metric,
            row.value,
            row.threshold,
            row.n_current,
            row.n_reference,
        )
    log.info(
        "%s: %s, %d rows against %s (%d rows), %d statistics, %d breaches, report %s",
        window.window_id,
        result.status,
        result.n_rows,
        ref.reference_id,
        result.reference_rows,
        len(rows),
        len(result.breaches),
        result.report_key,
    )
    return result


def publish_report(settings: Settings, result: WindowResult, tools: _Tools) -> str:
    from rakuten_mlops.quality_report import render_html

    html = render_html(result)
    bucket, key = settings.s3_bucket_artifacts, f"{REPORT_PREFIX}/{result.window.window_id}.html"
    tools.upload(bucket, key, html.encode("utf-8"), "text/html; charset=utf-8")
    result.report_bucket, result.report_key = bucket, key
    return key


# --------------------------------------------------------------------------- storage


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _number(value) -> float | None:
    if value is None:
        return None
    return float(value)


_RESULT_COLUMNS = (
    "window_id",
    "feature",
    "metric",
    "category",
    "value",
    "threshold",
    "breach",
    "enough_data",
    "n_reference",
    "n_current",
    "bins",
    "expected_bias",
    "reason",
    "details",
)
_WINDOW_COLUMNS = (
    "window_id",
    "kind",
    "batch_id",
    "interval_start",
    "interval_end",
    "window_time",
    "rows",
    "reference_kind",
    "reference_id",
    "reference_rows",
    "reference_note",
    "model_version",
    "status",
    "breaches",
    "breached_features",
    "report_bucket",
    "report_key",
    "dag_run_id",
    "seconds",
)


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...], extra: str = "") -> str:
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        f"({', '.join(['%s'] * len(columns))}) ON CONFLICT ({', '.join(key)}) "
        f"DO UPDATE SET {updates}{extra}"
    )


def store(conn, result: WindowResult) -> None:
    """Upsert the window and its rows in one transaction; rows it no longer has go."""
    from psycopg.types.json import Jsonb

    from rakuten_mlops import schema

    schema.migrate(conn)
    w, ref = result.window, result.reference
    window_values = (
        w.window_id,
        w.kind,
        w.batch_id,
        w.interval_start,
        w.interval_end,
        w.window_time,
        result.n_rows,
        ref.kind,
        ref.reference_id,
        result.reference_rows,
        ref.note,
        ref.model_version,
        result.status,
        len(result.breaches),
        result.breached_features,
        result.report_bucket,
        result.report_key,
        result.dag_run_id,
        result.seconds,
    )
    rows = [
        (
            w.window_id,
            r.feature,
            r.metric,
            r.category,
            _number(r.value),
            _number(r.threshold),
            bool(r.breach),
            bool(r.enough_data),
            r.n_reference,
            int(r.n_current),
            r.bins,
            _number(r.expected_bias),
            r.reason,
            Jsonb(_json_safe(r.details)),
        )
        for r in result.rows
    ]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            _upsert("quality_windows", _WINDOW_COLUMNS, ("window_id",), ", computed_at = now()"),
            window_values,
        )
        if rows:
            cur.executemany(
                _upsert(
                    "quality_results",
                    _RESULT_COLUMNS,
                    ("window_id", "feature", "metric"),
                    ", computed_at = now()",
                ),
                rows,
            )
        # Rows of an earlier check of this window that this check did not produce.
        cur.execute(
            "DELETE FROM quality_results WHERE window_id = %s AND computed_at < now()",
            (w.window_id,),
        )


def record_promotion(settings_or_conn: Settings | Any | None, promotion: Mapping[str, Any]) -> None:
    """Record one promotion decision (rakuten_mlops.ml.registry.promote) in model_promotions.

    `settings_or_conn`: a Settings (a connection to its lake is opened and committed), an
    open psycopg connection (the caller commits), or None (the default settings).
    `promotion` needs model_name, version, run_id, alias, promoted; optional
    test_f1_weighted, cv_f1_weighted, best_family, dataset_id, reason, decided_at
    (datetime or ISO string; default now). The whole mapping is kept in `details`.
    Upserted on (model_name, version, alias): recording the same decision again updates
    it and keeps its first decided_at.
    """
    from psycopg.types.json import Jsonb

    from rakuten_mlops import schema

    missing = [
        k
        for k in ("model_name", "version", "run_id", "alias", "promoted")
        if promotion.get(k) is None
    ]
    if missing:
        raise ValueError(f"promotion lacks {', '.join(missing)}")
    decided_at = promotion.get("decided_at") or datetime.now(UTC)
    if isinstance(decided_at, str):
        decided_at = datetime.fromisoformat(decided_at)
    values = (
        str(promotion["model_name"]),
        str(promotion["version"]),
        str(promotion["run_id"]),
        str(promotion["alias"]),
        bool(promotion["promoted"]),
        _number(promotion.get("test_f1_weighted")),
        _number(promotion.get("cv_f1_weighted")),
        promotion.get("best_family"),
        promotion.get("dataset_id"),
        str(promotion.get("reason") or ""),
        decided_at,
        Jsonb(_json_safe(dict(promotion))),
    )
    query = """
        INSERT INTO model_promotions (model_name, version, run_id, alias, promoted,
            test_f1_weighted, cv_f1_weighted, best_family, dataset_id, reason, decided_at, details)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (model_name, version, alias) DO UPDATE SET
            run_id = EXCLUDED.run_id, promoted = EXCLUDED.promoted,
            test_f1_weighted = EXCLUDED.test_f1_weighted, cv_f1_weighted = EXCLUDED.cv_f1_weighted,
            best_family = EXCLUDED.best_family, dataset_id = EXCLUDED.dataset_id,
            reason = EXCLUDED.reason, details = EXCLUDED.details, updated_at = now()"""
    if settings_or_conn is None or isinstance(settings_or_conn, Settings):
        from rakuten_mlops.settings import get_settings
        from rakuten_mlops.storage import connect

        with connect(settings_or_conn or get_settings()) as conn:
            schema.migrate(conn)
            conn.execute(query, values)
        return
    schema.migrate(settings_or_conn)
    settings_or_conn.execute(query, values)


# --------------------------------------------------------------------------- the job


def window_summaries(settings: Settings, dag_run_id: str) -> list[dict[str, Any]]:
    """The windows a DAG run checked (from the table: XCom carries ids, not results)."""
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT window_id, kind, status, rows, breached_features, report_bucket, report_key"
            " FROM quality_windows WHERE dag_run_id = %s ORDER BY window_id",
            (dag_run_id,),
        ).fetchall()
    return [
        {
            "window_id": r[0],
            "kind": r[1],
            "status": r[2],
            "rows": r[3],
            "breached_features": list(r[4]),
            "report": f"s3://{r[5]}/{r[6]}" if r[6] else None,
        }
        for r in rows
    ]


def interval_of(date: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The data interval `data-quality --date` names: [start, end), aware, in UTC.

    None: today (UTC) so far. 'YYYY-MM-DD': that UTC day. An ISO time: the 24 hours
    from it, honouring its offset (one without an offset is read as UTC). Anything else,
    or a day that does not exist (2025-02-30), is a ValueError naming the value.
    """
    from datetime import date as day
    from datetime import timedelta

    if date is None:
        start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return start, now
    text = date.strip()
    try:
        if len(text) == 10:  # a plain day: its own parser, so 2025-02-30 says "day"
            start = datetime.combine(day.fromisoformat(text), datetime.min.time(), UTC)
        else:
            start = datetime.fromisoformat(text)
            start = (start.replace(tzinfo=UTC) if start.tzinfo is None
                     else start.astimezone(UTC))
    except ValueError as exc:
        raise ValueError(
            f"--date {date!r} is not a valid date ({exc}); expected YYYY-MM-DD (a UTC "
            "day) or an ISO time with an offset, e.g. 2025-02-03T00:00+01:00") from None
    return start, start + timedelta(days=1)


def run(
    settings: Settings,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """Every window of one data interval (what the DAG's tasks do, in one process)."""
    from rakuten_mlops import schema
    from rakuten_mlops.storage import connect

    config = settings_config(settings)
    with connect(settings) as conn:
        schema.migrate(conn)
        batches = pending_batches(conn, interval_start, interval_end)
        windows = [batch_window(conn, b) for b in batches]
    windows.append(inference_window(interval_start, interval_end))
    base = resolve_reference(settings)
    tools = _Tools(settings)
    results = [check_window(settings, w, base, config, dag_run_id, tools) for w in windows]
    return {
        "interval": [interval_start.isoformat(), interval_end.isoformat()],
        "reference": base.as_dict(),
        "windows": [r.summary() for r in results],
        "breaches": sum(len(r.breaches) for r in results),
    }


def should_retrain(summaries: list[dict[str, Any]], enabled: bool) -> bool:
    """Trigger ml_pipeline: only when the setting is on and a window breached."""
    return enabled and any(s.get("breached_features") for s in summaries)


def to_json(value: Any) -> str:
    return json.dumps(_json_safe(value), indent=2, sort_keys=True, default=str)
