"""The inference log fills, off the request path, and survives database outages:
killed connections (the shared test database) and a stopped server (a private
PostgreSQL), with MLflow unreachable so the API also runs on its fallback export."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import joblib
import psycopg
import pytest

from rakuten_mlops.serving.inference_log import APPLICATION_NAME
from tests.support.serving import ADMIN, CLIENT, ApiServer, PrivatePostgres, free_port, wait_for

pytestmark = pytest.mark.stack


def logged(conn_factory, request_ids: list[str]) -> dict[str, list[dict]]:
    from psycopg.rows import dict_row

    with conn_factory() as conn:
        conn.row_factory = dict_row
        rows = conn.execute(
            "SELECT * FROM inference_log WHERE request_id = ANY(%s::uuid[]) ORDER BY item",
            (request_ids,),
        ).fetchall()
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(str(row["request_id"]), []).append(row)
    return found


def test_every_prediction_is_logged_with_its_features(api, registered, lake):
    from rakuten_mlops.storage import connect

    designation = "Lot de 3 livres de cuisine française et du monde"
    description = "<p>Très bon état &amp; livraison rapide</p>"
    single = api.post(
        "/predict", json={"designation": designation, "description": description}, headers=CLIENT
    ).json()
    batch = api.post(
        "/predict/batch",
        json={
            "items": [
                {"designation": "Kinderspielzeug aus Holz für das Kinderzimmer"},
                {"designation": "Socks for the garden with the best pool"},
            ]
        },
        headers=ADMIN,
    ).json()
    ids = [single["request_id"], batch["request_id"]]
    found = wait_for(lambda: (f := logged(lambda: connect(lake), ids)) and len(f) == 2 and f, 10)
    (row,) = found[single["request_id"]]
    assert row["endpoint"] == "predict" and row["item"] == 0 and row["client_role"] == "client"
    assert (row["model_name"], row["model_version"], row["model_source"]) == (
        registered["name"],
        "1",
        "registry",
    )
    top = single["predictions"]
    assert row["prdtypecode"] == top[0]["prdtypecode"]
    assert row["confidence"] == pytest.approx(top[0]["probability"], abs=1e-6)
    assert [p["prdtypecode"] for p in row["top_k"]] == [p["prdtypecode"] for p in top]
    assert (row["designation_chars"], row["description_chars"]) == (48, 43)
    assert (row["designation_words"], row["description_words"]) == (10, 6)
    assert row["has_html"] is True
    assert row["language"] == "fr" and len(row["text_sha256"]) == 64
    assert row["batch_size"] == 1 and 0 < row["latency_ms"] < 5000
    # The text itself is not stored, nor the key.
    values = json.dumps({k: str(v) for k, v in row.items()})
    assert "cuisine" not in values and "test-client-key" not in values
    batch_rows = found[batch["request_id"]]
    assert [r["item"] for r in batch_rows] == [0, 1]
    assert [r["language"] for r in batch_rows] == ["de", "en"]
    assert {r["endpoint"] for r in batch_rows} == {"predict_batch"}
    assert {r["client_role"] for r in batch_rows} == {"admin"}
    assert {r["batch_size"] for r in batch_rows} == {2}
    # Five rows at least, whatever ran before on this worker: the limit is what cuts.
    for _ in range(2):
        api.post("/predict", json={"designation": designation}, headers=CLIENT)
    recent = api.get("/admin/inference-log?limit=5", headers=ADMIN).json()
    assert recent["pending"] >= 0 and recent["written"] >= 3 and len(recent["rows"]) == 5


def test_killed_connections_lose_nothing(api, lake):
    """Terminate the writer's sessions on the server side; it reconnects and catches up."""
    from rakuten_mlops.storage import connect

    api.post("/predict", json={"designation": "warm up the writer"}, headers=CLIENT)
    time.sleep(0.5)
    ids = []
    for round_ in range(3):
        with connect(lake, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchone()[0]
        assert round_ > 0 or killed >= 1
        for i in range(10):
            response = api.post(
                "/predict", json={"designation": f"Poupée {round_} {i}"}, headers=CLIENT
            )
            assert response.status_code == 200
            ids.append(response.json()["request_id"])
    wait_for(lambda: len(logged(lambda: connect(lake), ids)) == len(ids), 20, what="caught up")


@pytest.fixture()
def outside_pytest_tmp():
    """A folder the postgres account can reach: pytest resets its own base folder to
    0700 whenever another pytest session starts, which would lock PostgreSQL out."""
    folder = Path(tempfile.mkdtemp(prefix="rakuten-serving-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_database_outage_and_export_fallback(tmp_path, outside_pytest_tmp, settings, pipelines):
    """MLflow unreachable and no export: alive, not ready. Export appears: admin reload
    serves it, flagged as fallback. PostgreSQL stopped: predictions go on, rows wait in
    memory. PostgreSQL back: every row lands, once."""
    database = PrivatePostgres(outside_pytest_tmp, settings.postgres_user, "lake").init().migrate()
    models = tmp_path / "models"
    models.mkdir()
    server = ApiServer(
        tmp_path / "api.log",
        POSTGRES_PORT=str(database.port),
        POSTGRES_DB="lake",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        MODELS_DIR=str(models),
        API_MODEL_POLL_SECONDS="0",
        API_LOG_FLUSH_SECONDS="0.2",
    )
    try:
        server.start(wait_ready=False)
        server.wait(lambda: "loading" not in server.get("/ready").json()["detail"], 30, "load")
        not_ready = server.get("/ready")
        assert not_ready.status_code == 503
        assert "unreachable" in not_ready.json()["detail"]
        assert "no exported model" in not_ready.json()["detail"]
        refused = server.post("/predict", json={"designation": "x"}, headers=CLIENT)
        assert refused.status_code == 503 and refused.headers["retry-after"]

        # The training pipeline's export: the model file and its metadata.
        joblib.dump(pipelines["1"], models / "champion.joblib")
        (models / f"{settings.model_name}.json").write_text(
            json.dumps(
                {
                    "version": "7",
                    "run_id": "abc",
                    "model_path": "champion.joblib",
                    "metrics": {"f1_weighted": 0.61},
                    "training_data": {"rows": 1844},
                }
            )
        )
        reload = server.post("/admin/reload", headers=ADMIN).json()
        assert reload["changed"] is True and reload["current"]["source"] == "export"
        ready = server.get("/ready").json()
        assert ready["ready"] and ready["fallback"] and "unreachable" in ready["detail"]
        info = server.get("/model", headers=CLIENT).json()
        assert (info["version"], info["source"], info["metrics"]) == (
            "7",
            "export",
            {"f1_weighted": 0.61},
        )
        assert info["training_data"]["training_data"] == {"rows": 1844}

        def predict(n: int, tag: str) -> list[str]:
            ids = []
            for i in range(n):
                started = time.perf_counter()
                response = server.post(
                    "/predict", json={"designation": f"Jouet {tag} {i}"}, headers=CLIENT
                )
                assert response.status_code == 200, response.text
                assert time.perf_counter() - started < 2, "a prediction waited for the database"
                ids.append(response.json()["request_id"])
            return ids

        def rows(ids):
            try:
                return logged(lambda: psycopg.connect(database.dsn()), ids)
            except psycopg.OperationalError:
                return {}

        before = predict(20, "before")
        wait_for(lambda: len(rows(before)) == 20, 15, what="rows before the outage")

        database.stop()
        during = predict(30, "during")
        assert server.get("/admin/inference-log", headers=ADMIN).status_code == 503
        metrics = server.get("/metrics").text
        pending = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("rakuten_api_inference_log_pending_rows")
        )
        assert pending >= 30, pending
        server.wait(
            lambda: (
                'rakuten_api_errors_total{kind="inference_log"} 0.0'
                not in server.get("/metrics").text
            ),
            10,
            "a failed write counted",
        )

        database.start()
        wait_for(lambda: len(rows(before + during)) == 50, 30, what="the log caught up")
        with psycopg.connect(database.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM inference_log").fetchone()[0] == 50
        status = server.get("/admin/inference-log", headers=ADMIN).json()
        assert status["pending"] == 0 and status["last_error"] is None and status["dropped"] == 0
    finally:
        server.stop()
        database.stop()
