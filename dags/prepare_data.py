"""
### prepare_data: the challenge's raw files into the data lake

Loads the next slice of `raw_data/` (the challenge layout: `X_train_update.csv`,
`Y_train_CVw08PX.csv`, `X_test_update.csv`, `category_names.csv`, `images/`) as one
**load batch**, identified by this DAG run's `run_id`:

1. `migrate_schema`: apply pending lake migrations (`rakuten_mlops.schema`).
2. `load_text`: in one transaction, the slice's products and labels, with every refused
   record in `rejects`.
3. `assign_split`: the train/validation/test subset (`dataset_split`) of the new
   labelled products: stratified, seeded, never reassigned.
4. `load_images`: each new product's image checked (JPEG) and stored once in S3 under
   `image_<split>/<productid>/<imageid>.jpg`, catalogued in `images`; one mapped task
   per shard (`plan_image_shards`: product-id ranges of at most `INGEST_IMAGE_SHARD_SIZE`
   products), each retryable on its own.
5. `finalize`: counts from the lake, image limits, the summary in `load_batches`.

**Params**: `slice`: a fraction of the source per run (`0.2`, `20%`) or `all`; empty uses
the `INGEST_SLICE` setting. Each run takes records no earlier batch took.

Every task is idempotent: a retry or a re-run of the same DAG run finishes what a crash
interrupted, or changes nothing. Tasks pass only the batch id between them.
Same code as `python -m rakuten_mlops ingest`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    dag_id="prepare_data",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["rakuten", "data-lake", "ingest"],
    default_args={
        "owner": "data-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
    },
    params={
        "slice": Param(
            "",
            type="string",
            title="Slice",
            description="Fraction of the source rows this run loads (0.2, 20%) or 'all'; "
            "empty: the INGEST_SLICE setting.",
        ),
    },
)
def prepare_data():
    @task
    def migrate_schema() -> list[str]:
        """The lake's migrations and role grants: the only task that changes the schema."""
        from rakuten_mlops.schema import migrate_lake
        from rakuten_mlops.settings import get_settings

        result = migrate_lake(get_settings())
        print(f"migrations applied now: {result['applied'] or 'none (schema up to date)'}")
        return result["applied"]

    @task
    def load_text(**context) -> int:
        from rakuten_mlops.ingest import load_text as load
        from rakuten_mlops.settings import get_settings

        result = load(get_settings(), context["run_id"], context["params"].get("slice") or None)
        return result.batch_id

    @task
    def assign_split(batch_id: int) -> dict:
        from rakuten_mlops.ingest import assign_split as assign
        from rakuten_mlops.settings import get_settings

        return assign(get_settings(), batch_id)

    @task
    def plan_image_shards(batch_id: int) -> list[list[int]]:
        from rakuten_mlops.ingest import plan_image_shards as plan
        from rakuten_mlops.settings import get_settings

        settings = get_settings()
        return plan(settings, batch_id, settings.ingest_image_shard_size)

    @task
    def load_images(product_range: list[int], batch_id: int) -> dict:
        from rakuten_mlops.ingest import load_images as load
        from rakuten_mlops.settings import get_settings

        return load(get_settings(), batch_id, bar=False, product_range=product_range)

    # A batch with no new product maps no image shard (skipped): finalize records it still.
    @task(trigger_rule="none_failed")
    def finalize(batch_id: int) -> dict:
        from rakuten_mlops.ingest import finalize as summarize
        from rakuten_mlops.settings import get_settings

        return summarize(get_settings(), batch_id)

    batch_id = load_text()
    migrate_schema() >> batch_id
    images = load_images.partial(batch_id=batch_id).expand(
        product_range=plan_image_shards(batch_id))
    [assign_split(batch_id), images] >> finalize(batch_id)


prepare_data()
