"""Everything the control room reads, in one place.

The lake is read as Grafana's read-only role (rakuten_grafana). Where a Grafana panel
shows the same thing, its SQL is loaded from config/grafana/dashboards and expanded the
way Grafana expands it (rakuten_mlops.ops.dashboards), so the control room and the
dashboards cannot disagree. MLflow is read as its reader user, Prometheus over its HTTP
API, images and HTML reports from the S3 store.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path

import httpx
import pandas as pd
from minio.error import S3Error

from rakuten_mlops.ml import tracking
from rakuten_mlops.ops.dashboards import expand_sql, load_dashboards, panel_queries
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect, get_bytes, s3_client

HTTP_TIMEOUT = 5.0


# --------------------------------------------------------------------------- the lake


def read_only(settings: Settings) -> Settings:
    """The same lake, as the read-only role (the owner's login where it has none)."""
    if settings.postgres_grafana_password is None:
        return settings
    return settings.model_copy(
        update={
            "postgres_user": settings.postgres_grafana_user,
            "postgres_password": settings.postgres_grafana_password,
        }
    )


def frame(settings: Settings, sql: str, params: dict | None = None) -> pd.DataFrame:
    with connect(read_only(settings)) as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [column.name for column in cursor.description]
        return pd.DataFrame(cursor.fetchall(), columns=columns)


@cache
def panel_sql(dashboard: str, panel: str) -> str:
    """The raw SQL of the Grafana panel titled `panel` on dashboard uid `dashboard`."""
    for board in load_dashboards():
        for query in panel_queries(board):
            if query.dashboard == dashboard and query.panel == panel:
                return query.query
    raise KeyError(f"no panel {panel!r} on dashboard {dashboard!r}")


def panel(settings: Settings, dashboard: str, title: str, start: datetime, end: datetime):
    """What the Grafana panel shows for the time range [start, end]."""
    return frame(settings, expand_sql(panel_sql(dashboard, title), start, end))


PRODUCTS_PER_CLASS = """
SELECT coalesce(subset, 'unlabelled (' || source_split || ')') AS split,
       prdtypecode, coalesce(category, '') AS category,
       count(*) AS products, count(image_key) AS images
FROM product_catalogue
GROUP BY 1, 2, 3 ORDER BY 1, 2
"""

REJECTS_BY_REASON = """
SELECT reason, count(*) AS rejects,
       (array_agg(source_file || ' ' || locator || coalesce(': ' || detail, '')
                  ORDER BY batch_id DESC, locator))[1:3] AS examples
FROM rejects GROUP BY reason ORDER BY rejects DESC, reason
"""

SAMPLE_IMAGES = """
SELECT productid, image_bucket, image_key, prdtypecode, category, designation
FROM product_catalogue WHERE image_key IS NOT NULL AND prdtypecode IS NOT NULL
ORDER BY md5(productid::text) LIMIT %(limit)s
"""

PROMOTIONS = """
SELECT decided_at, model_name, version, alias, promoted, gate_outcome,
       round(test_f1_weighted::numeric, 4) AS test_f1_weighted,
       round(gain_vs_champion::numeric, 4) AS gain_vs_champion,
       round(gain_vs_champion_low::numeric, 4) AS gain_vs_champion_low,
       round(gain_vs_champion_high::numeric, 4) AS gain_vs_champion_high,
       round(gain_vs_baseline::numeric, 4) AS gain_vs_baseline,
       round(gain_vs_baseline_low::numeric, 4) AS gain_vs_baseline_low,
       round(gain_vs_baseline_high::numeric, 4) AS gain_vs_baseline_high,
       best_family, dataset_id, run_id, reason
FROM model_promotions ORDER BY decided_at DESC LIMIT 200
"""

STATISTICS = """
SELECT w.window_time, w.window_id, w.kind, r.feature, r.metric, r.category, r.value,
       r.threshold, r.breach, r.enough_data
FROM quality_results r JOIN quality_windows w USING (window_id)
WHERE r.threshold IS NOT NULL AND w.window_time BETWEEN %(start)s AND %(end)s
ORDER BY w.window_time, w.kind, r.feature, r.metric
"""

# The monitoring loop: each data_quality run that breached, the ml_pipeline run it
# triggered (QUALITY_TRIGGER_RETRAIN) and the gate's decision on that run's model, linked
# by the data_quality run id the triggered run carries (rakuten_mlops.ml.stages.promote).
RETRAINING_CHAIN = """
WITH breaches AS (
    SELECT dag_run_id, max(computed_at) AS checked_at,
           string_agg(window_id || ': ' || array_to_string(breached_features, ', '), '; '
                      ORDER BY window_id) AS breached
    FROM quality_windows
    WHERE status = 'breach' AND dag_run_id IS NOT NULL
      AND computed_at BETWEEN %(start)s AND %(end)s
    GROUP BY dag_run_id
)
SELECT b.checked_at, b.dag_run_id AS data_quality_run, b.breached,
       coalesce(p.details->>'airflow_run_id', 'none (retraining off, or not finished)')
           AS ml_pipeline_run,
       p.model_name, p.version, p.alias AS decision, p.gate_outcome, p.reason, p.decided_at
FROM breaches b
LEFT JOIN model_promotions p ON p.details->>'data_quality_run_id' = b.dag_run_id
ORDER BY b.checked_at DESC, p.decided_at DESC
"""

REPORT = "SELECT report_bucket, report_key FROM quality_windows WHERE window_id = %(window)s"

INFERENCE_PER_HOUR = """
SELECT date_trunc('hour', predicted_at) AS hour, count(*) AS predictions,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50_latency_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms
FROM inference_log WHERE predicted_at BETWEEN %(start)s AND %(end)s
GROUP BY 1 ORDER BY 1
"""

CLASS_MIX = """
SELECT l.prdtypecode, coalesce(c.name, '') AS category, count(*) AS predictions
FROM inference_log l LEFT JOIN categories c USING (prdtypecode)
WHERE l.predicted_at BETWEEN %(start)s AND %(end)s
GROUP BY 1, 2 ORDER BY predictions DESC, 1
"""


def report_html(settings: Settings, window_id: str) -> str | None:
    """The HTML drift report of a window, read from S3 (None when it has none)."""
    found = frame(settings, REPORT, {"window": window_id})
    if found.empty or not found.at[0, "report_key"]:
        return None
    bucket, key = found.at[0, "report_bucket"], found.at[0, "report_key"]
    return get_bytes(s3_client(settings), bucket, key).decode("utf-8")


def image_bytes(settings: Settings, bucket: str, key: str) -> bytes:
    return get_bytes(s3_client(settings), bucket, key)


# --------------------------------------------------------------------------- MLflow


RUN_LIMIT = 5000  # runs of the experiment read (trainings and their family runs)


def experiment_id(settings: Settings) -> str | None:
    """The id of the settings' experiment (None until the first training creates it)."""
    import mlflow  # see experiment_runs

    tracking.configure(settings, "reader")
    experiment = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    return None if experiment is None else experiment.experiment_id


def experiment_runs(settings: Settings, experiment: str) -> pd.DataFrame:
    """Every run of experiment id `experiment`, trainings and their family runs, newest first.

    One search for the whole page: each request to MLflow costs about 0.45 s here (its
    basic auth checks the password's hash on every request), so the family runs are
    picked out of this frame (`family_runs`) rather than searched for run by run.
    """
    # mlflow is imported where used: importing it costs seconds the other pages skip.
    import mlflow

    tracking.configure(settings, "reader")
    return mlflow.search_runs(
        experiment_ids=[experiment],
        order_by=["attributes.start_time DESC"],
        max_results=RUN_LIMIT,
    )


def _parent(runs: pd.DataFrame) -> pd.Series:
    if "tags.mlflow.parentRunId" not in runs:
        return pd.Series(None, index=runs.index, dtype=object)
    return runs["tags.mlflow.parentRunId"]


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished top-level runs (one per training) of `experiment_runs`."""
    if runs.empty:
        return runs
    top = runs[_parent(runs).isna() & (runs["status"] == "FINISHED")]
    return top.reset_index(drop=True)


def family_runs(runs: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The CV table: one nested run per model family of training run `run_id`."""
    if runs.empty:
        return runs
    return runs[_parent(runs) == run_id].reset_index(drop=True)


PROXIED_ARTIFACTS = "mlflow-artifacts:/"


def stored_artifact(settings: Settings, artifact_uri: str, path: str) -> bytes | None:
    """An artifact read straight from the S3 store where MLflow's server keeps it
    (`--artifacts-destination s3://S3_BUCKET_MLFLOW/`: `mlflow-artifacts:/X` is the object
    X there): milliseconds, where the download through MLflow's proxy takes seconds.
    None when the run has no such artifact or another artifact store."""
    if not artifact_uri.startswith(PROXIED_ARTIFACTS):
        return None
    key = f"{artifact_uri.removeprefix(PROXIED_ARTIFACTS).strip('/')}/{path}"
    try:
        return get_bytes(s3_client(settings), settings.s3_bucket_mlflow, key)
    except S3Error:
        return None


def run_artifact(settings: Settings, run_id: str, path: str, folder: Path) -> Path | None:
    """An artifact of a run downloaded into `folder` (None when the run has none)."""
    import mlflow  # see experiment_runs

    tracking.configure(settings, "reader")
    try:
        return Path(
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=folder)
        )
    except (OSError, mlflow.exceptions.MlflowException):
        return None


