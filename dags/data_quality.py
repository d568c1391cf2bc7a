"""
### data_quality: do new batches and live traffic still look like the training data?

Daily (backfillable: the scheduled run for day D covers [D, D + 1 day)), compares a
**reference**, the training data of the current
champion (`MODEL_NAME@champion`; without one, the lake's labelled train-subset products,
and the run says so), with each **window**:

1. `migrate_schema`: apply pending lake migrations (`quality_windows`, `quality_results`).
2. `reference`: which reference this run uses; the champion's feature profile is
   computed once and cached in S3 (`quality/reference/`).
3. `interval`: which day this run checks (`quality.windows.dag_run_interval`, the rule
   the `data-quality` command follows too); `pending_batches`: load batches never
   checked that finished before its end, and those that finished in it.
4. `check_batch` (one mapped task per batch) and `check_inference` (the inference log of
   the interval): drift (PSI, Jensen-Shannon distance, KL divergence per feature) and
   quality (empty, duplicate, outlier ratios, class imbalance, emptiness/class
   association), upserted into `quality_results` by (window, feature, metric), a
   self-contained HTML report in S3 (`quality/reports/<window>.html`, logged).
5. `summarize`: every breach as a task **warning**.
6. `retrain_wanted` / `trigger_ml_pipeline`: triggers `ml_pipeline` on a breach, only
   when the setting `QUALITY_TRIGGER_RETRAIN` is true (default: false).

Thresholds: `config/quality.yaml`. Windows too small to tell never flag drift (their
rows say why). Re-running a date replaces its windows. A scheduled run for day D covers
[D, D+1) and starts after it; `airflow dags test data_quality D` (D a day) covers day D,
like `data-quality --date D`; a manual run without a day (the trigger button, `airflow
dags test data_quality`) covers today so far, like `data-quality`: the batch
`prepare_data` just loaded is checked. Same code as `python -m rakuten_mlops data-quality`.
The DAG is unpaused when the stack starts (`stack up`); the others stay manual.
Dashboards: Grafana "Data quality" and "Drift".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronDataIntervalTimetable, dag, task


@dag(
    dag_id="data_quality",
    # A data-interval timetable: run D covers [D, D + 1 day), also when triggered by hand.
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2025, 1, 1),
    catchup=False,  # backfill with `airflow backfill create --dag-id data_quality ...`
    max_active_runs=1,
    doc_md=__doc__,
    tags=["rakuten", "data-quality", "monitoring"],
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
    },
)
def data_quality():
    @task
    def migrate_schema() -> list[str]:
        """The lake's migrations and role grants: the only task that changes the schema."""
        from rakuten_mlops.schema import migrate_lake
        from rakuten_mlops.settings import get_settings

        result = migrate_lake(get_settings())
        print(f"migrations applied now: {result['applied'] or 'none (schema up to date)'}")
        return result["applied"]

    @task
    def reference() -> dict:
        from rakuten_mlops.quality.reference import prepare_reference, resolve_reference
        from rakuten_mlops.settings import get_settings

        settings = get_settings()
        found = resolve_reference(settings)
        rows = prepare_reference(settings, found)  # the champion's profile, cached once
        print(f"reference: {found.kind} {found.reference_id or ''} ({rows} rows): {found.note}")
        return found.as_dict()

    @task
    def interval(**context) -> list[str]:
        """Which day this run checks: the rule the `data-quality` command follows too."""
        from datetime import UTC, datetime

        from rakuten_mlops.quality.windows import dag_run_interval

        run = context["dag_run"]
        start, end = dag_run_interval(
            getattr(run.run_type, "value", str(run.run_type)), context.get("logical_date"),
            context.get("data_interval_start"), datetime.now(UTC),
        )
        print(f"checking [{start.isoformat()}, {end.isoformat()})")
        return [start.isoformat(), end.isoformat()]

    @task
    def pending_batches(checked: list[str]) -> list[int]:
        from datetime import datetime

        from rakuten_mlops.quality.windows import pending_batches as pending
        from rakuten_mlops.storage import connect

        start, end = (datetime.fromisoformat(t) for t in checked)
        with connect() as conn:
            batches = pending(conn, start, end)
        print(f"load batches to check: {batches or 'none'}")
        return batches

    @task
    def check_batch(batch_id: int, reference: dict, **context) -> dict:
        from rakuten_mlops.quality.job import check_window
        from rakuten_mlops.quality.results import Reference
        from rakuten_mlops.quality.windows import batch_window
        from rakuten_mlops.settings import get_settings
        from rakuten_mlops.storage import connect

        settings = get_settings()
        with connect(settings) as conn:
            window = batch_window(conn, batch_id)
        result = check_window(
            settings, window, Reference(**reference), dag_run_id=context["run_id"]
        )
        return result.summary()

    @task
    def check_inference(reference: dict, checked: list[str], **context) -> dict:
        from datetime import datetime

        from rakuten_mlops.quality.job import check_window
        from rakuten_mlops.quality.results import Reference
        from rakuten_mlops.quality.windows import inference_window
        from rakuten_mlops.settings import get_settings

        window = inference_window(*(datetime.fromisoformat(t) for t in checked))
        result = check_window(
            get_settings(), window, Reference(**reference), dag_run_id=context["run_id"]
        )
        return result.summary()

    @task(trigger_rule="none_failed")
    def summarize(**context) -> list[dict]:
        import logging

        from rakuten_mlops.quality.store import window_summaries
        from rakuten_mlops.settings import get_settings

        summaries = window_summaries(get_settings(), context["run_id"])
        for summary in summaries:
            if summary["breached_features"]:
                logging.getLogger("airflow.task").warning(
                    "data quality breach in %s: %s (report %s)",
                    summary["window_id"],
                    ", ".join(summary["breached_features"]),
                    summary["report"],
                )
            else:
                print(
                    f"{summary['window_id']}: {summary['status']} ({summary['rows']} rows),"
                    f" report {summary['report']}"
                )
        return summaries

    @task.short_circuit
    def retrain_wanted(summaries: list[dict]) -> bool:
        from rakuten_mlops.quality.job import should_retrain
        from rakuten_mlops.settings import get_settings

        enabled = get_settings().quality_trigger_retrain
        wanted = should_retrain(summaries, enabled)
        print(f"trigger ml_pipeline: {wanted} (QUALITY_TRIGGER_RETRAIN={enabled})")
        return wanted

    trigger = TriggerDagRunOperator(
        task_id="trigger_ml_pipeline",
        trigger_dag_id="ml_pipeline",
        trigger_run_id="data_quality__{{ run_id }}",
        conf={"reason": "data_quality breach", "data_quality_run_id": "{{ run_id }}"},
        skip_when_already_exists=True,
    )

    migrated = migrate_schema()
    ref = reference()
    checked_interval = interval()
    batches = pending_batches(checked_interval)
    migrated >> [ref, checked_interval]
    checked = check_batch.partial(reference=ref).expand(batch_id=batches)
    inference = check_inference(ref, checked_interval)
    summaries = summarize()
    [checked, inference] >> summaries
    retrain_wanted(summaries) >> trigger


data_quality()
