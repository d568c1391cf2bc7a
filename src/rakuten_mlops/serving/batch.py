"""Offline predictions for the lake's products, written to PostgreSQL with the model version.

A run classifies every product of one challenge file (by default the unlabelled X_test
products) with the champion, in **shards**: product-id ranges of at most `shard_size`
products (`shard_ranges`). Each shard (`predict_shard`) reads its products, calls the
model once per chunk and upserts `batch_predictions` keyed by (productid, model name,
model version), committing chunk by chunk. A shard is idempotent: a row whose prediction
is unchanged is not rewritten (it keeps the run that first wrote it), so re-running a
shard, or a whole run, with the same model version changes nothing, and a shard killed
midway is finished by its re-run without duplicates or gaps. `finish_run` records, once
every shard is done, the products predicted and the counts per class.

The `batch_predictions` DAG runs `start_run`, then one mapped task per shard, then
`finish_run`; `predict_lake()` (CLI: `rakuten-mlops predict-batch`) runs the same steps
in one process, for all shards or one.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from datetime import UTC, datetime

from rakuten_mlops.ml.image_stage import describe_images
from rakuten_mlops.serving.images import lake_vectors
from rakuten_mlops.serving.model import (
    LoadedModel,
    ModelLoadError,
    ModelManager,
    configure_mlflow_client,
)
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect, copy_rows

log = logging.getLogger("rakuten_mlops.serving.batch")

TOP_K = 3
# A chunk's predictions are copied into a session-temporary table and merged with one
# statement: against one INSERT per row this halves the CPU the worker and PostgreSQL
# spend writing (57k predictions: 2.2 s instead of 3.6-3.9 s, both sides), which workers
# sharing one database would otherwise share.
CHUNK_TABLE = """
CREATE TEMP TABLE IF NOT EXISTS batch_predictions_chunk (
    productid bigint, prdtypecode integer, confidence double precision, top_k jsonb
) ON COMMIT DELETE ROWS
"""
COPY_CHUNK = "COPY batch_predictions_chunk (productid, prdtypecode, confidence, top_k) FROM STDIN"
# An unchanged prediction is left alone (`WHERE ... IS DISTINCT FROM`): a re-run with
# the same model version writes nothing, and the row keeps the run that produced it.
MERGE_CHUNK = """
INSERT INTO batch_predictions
    (productid, model_name, model_version, prdtypecode, confidence, top_k, run_id, predicted_at)
SELECT productid, %(model_name)s, %(model_version)s, prdtypecode, confidence, top_k,
    %(run_id)s, %(predicted_at)s
FROM batch_predictions_chunk
ON CONFLICT (productid, model_name, model_version) DO UPDATE SET
    prdtypecode = EXCLUDED.prdtypecode, confidence = EXCLUDED.confidence,
    top_k = EXCLUDED.top_k, run_id = EXCLUDED.run_id, predicted_at = EXCLUDED.predicted_at
WHERE (batch_predictions.prdtypecode, batch_predictions.confidence, batch_predictions.top_k)
    IS DISTINCT FROM (EXCLUDED.prdtypecode, EXCLUDED.confidence, EXCLUDED.top_k)