# --------------------------------------------------------------------------- HTTP


def api_url(settings: Settings) -> str:
    return settings.control_room_api_url or f"http://{settings.bind_host}:{settings.api_port}"


def prometheus_url(settings: Settings) -> str:
    return (
        settings.control_room_prometheus_url
        or f"http://{settings.bind_host}:{settings.prometheus_port}"
    )


def predict(settings: Settings, designation: str, description: str, top_k: int) -> dict:
    """POST /predict with the client key; raises httpx.HTTPError on a failure."""
    key = settings.api_client_key.get_secret_value() if settings.api_client_key else ""
    response = httpx.post(
        f"{api_url(settings)}/predict",
        headers={"X-API-Key": key},
        json={"designation": designation, "description": description, "top_k": top_k},
        timeout=HTTP_TIMEOUT,
    )
    response.raise_for_status()
    return response.json()


def prometheus_vector(settings: Settings, expr: str) -> list[dict]:
    """An instant PromQL query's series ([] when Prometheus is unreachable)."""
    try:
        body = httpx.get(
            f"{prometheus_url(settings)}/api/v1/query", params={"query": expr}, timeout=HTTP_TIMEOUT
        ).json()
    except (httpx.HTTPError, ValueError):
        return []
    return body.get("data", {}).get("result", []) if body.get("status") == "success" else []


def probe(url: str) -> tuple[bool, str]:
    """(answers, what it answered): any reply under 500 means the service is up."""
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as error:
        return False, type(error).__name__
    return response.status_code < 500, f"HTTP {response.status_code}"
