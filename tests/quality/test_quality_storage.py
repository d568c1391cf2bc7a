"""rakuten_mlops.quality.store: quality_windows / quality_results on the real PostgreSQL."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from rakuten_mlops.quality.results import Reference, ResultRow, Window, WindowResult
from rakuten_mlops.quality.store import store

pytestmark = pytest.mark.stack


def window_result(rows: list[ResultRow], status: str = "ok") -> WindowResult:
    window = Window(
        "batch-42", "load_batch", datetime(2026, 3, 1, tzinfo=UTC), batch_id=42
    )
    reference = Reference("lake_train", "lake-train-before-batch-42", "earlier batches")
    return WindowResult(
        window,
        reference,
        rows,
        500,
        900,
        status,
        report_bucket="b",
        report_key="quality/reports/batch-42.html",
        dag_run_id="manual__1",
        seconds=1.5,
    )


def fetch(settings, query: str, *args):
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        return conn.execute(query, args).fetchall()


def test_rechecking_a_window_replaces_it(quality_lake):
    from rakuten_mlops.storage import connect

    first = [
        ResultRow(
            "label",
            "psi",
            "drift",
            0.5,
            500,
            0.2,
            True,
            True,
            900,
            27,
            0.08,
            details={"histogram": {"bins": ["10"], "reference": [1.0]}},
        ),
        ResultRow("text", "duplicate_ratio", "quality", 0.01, 500, 0.05),
        ResultRow("designation_chars", "std", "stats", math.nan, 1),
    ]
    with connect(quality_lake) as conn:
        store(conn, window_result(first, "breach"))
    assert fetch(
        quality_lake,
        "SELECT status, breaches, breached_features, rows, reference_rows FROM quality_windows",
    ) == [("breach", 1, ["label"], 500, 900)]
    stored = dict(
        fetch(quality_lake, "SELECT feature || '.' || metric, value FROM quality_results")
    )
    assert stored["label.psi"] == 0.5 and math.isnan(stored["designation_chars.std"])

    second = [ResultRow("label", "psi", "drift", 0.05, 500, 0.2, False, True, 900, 27, 0.08)]
    with connect(quality_lake) as conn:
        store(conn, window_result(second))
    assert fetch(
        quality_lake, "SELECT status, breaches, breached_features FROM quality_windows"
    ) == [("ok", 0, [])]
    assert fetch(
        quality_lake,
        "SELECT window_id, feature, metric, value, breach, n_reference,"
        " expected_bias FROM quality_results",
    ) == [("batch-42", "label", "psi", 0.05, False, 900, 0.08)]


def test_details_with_non_finite_numbers_are_stored_as_json(quality_lake):
    from rakuten_mlops.storage import connect

    row = ResultRow(
        "description",
        "emptiness_association",
        "quality",
        0.1,
        10,
        details={"reference_value": math.nan, "fences": [math.inf, 1.0]},
    )
    with connect(quality_lake) as conn:
        store(conn, window_result([row]))
    assert fetch(quality_lake, "SELECT details FROM quality_results") == [
        ({"reference_value": None, "fences": [None, 1.0]},)
    ]
