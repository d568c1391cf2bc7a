"""
### batch_predictions: the champion's predictions for the lake's products, in shards

1. `start_run`: the champion's name and version (MLflow registry), and the run's row
   in `batch_prediction_runs`, keyed by this DAG run's `run_id`.
2. `plan_shards`: product-id ranges of at most `shard_size` products of the chosen split.
3. `predict_shard`: one mapped task per range (dynamic task mapping): classifies its
   products and upserts one row per product and model version, committing chunk by
   chunk. Retryable on its own; a re-run rewrites nothing that is already right.
4. `summarize`: the products predicted and their counts per class, on the run's row.

**Params**: `source_split`: `test` (the unlabelled products, default) or `train`;
`shard_size`: products per mapped task (empty: the `BATCH_SHARD_SIZE` setting).
With the CeleryExecutor the shards spread over the workers. Same code as
`python -m rakuten_mlops predict-batch` (rakuten_mlops.serving.batch).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    dag_id="batch_predictions",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["rakuten", "serving", "batch"],
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
    },
    params={
        "source_split": Param("test", type="string", enum=["test", "train"],
                              title="Source split",
                              description="Which challenge file's products to classify."),
        "shard_size": Param(None, type=["null", "integer"], minimum=1, title="Shard size",
                            description="Products per mapped task; empty: BATCH_SHARD_SIZE."),
    },
)
def batch_predictions():
    @task
    def start_run(**context) -> dict:
        """The champion now, fixed for the whole run (every shard checks it)."""
        from rakuten_mlops.schema import migrate_lake
        from rakuten_mlops.serving.batch import start_run as start
        from rakuten_mlops.serving.model import champion_version, configure_mlflow_client
        from rakuten_mlops.settings import get_settings

        settings = get_settings()
        migrate_lake(settings)
        configure_mlflow_client(settings)
        version = champion_version(settings)
        model = {"name": version.name, "version": version.version}
        return start(settings, model, context["params"]["source_split"], context["run_id"])

    @task
    def plan_shards(run: dict, **context) -> list[list[int]]:
        from rakuten_mlops.serving.batch import shard_ranges
        from rakuten_mlops.settings import get_settings

        settings = get_settings()
        size = context["params"].get("shard_size") or settings.batch_shard_size
        return shard_ranges(settings, run["source_split"], int(size))

    @task
    def predict_shard(product_range: list[int], run: dict) -> int:
        from rakuten_mlops.serving.batch import predict_shard as predict
        from rakuten_mlops.settings import get_settings

        settings = get_settings()
        return predict(settings, run, product_range, chunk_size=settings.batch_chunk_size)

    @task
    def summarize(run: dict, shard_counts: list[int]) -> dict:
        from rakuten_mlops.serving.batch import finish_run
        from rakuten_mlops.settings import get_settings

        return finish_run(get_settings(), run, len(list(shard_counts)))

    run = start_run()
    shards = predict_shard.partial(run=run).expand(product_range=plan_shards(run))
    summarize(run, shards)


batch_predictions()
