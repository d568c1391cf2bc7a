"""Fixtures of the data-quality tests (helpers in tests/support/quality.py).

`quality_lake`: settings for an empty lake of this folder's own (database and buckets
distinct from drift_run's, so the two never clear each other).
`drift_run` (session): the end-to-end scenario every dashboard query test needs too:

1. the shipped sample, loaded in two batches, the second shifted (tests/support/quality.py);
2. a dataset version of batch 1 (`preprocess.prepare_dataset`), a small real model
   trained on its train subset, registered under a test-only name as champion;
3. the prediction API serving it (a real uvicorn process writing this lake's
   inference_log) and a private Prometheus scraping it every second;
4. real predictions of unshifted products (batch 1's validation and test subsets);
5. one promotion decision in model_promotions, as the Model dashboard reads it;
6. `airflow dags test data_quality <today>`: it checks today so far.

The registered model, its run and its checksum are deleted at the end; the lake stays
for inspection.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.quality import (
    dags_test,
    delete_champion,
    ensure_database,
    quality_settings,
    reset,
    shifted_sample,
    train_champion,
)

BATCH_SIZE = 64


@pytest.fixture(scope="session")
def quality_database(stack, settings) -> str:
    return ensure_database(settings, f"{settings.postgres_db}_quality")


@pytest.fixture(scope="session")
def units_database(stack, settings) -> str:
    return ensure_database(settings, f"{settings.postgres_db}_quality_units")


@pytest.fixture()
def quality_lake(settings, units_database, tmp_path):
    """Settings of an empty lake of this folder's own (schema migrated); not drift_run's."""
    from rakuten_mlops import schema
    from rakuten_mlops.storage import connect

    lake = quality_settings(
        settings, units_database, tmp_path / "processed", suffix="quality-units"
    )
    reset(lake)
    with connect(lake) as conn:
        schema.migrate(conn)
    return lake


@dataclass
class DriftRun:
    settings: object
    result: object  # subprocess.CompletedProcess of `airflow dags test`
    model: dict
    dataset_id: str
    api: object
    prometheus: object
    interval: tuple[datetime, datetime]
    predictions: int

    @property
    def log(self) -> str:
        return self.result.stdout + self.result.stderr


def _predict_unshifted(api, lake, limit: int | None = None) -> int:
    """/predict/batch on batch 1's validation and test products; how many were classified."""
    from rakuten_mlops.storage import connect
    from tests.support.serving import CLIENT

    with connect(lake) as conn:
        rows = conn.execute(
            "SELECT p.designation, p.description FROM products p JOIN dataset_split s"
            " USING (productid) WHERE p.batch_id = 1 AND s.subset <> 'train'"
            " ORDER BY p.productid"
        ).fetchall()
    rows = rows[:limit] if limit else rows
    for start in range(0, len(rows), BATCH_SIZE):
        items = [{"designation": d, "description": e} for d, e in rows[start : start + BATCH_SIZE]]
        answer = api.post("/predict/batch", headers=CLIENT, json={"items": items, "top_k": 3})
        assert answer.status_code == 200, answer.text
    answer = api.post("/predict", headers=CLIENT, json={"designation": rows[0][0]})
    assert answer.status_code == 200, answer.text
    return len(rows) + 1


@pytest.fixture(scope="session")
def drift_run(stack, settings, quality_database, tmp_path_factory):
    import shutil as _shutil

    from rakuten_mlops import schema
    from rakuten_mlops.ingest import run_ingest
    from rakuten_mlops.localstack.services import prometheus_config
    from rakuten_mlops.ml.dataset import prepare_dataset
    from rakuten_mlops.ml.promotion import record_promotion
    from rakuten_mlops.storage import connect
    from tests.support.serving import ApiServer, PrivatePrometheus, wait_for

    folder = tmp_path_factory.mktemp("drift_run")
    name = f"test-quality-{uuid.uuid4().hex[:8]}"
    lake = quality_settings(
        settings,
        quality_database,
        folder / "processed",
        raw_data_dir=shifted_sample(folder / "raw_data"),
        model_name=name,
    )
    reset(lake)
    with connect(lake) as conn:
        schema.migrate(conn)  # as stack start-up does: no stage migrates on its own

    run_ingest(lake, "quality-batch-1", "0.5", bar=False)
    dataset = prepare_dataset(lake, upload=True)
    model = train_champion(lake, dataset, name)
    run_ingest(lake, "quality-batch-2", "0.5", bar=False)

    api = ApiServer(
        folder / "api.log",
        POSTGRES_DB=lake.postgres_db,
        MODEL_NAME=name,
        MODELS_DIR=str(folder / "models"),
        API_LOG_FLUSH_SECONDS="0.2",
    )
    prometheus = None
    try:
        api.start()
        if _shutil.which("prometheus") or Path("/usr/bin/prometheus").exists():
            port = int(api.base_url.rsplit(":", 1)[1])
            config = prometheus_config(settings.model_copy(update={"api_port": port}))
            config["global"].update(scrape_interval="1s", evaluation_interval="1s")
            config["scrape_configs"] = [
                j for j in config["scrape_configs"] if j["job_name"] == "api"
            ]
            prometheus = PrivatePrometheus(
                Path(tempfile.mkdtemp(prefix="rakuten-quality-prom-")), config
            ).start()
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        tomorrow = today + timedelta(days=1)
        predictions = _predict_unshifted(api, lake)

        def logged() -> bool:
            with connect(lake) as conn:
                return (
                    conn.execute("SELECT count(*) FROM inference_log").fetchone()[0] >= predictions
                )

        wait_for(logged, 30, what="inference log rows written")
        record_promotion(
            lake,
            {
                "model_name": name,
                "version": "1",
                "run_id": model["run_id"],
                "alias": "champion",
                "promoted": True,
                "reason": "first registered model: promoted",
                "test_f1_weighted": 0.5,
                "cv_f1_weighted": 0.48,
                "best_family": "sgd_log_loss",
                "dataset_id": dataset.dataset_id,
                "champion_version": None,
            },
        )
        result = dags_test(lake, today.strftime("%Y-%m-%d"))  # DAG paused by the session
        yield DriftRun(
            lake, result, model, dataset.dataset_id, api, prometheus, (today, tomorrow), predictions
        )
    finally:
        api.stop()
        if prometheus is not None:
            prometheus.stop()
            shutil.rmtree(prometheus.root, ignore_errors=True)
        if "model" in locals():
            delete_champion(lake, model)
