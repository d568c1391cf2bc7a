"""quality_windows / quality_results / model_promotions on the real PostgreSQL (own database)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import psycopg
import pytest

from rakuten_mlops import monitoring
from rakuten_mlops.monitoring import ResultRow

pytestmark = pytest.mark.stack


def window_result(rows: list[ResultRow], status: str = "ok") -> monitoring.WindowResult:
    window = monitoring.Window(
        "batch-42", "load_batch", datetime(2026, 3, 1, tzinfo=UTC), batch_id=42
    )
    reference = monitoring.Reference("lake_train", "lake-train-before-batch-42", "earlier batches")
    return monitoring.WindowResult(
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
        monitoring.store(conn, window_result(first, "breach"))
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
        monitoring.store(conn, window_result(second))
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
        monitoring.store(conn, window_result([row]))
    assert fetch(quality_lake, "SELECT details FROM quality_results") == [
        ({"reference_value": None, "fences": [None, 1.0]},)
    ]


PROMOTION = {
    "model_name": "rakuten-prdtypecode",
    "version": "3",
    "run_id": "abc123",
    "alias": "champion",
    "promoted": True,
    "reason": "test weighted F1 0.81 beats champion v2's 0.79",
    "test_f1_weighted": 0.81,
    "cv_f1_weighted": 0.8,
    "best_family": "linear_svc",
    "dataset_id": "0123456789abcdef",
    "champion_version": "2",
    "champion_f1_weighted": 0.79,
    "comparison": "logged on the same test split",
    "exported": None,
}


def test_record_promotion_with_settings(quality_lake):
    monitoring.record_promotion(quality_lake, PROMOTION)
    (row,) = fetch(
        quality_lake,
        "SELECT model_name, version, run_id, alias, promoted,"
        " test_f1_weighted, cv_f1_weighted, best_family, dataset_id,"
        " reason, details->>'champion_version' FROM model_promotions",
    )
    assert row == (
        "rakuten-prdtypecode",
        "3",
        "abc123",
        "champion",
        True,
        0.81,
        0.8,
        "linear_svc",
        "0123456789abcdef",
        PROMOTION["reason"],
        "2",
    )


def test_recording_a_decision_again_updates_it_and_keeps_when_it_was_made(quality_lake):
    monitoring.record_promotion(
        quality_lake, {**PROMOTION, "decided_at": "2026-01-01T10:00:00+00:00"}
    )
    monitoring.record_promotion(
        quality_lake,
        {**PROMOTION, "reason": "already the champion", "decided_at": "2026-02-01T10:00:00+00:00"},
    )
    assert fetch(
        quality_lake, "SELECT reason, decided_at, updated_at > decided_at FROM model_promotions"
    ) == [("already the champion", datetime(2026, 1, 1, 10, tzinfo=UTC), True)]
    # A challenger decision for another version is another row.
    monitoring.record_promotion(
        quality_lake,
        {
            **PROMOTION,
            "version": "4",
            "alias": "challenger",
            "promoted": False,
            "cv_f1_weighted": None,
        },
    )
    assert fetch(
        quality_lake,
        "SELECT version, alias, promoted, cv_f1_weighted FROM model_promotions ORDER BY version",
    ) == [("3", "champion", True, 0.8), ("4", "challenger", False, None)]


def test_record_promotion_inside_the_callers_transaction(quality_lake):
    from rakuten_mlops.storage import connect

    with connect(quality_lake) as conn:
        monitoring.record_promotion(conn, PROMOTION)
        conn.rollback()  # the caller owns the transaction: nothing is committed behind it
    assert fetch(quality_lake, "SELECT count(*) FROM model_promotions") == [(0,)]
    with connect(quality_lake) as conn:
        monitoring.record_promotion(conn, PROMOTION)
        conn.commit()
    assert fetch(quality_lake, "SELECT count(*) FROM model_promotions") == [(1,)]


def test_record_promotion_refuses_incomplete_decisions(quality_lake):
    with pytest.raises(ValueError, match="run_id, alias"):
        monitoring.record_promotion(
            quality_lake, {"model_name": "m", "version": "1", "promoted": True}
        )


def test_record_promotion_fails_loudly_when_the_lake_is_down(quality_lake):
    # A real refused connection (nothing listens on port 1), not a mock.
    down = quality_lake.model_copy(update={"postgres_port": 1})
    with pytest.raises(psycopg.OperationalError):
        monitoring.record_promotion(down, PROMOTION)
