"""Which DAGs run on their own once local mode's Airflow is up.

`data_quality` is unpaused, so its daily schedule runs (each day checked after it
ends). `ml_pipeline` is unpaused only when QUALITY_TRIGGER_RETRAIN is true: it has no
schedule, so it then runs only when data_quality triggers it on a breach (a paused DAG
would keep that run queued forever). Nothing is ever paused here: a DAG the user
unpaused stays so. STACK_SCHEDULE_DAGS=false leaves every DAG as it is (the test
session's stack: scheduled runs would write to the user's lake while it is compared).
"""

from __future__ import annotations

import time

from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

SCHEDULED_DAG = "data_quality"
RETRAIN_DAG = "ml_pipeline"
# The dag-processor's first parse of the dags folder, on a fresh stack.
PARSE_TIMEOUT = 90.0


def dags_to_unpause(settings: Settings) -> list[str]:
    if not settings.stack_schedule_dags:
        return []
    return [SCHEDULED_DAG] + ([RETRAIN_DAG] if settings.quality_trigger_retrain else [])


def unpause_dags(settings: Settings, timeout: float = PARSE_TIMEOUT, report=print) -> list[str]:
    """Unpause `dags_to_unpause` once the dag-processor has recorded them; returns those
    unpaused now. Airflow's metadata database is written directly: the dag table's
    is_paused is what `airflow dags unpause` sets, without a 10 s CLI start per DAG."""
    wanted = dags_to_unpause(settings)
    deadline = time.monotonic() + timeout
    while wanted:
        with connect(settings, database=settings.airflow_db, autocommit=True) as conn:
            found = {r[0] for r in conn.execute(
                "SELECT dag_id FROM dag WHERE dag_id = ANY(%s)", (wanted,))}
            if found == set(wanted) or time.monotonic() > deadline:
                changed = [r[0] for r in conn.execute(
                    "UPDATE dag SET is_paused = false WHERE dag_id = ANY(%s) AND is_paused"
                    " RETURNING dag_id", (wanted,))]
                if missing := sorted(set(wanted) - found):
                    report(f"airflow: {', '.join(missing)} not parsed yet: left paused")
                return changed
        time.sleep(1.0)
    return []
