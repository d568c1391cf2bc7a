"""DAGs kept paused while the test session runs them with `airflow dags test`.

`dags test` puts its task instances in the shared metadata database as SCHEDULED and runs
them itself; the stack's scheduler takes those of an *unpaused* DAG too and runs them with
the stack's settings (the user's lake), not the test's. `make up` unpauses data_quality
(rakuten_mlops.localstack.schedules), so the test session pauses it once for all workers
(tests/support/workers.py) and restores the state at its end.
"""

from __future__ import annotations


def _airflow_db(settings):
    from rakuten_mlops.storage import connect

    return connect(settings, database=settings.airflow_db, autocommit=True)


# What a running stack may schedule (rakuten_mlops.localstack.schedules).
SCHEDULED_DAGS = ("data_quality", "ml_pipeline")


def pause(settings, *dag_ids: str) -> dict[str, bool]:
    """Pause these DAGs; their previous `is_paused`, to give to `restore`."""
    with _airflow_db(settings) as conn:
        was = dict(conn.execute(
            "SELECT dag_id, is_paused FROM dag WHERE dag_id = ANY(%s)", (list(dag_ids),)))
        conn.execute("UPDATE dag SET is_paused = true WHERE dag_id = ANY(%s)", (list(dag_ids),))
    return was


def restore(settings, was: dict[str, bool]) -> None:
    with _airflow_db(settings) as conn:
        for dag_id, state in was.items():
            conn.execute("UPDATE dag SET is_paused = %s WHERE dag_id = %s", (state, dag_id))

