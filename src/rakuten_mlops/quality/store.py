"""Results into PostgreSQL: `quality_windows` (one row per window) and `quality_results`
(one per window, feature and statistic), upserted: re-checking a window replaces all its
rows in one transaction. The tables exist already: migrations run at stack start-up, by
`rakuten-mlops migrate` or a DAG's first task, never here.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from rakuten_mlops.jsonable import json_safe
from rakuten_mlops.quality.results import WindowResult
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect


# The tables the job reads and writes (rakuten_mlops/sql/).
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
            Jsonb(json_safe(r.details)),
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


def window_summaries(settings: Settings, dag_run_id: str) -> list[dict[str, Any]]:
    """The windows a DAG run checked (from the table: XCom carries ids, not results)."""
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


def latest_run(settings: Settings) -> str | None:
    """The data_quality run (DAG run id, or the CLI's `cli__...`) that checked last."""
    with connect(settings) as conn:
        row = conn.execute(
            "SELECT dag_run_id FROM quality_windows WHERE dag_run_id IS NOT NULL"
            " ORDER BY computed_at DESC LIMIT 1"
        ).fetchone()
    return row[0] if row else None
