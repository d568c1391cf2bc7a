"""prepare_data: the challenge's raw files into the data lake (PostgreSQL text, S3 images).

A load runs as a *batch*, identified by its run_id (the Airflow run, or the CLI's
--run-id), in four idempotent phases that the DAG runs as tasks and the CLI runs in a row:

1. `load_text`    the next slice of source records: products, labels and every reject,
                  in one transaction (`text.py`, planned by `plan.py`);
2. `assign_split` the train/validation/test subset of the new labelled products
                  (`rakuten_mlops.ingest.split`);
3. `load_images`  each new product's image checked and stored once in S3 (`images.py`),
                  in shards of product-id ranges when the batch is large (`shards.py`);
4. `finalize`     counts from the lake, image limits, the batch summary (`batches.py`).

Re-running a run_id finishes what a crash interrupted, or changes nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from rakuten_mlops.ingest.batches import batch_summary, finalize, lake_summary
from rakuten_mlops.ingest.catalogue import assign_split, load_text, normalize_slice
from rakuten_mlops.ingest.images import load_images
from rakuten_mlops.ingest.shards import plan_image_shards
from rakuten_mlops.ingest.sources import IngestError
from rakuten_mlops.settings import Settings

log = logging.getLogger("rakuten_mlops.ingest")

__all__ = [
    "IngestError",
    "assign_split",
    "batch_summary",
    "default_run_id",
    "finalize",
    "lake_summary",
    "load_images",
    "load_text",
    "normalize_slice",
    "plan_image_shards",
    "run_ingest",
]


def default_run_id() -> str:
    return "cli__" + datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_ingest(settings: Settings, run_id: str, slice_spec: str | None = None,
               bar: bool | None = None) -> dict:
    """Every phase of batch `run_id`; its summary. IngestError says why it failed."""
    text = load_text(settings, run_id, slice_spec)
    assign_split(settings, text.batch_id)
    for shard in plan_image_shards(settings, text.batch_id, settings.ingest_image_shard_size):
        load_images(settings, text.batch_id, bar=bar, product_range=shard)
    return finalize(settings, text.batch_id)