"""
# Product-id ranges of at most %(size)s products each, in id order.
SHARD_RANGES = """
SELECT min(productid), max(productid) FROM (
    SELECT productid, (row_number() OVER (ORDER BY productid) - 1) / %(size)s AS shard
    FROM (SELECT productid FROM products WHERE source_split = %(split)s
          ORDER BY productid LIMIT %(limit)s) AS chosen
) AS numbered GROUP BY shard ORDER BY shard
"""

# products.source_split: which challenge file a product came from.
SOURCE_SPLITS = ("test", "train")


class UnknownSplitError(ValueError):
    """A source split the lake does not have (a typo would otherwise predict 0 rows)."""


class ChampionChangedError(ModelLoadError):
    """The champion moved after the run was planned: its shards would mix versions."""


# The champion a long-lived worker process keeps loaded between shard tasks
# (keep_champion_loaded): a task process forked from it starts with the model in memory
# instead of downloading, verifying and unpickling it again (~1.5 s a shard).
_resident: ModelManager | None = None
_resident_checked = 0.0
# How long the registry's answer stands: a shard whose run names another version (the
# champion moved in between) loads that version itself, so this only delays the switch.
RESIDENT_RECHECK_SECONDS = 15.0


def keep_champion_loaded(settings: Settings) -> LoadedModel | None:
    """Load the champion in this process, or keep it if the registry still names it
    (asked at most every RESIDENT_RECHECK_SECONDS: a loaded MLflow answers slowly)."""
    global _resident, _resident_checked
    if _resident is None or _resident.settings != settings:
        configure_mlflow_client(settings)
        _resident, _resident_checked = ModelManager(settings), 0.0
    if _resident.current is None or time.monotonic() - _resident_checked > RESIDENT_RECHECK_SECONDS:
        if _resident.refresh().changed:
            # Out of the collector's sight: a task process forked from this one would
            # otherwise write to (and so copy) every page of the model at its first
            # collection (~1 s a shard).
            gc.freeze()
        _resident_checked = time.monotonic()
    return _resident.current


def resident_model(name: str, version: str) -> LoadedModel | None:
    """The model this process inherited or kept loaded, if it is that version."""
    current = _resident.current if _resident is not None else None
    if current is not None and (current.name, current.version) == (name, version):
        return current
    return None


def champion(settings: Settings) -> LoadedModel:
    """The model the API would serve now (registry champion, else the export)."""
    configure_mlflow_client(settings)
    manager = ModelManager(settings)
    manager.refresh()
    if manager.current is None:
        raise ModelLoadError(f"no model to predict with: {manager.detail}")
    return manager.current


def check_split(source_split: str) -> None:
    if source_split not in SOURCE_SPLITS:
        raise UnknownSplitError(
            f"unknown --source-split {source_split!r}: expected one of {', '.join(SOURCE_SPLITS)}"
        )


def start_run(
    settings: Settings, model: LoadedModel | dict, source_split: str, run_id: str | None = None
) -> dict:
    """The run's row in `batch_prediction_runs` (kept if it exists: a retried or re-run
    planning step); returns what every shard needs to know about the run."""
    check_split(source_split)
    name, version, source = _identity(model)
    now = datetime.now(UTC)
    run_id = run_id or f"{name}-v{version}-{now:%Y%m%dT%H%M%S%fZ}"
    with connect(settings) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO batch_prediction_runs"
            " (run_id, model_name, model_version, model_source, source_split, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
            (run_id, name, version, source, source_split, now),
        )
    return {"run_id": run_id, "model_name": name, "model_version": version,
            "model_source": source, "source_split": source_split}


def _identity(model: LoadedModel | dict) -> tuple[str, str, str]:
    if isinstance(model, LoadedModel):
        return model.name, model.version, model.source
    return model["name"], str(model["version"]), model.get("source", "registry")


def shard_ranges(
    settings: Settings, source_split: str, shard_size: int, limit: int | None = None
) -> list[list[int]]:
    """[first, last] product ids (inclusive) of each shard of the split's products."""
    check_split(source_split)
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    with connect(settings) as conn:
        rows = conn.execute(
            SHARD_RANGES, {"size": shard_size, "split": source_split, "limit": limit}
        ).fetchall()
    return [[int(first), int(last)] for first, last in rows]


