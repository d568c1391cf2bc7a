"""One rule decides which day a data-quality run checks: the DAG's runs and the CLI's
`--date` agree (rakuten_mlops.quality.windows.day_interval)."""

from __future__ import annotations

from datetime import UTC, datetime

from rakuten_mlops.quality.windows import dag_run_interval, interval_of

NOW = datetime(2025, 3, 1, 14, 32, tzinfo=UTC)
TODAY_SO_FAR = (datetime(2025, 3, 1, tzinfo=UTC), NOW)
FEB_3 = (datetime(2025, 2, 3, tzinfo=UTC), datetime(2025, 2, 4, tzinfo=UTC))


def test_a_run_without_a_day_checks_today_so_far_in_the_dag_and_the_cli():
    # `airflow dags test data_quality` and the trigger button: logical date = trigger time.
    assert dag_run_interval("manual", NOW, datetime(2025, 2, 28, tzinfo=UTC), NOW) == TODAY_SO_FAR
    assert interval_of(None, NOW) == TODAY_SO_FAR


def test_a_named_day_is_that_day_in_the_dag_and_the_cli():
    feb_3 = datetime(2025, 2, 3, tzinfo=UTC)
    assert dag_run_interval("manual", feb_3, datetime(2025, 2, 2, tzinfo=UTC), NOW) == FEB_3
    assert dag_run_interval("scheduled", feb_3, feb_3, NOW) == FEB_3
    assert interval_of("2025-02-03", NOW) == FEB_3
    # Today named: up to now, not into the future.
    assert interval_of("2025-03-01", NOW) == TODAY_SO_FAR
    assert dag_run_interval("manual", TODAY_SO_FAR[0], None, NOW) == TODAY_SO_FAR
