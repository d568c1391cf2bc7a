"""The data-quality stage: what the `data_quality` DAG (and `rakuten-mlops data-quality`)
runs, one window at a time, against the reference of the run (`reference`).

For each window: the reference's profile (S3 cache) and the window's (PostgreSQL),
every statistic (`statistics`), a self-contained HTML report in S3
(`quality/reports/<window_id>.html`, key in `quality_windows.report_key`), then the rows
upserted (`store`). The schema is not migrated here: that happens once, at stack
start-up, `rakuten-mlops migrate` or a DAG's first task.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from rakuten_mlops.quality.config import QualityConfig, settings_config
from rakuten_mlops.quality.reference import reference_profile, resolve_reference, window_reference
from rakuten_mlops.quality.report import render_html
from rakuten_mlops.quality.resources import QualityResources
from rakuten_mlops.quality.results import Reference, Window, WindowResult
from rakuten_mlops.quality.statistics import evaluate, window_status
from rakuten_mlops.quality.store import store
from rakuten_mlops.quality.windows import (
    batch_profile,
    batch_window,
    inference_log_profile,
    inference_window,
    pending_batches,
)
from rakuten_mlops.schema import require_current
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.quality.job")

REPORT_PREFIX = "quality/reports"


def check_window(
    settings: Settings,
    window: Window,
    base: Reference,
    config: QualityConfig | None = None,
    dag_run_id: str | None = None,
    tools: QualityResources | None = None,
    report: bool = True,
) -> WindowResult:
    """Compute, store (replacing) and report one window; the result and its breaches."""
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        timings[stage] = round(time.perf_counter() - started - sum(timings.values()), 3)

    config = config or settings_config(settings)
    tools = tools or QualityResources(settings)
    with connect(settings) as conn:
        ref = window_reference(base, conn, window.batch_id)
        reference = reference_profile(settings, conn, ref, config, tools)
        lap("reference")
        if window.kind == "load_batch":
            current = batch_profile(conn, window.batch_id, tools, config.images.max_images)
        else:
            current = inference_log_profile(conn, settings, window)
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
    _log_outcome(result)
    return result


def _log_outcome(result: WindowResult) -> None:
    """Each breach as a warning (the task log shows them), then one line for the window."""
    window_id = result.window.window_id
    for row in result.breaches:
        log.warning(
            "%s: %s %s = %.4g breaches its threshold %g (n=%s, reference n=%s)",
            window_id,
            row.feature,
            row.metric,
            row.value,
            row.threshold,
            row.n_current,
            row.n_reference,
        )
    log.info(
        "%s: %s, %d rows against %s (%d rows), %d statistics, %d breaches, report %s",
        window_id,
        result.status,
        result.n_rows,
        result.reference.reference_id,
        result.reference_rows,
        len(result.rows),
        len(result.breaches),
        result.report_key,
    )


def publish_report(settings: Settings, result: WindowResult, tools: QualityResources) -> str:
    html = render_html(result)
    bucket, key = settings.s3_bucket_artifacts, f"{REPORT_PREFIX}/{result.window.window_id}.html"
    tools.upload(bucket, key, html.encode("utf-8"), "text/html; charset=utf-8")
    result.report_bucket, result.report_key = bucket, key
    return key


def run(
    settings: Settings,
    interval_start: datetime,
    interval_end: datetime,
    dag_run_id: str | None = None,
) -> dict[str, Any]:
    """Every window of one data interval (what the DAG's tasks do, in one process)."""
    config = settings_config(settings)
    with connect(settings) as conn:
        require_current(conn)
        batches = pending_batches(conn, interval_start, interval_end)
        windows = [batch_window(conn, b) for b in batches]
    windows.append(inference_window(interval_start, interval_end))
    base = resolve_reference(settings)
    tools = QualityResources(settings)
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