def predict_shard(
    settings: Settings,
    run: dict,
    product_range: list[int],
    model: LoadedModel | None = None,
    chunk_size: int = 1000,
    limit: int | None = None,
) -> int:
    """Classify the run's products whose ids are in `product_range` (inclusive); commit
    chunk by chunk. Returns how many products the shard holds."""
    model = model or resident_model(run["model_name"], run["model_version"]) or champion(settings)
    if (model.name, model.version) != (run["model_name"], run["model_version"]):
        raise ChampionChangedError(
            f"run {run['run_id']} predicts with {run['model_name']} v{run['model_version']}, "
            f"but the champion is now v{model.version}: start a new run"
        )
    first, last = product_range
    query = (
        "SELECT productid, designation, description FROM products"
        " WHERE source_split = %s AND productid BETWEEN %s AND %s ORDER BY productid LIMIT %s"
    )
    # Autocommit: each chunk's `transaction()` is a real commit, not a savepoint.
    with connect(settings, autocommit=True) as conn:
        products = conn.execute(query, (run["source_split"], first, last, limit)).fetchall()
        vectors = shard_images(settings, run, model, conn, [row[0] for row in products])
        conn.execute(CHUNK_TABLE)
        for start in range(0, len(products), chunk_size):
            chunk = products[start : start + chunk_size]
            images = [vectors.get(row[0]) for row in chunk] if vectors else None
            prediction = model.predict([row[1] for row in chunk], [row[2] for row in chunk], TOP_K,
                                       images)
            with conn.transaction(), conn.cursor() as cur:
                copy_rows(cur, COPY_CHUNK, (
                    prediction_row(productid, top)
                    for (productid, _, _), top in zip(chunk, prediction.top, strict=True)))
                cur.execute(MERGE_CHUNK, {
                    "model_name": model.name, "model_version": model.version,
                    "run_id": run["run_id"], "predicted_at": datetime.now(UTC)})
    log.info("shard %s..%s of %s: %d products", first, last, run["run_id"], len(products))
    return len(products)


def shard_images(settings: Settings, run: dict, model: LoadedModel, conn,
                 productids: list[int]) -> dict:
    """For a model that reads images: the shard's image vectors from the lake's cache,
    after describing the images no stage has described yet (each read from S3 once)."""
    if not (model.reads_images and productids):
        return {}
    counts = describe_images(settings, f"batch-{run['run_id']}-{productids[0]}", productids)
    log.info("shard from %s: image vectors %s", productids[0], counts)
    return lake_vectors(conn, productids)


def prediction_row(productid: int, top: list[tuple[int, float]]) -> tuple:
    """(productid, predicted class, its confidence, the top-k as JSON) of one product."""
    return (
        productid,
        top[0][0],
        min(max(top[0][1], 0.0), 1.0),
        json.dumps([{"prdtypecode": c, "probability": round(p, 6)} for c, p in top]),
    )


def finish_run(settings: Settings, run: dict, shards: int) -> dict:
    """Once every shard is done: the products of the split that have a prediction of this
    model version, and their counts per predicted class, recorded on the run."""
    with connect(settings) as conn, conn.transaction():
        counts = dict(conn.execute(
            "SELECT b.prdtypecode, count(*) FROM batch_predictions b"
            " JOIN products p USING (productid)"
            " WHERE p.source_split = %s AND b.model_name = %s AND b.model_version = %s"
            " GROUP BY b.prdtypecode ORDER BY b.prdtypecode",
            (run["source_split"], run["model_name"], run["model_version"]),
        ).fetchall())
        seconds = conn.execute(
            "UPDATE batch_prediction_runs SET finished_at = now(), rows_predicted = %s,"
            " shards = %s, class_counts = %s,"
            " seconds = extract(epoch FROM now() - started_at)"
            " WHERE run_id = %s RETURNING seconds",
            (sum(counts.values()), shards, json.dumps({str(k): v for k, v in counts.items()}),
             run["run_id"]),
        ).fetchone()[0]
    summary = {**run, "rows_predicted": sum(counts.values()), "shards": shards,
               "class_counts": {str(k): v for k, v in counts.items()},
               "seconds": round(float(seconds), 3)}
    log.info("batch predictions: %s", {k: v for k, v in summary.items() if k != "class_counts"})
    return summary


def predict_lake(
    settings: Settings,
    source_split: str = "test",
    limit: int | None = None,
    chunk_size: int = 1000,
    run_id: str | None = None,
    model: LoadedModel | None = None,
    shard_size: int | None = None,
    product_range: list[int] | None = None,
) -> dict:
    """A whole run in this process (or one shard of it: `product_range`); its summary."""
    check_split(source_split)
    model = model or champion(settings)
    started = time.perf_counter()
    run = start_run(settings, model, source_split, run_id)
    ranges = [product_range] if product_range else shard_ranges(
        settings, source_split, shard_size or 10**9, limit
    )
    for shard in ranges:
        predict_shard(settings, run, shard, model, chunk_size, limit)
    summary = finish_run(settings, run, len(ranges))
    log.info("predict-batch: %d shards in %.1f s", len(ranges), time.perf_counter() - started)
    return summary
