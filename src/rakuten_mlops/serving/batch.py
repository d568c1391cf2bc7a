"""Offline predictions for the lake's products, written to PostgreSQL with the model version.

`predict_lake()` (CLI: `rakuten-mlops predict-batch`; callable from an Airflow task)
classifies every product of one challenge file (by default the unlabelled X_test
products) with the champion, in chunks, one call into the model per chunk, and upserts
`batch_predictions` keyed by (productid, model name, model version) in one transaction
with its `batch_prediction_runs` row: re-running with the same model version replaces
its rows instead of duplicating them, and a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime

from rakuten_mlops.serving.model import (
    LoadedModel,
    ModelLoadError,
    ModelManager,
    configure_mlflow_client,
)
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.serving.batch")

TOP_K = 3
UPSERT = """
INSERT INTO batch_predictions
    (productid, model_name, model_version, prdtypecode, confidence, top_k, run_id, predicted_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (productid, model_name, model_version) DO UPDATE SET
    prdtypecode = EXCLUDED.prdtypecode, confidence = EXCLUDED.confidence,
    top_k = EXCLUDED.top_k, run_id = EXCLUDED.run_id, predicted_at = EXCLUDED.predicted_at
"""


def champion(settings: Settings) -> LoadedModel:
    """The model the API would serve now (registry champion, else the export)."""
    configure_mlflow_client(settings)
    manager = ModelManager(settings)
    manager.refresh()
    if manager.current is None:
        raise ModelLoadError(f"no model to predict with: {manager.detail}")
    return manager.current


# products.source_split: which challenge file a product came from.
SOURCE_SPLITS = ("test", "train")


class UnknownSplitError(ValueError):
    """A source split the lake does not have (a typo would otherwise predict 0 rows)."""


def predict_lake(
    settings: Settings,
    source_split: str = "test",
    limit: int | None = None,
    chunk_size: int = 1000,
    run_id: str | None = None,
    model: LoadedModel | None = None,
) -> dict:
    """Classify the lake's `source_split` products; return the run's summary."""
    if source_split not in SOURCE_SPLITS:
        raise UnknownSplitError(
            f"unknown --source-split {source_split!r}: expected one of {', '.join(SOURCE_SPLITS)}"
        )
    model = model or champion(settings)
    started = time.perf_counter()
    now = datetime.now(UTC)
    run_id = run_id or f"{model.name}-v{model.version}-{now:%Y%m%dT%H%M%S%fZ}"
    with connect(settings) as conn:
        query = (
            "SELECT productid, designation, description FROM products"
            " WHERE source_split = %s ORDER BY productid"
        )
        params: tuple = (source_split,)
        if limit is not None:
            query += " LIMIT %s"
            params += (limit,)
        products = conn.execute(query, params).fetchall()
        with conn.transaction():
            conn.execute(
                "INSERT INTO batch_prediction_runs"
                " (run_id, model_name, model_version, model_source, source_split, started_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (run_id, model.name, model.version, model.source, source_split, now),
            )
            with conn.cursor() as cur:
                for start in range(0, len(products), chunk_size):
                    chunk = products[start : start + chunk_size]
                    prediction = model.predict(
                        [row[1] for row in chunk], [row[2] for row in chunk], TOP_K
                    )
                    cur.executemany(
                        UPSERT,
                        [
                            (
                                productid,
                                model.name,
                                model.version,
                                top[0][0],
                                min(max(top[0][1], 0.0), 1.0),
                                json.dumps(
                                    [{"prdtypecode": c, "probability": round(p, 6)} for c, p in top]
                                ),
                                run_id,
                                now,
                            )
                            for (productid, _, _), top in zip(chunk, prediction.top, strict=True)
                        ],
                    )
            seconds = time.perf_counter() - started
            conn.execute(
                "UPDATE batch_prediction_runs SET finished_at = now(), rows_predicted = %s,"
                " seconds = %s WHERE run_id = %s",
                (len(products), seconds, run_id),
            )
    summary = {
        "run_id": run_id,
        "model_name": model.name,
        "model_version": model.version,
        "model_source": model.source,
        "source_split": source_split,
        "rows_predicted": len(products),
        "seconds": round(seconds, 3),
    }
    log.info("batch predictions: %s", summary)
    return summary
