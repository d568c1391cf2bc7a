#!/usr/bin/env python3
"""Benchmark (issue 16): batch-prediction rows/s of the `batch_predictions` DAG on 1 and
on 2 Celery workers, against `predict-batch` in one process and a naive per-row loop.

Input: ../shared/data/translated (57,375 products), loaded as the unlabelled (`test`)
products of a database of this benchmark's own. Model: the project's text pipeline
(rakuten_mlops.ml.features, word TF-IDF) with a logistic-loss linear model trained on
10,000 of those products, registered in the running MLflow under a name of its own,
trusted and made its champion (all removed at the end, with the database).

Measured, each from an empty `batch_predictions`:
* naive: one `predict` call and one INSERT + commit per product, on the first
  BENCH_NAIVE_ROWS products (the rate is what counts);
* single process: `predict_lake` (what `predict-batch` runs) with the model loaded once,
  shards of BENCH_SHARD_SIZE, chunks of 1,000: the ceiling per core;
* DAG on N Celery workers (N = 1, 2; as CeleryExecutor mode runs them, with
  CELERY_PIN_WORKERS: each worker on a core of its own, CELERY_WORKER_CONCURRENCY task
  slots; a Redis of the benchmark's own and `airflow celery worker` processes): `airflow
  dags test batch_predictions --use-executor`; rate = products / the span of the mapped
  shard tasks (first start to last end, from Airflow's task instances), and also / the
  whole run's wall time (which adds the run's planning and summary tasks).
Targets: 2 workers >= 1.6x one worker; one worker >= 0.8x the single process. Prints one
JSON object, with the workers needed for 10 million products in one hour at the measured
per-worker rate. Without the translated set it says so and exits 0. Needs `make up`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAKUTEN_SHARED_DATA", ROOT.parent / "shared" / "data"))
TRANSLATED = SHARED / "translated" / "X_train_translated.csv"
LABELS = SHARED / "translated" / "Y_train_translated.csv"
BENCH_DB = "rakuten_bench_batch"
SHARD_SIZE = int(os.environ.get("BENCH_SHARD_SIZE", "14400"))
NAIVE_ROWS = int(os.environ.get("BENCH_NAIVE_ROWS", "2000"))
TRAIN_ROWS = 10_000
TARGET_SCALING, TARGET_WORKER_VS_PROCESS = 1.6, 0.8
PROJECTION_PRODUCTS, PROJECTION_SECONDS = 10_000_000, 3600

os.environ.update({"POSTGRES_DB": BENCH_DB})
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest as base  # noqa: E402 - its database helpers

base.BENCH_DB = BENCH_DB  # its recreate/drop helpers act on this benchmark's database
os.environ["POSTGRES_DB"] = BENCH_DB  # bench_ingest's import set its own


def note(message: str) -> None:
    print(f"[bench_batch_predictions] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- set-up


def load_products(settings, folder: Path) -> int:
    """The translated products as the lake's unlabelled products (challenge X_test)."""
    from rakuten_mlops import schema
    from rakuten_mlops.ingest import load_text, sources
    from rakuten_mlops.storage import connect

    base.recreate_database(settings)
    with connect(settings) as conn:
        schema.migrate(conn)
        conn.commit()
    raw = folder / "raw"
    (raw / "images" / "image_test").mkdir(parents=True)
    (raw / "images" / "image_train").mkdir()
    (raw / sources.X_TEST).write_bytes(TRANSLATED.read_bytes())
    (raw / sources.X_TRAIN).write_text(",designation,description,productid,imageid\n")
    (raw / sources.Y_TRAIN).write_text(",prdtypecode\n")
    categories = base.RAKUTEN / "category_names.csv"
    (raw / sources.CATEGORIES).write_bytes(categories.read_bytes())
    lake = settings.model_copy(update={"raw_data_dir": raw})
    load_text(lake, "bench-batch-predictions", "all")
    with connect(settings) as conn:
        return conn.execute("SELECT count(*) FROM products WHERE source_split = 'test'"
                            ).fetchone()[0]


def register_champion(settings) -> str:
    """A trained project pipeline as the champion of a registered model of its own."""
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from sklearn.linear_model import SGDClassifier

    from rakuten_mlops.ml import tracking
    from rakuten_mlops.ml.features import build_pipeline
    from rakuten_mlops.ml.trust import trust_version

    x = pd.read_csv(TRANSLATED, index_col=0, nrows=TRAIN_ROWS)
    y = pd.read_csv(LABELS, index_col=0, nrows=TRAIN_ROWS)["prdtypecode"]
    pipeline = build_pipeline("linear_svc", features={"char": None, "word": {}},
                              nltk_data_dir=str(settings.path(settings.nltk_data_dir)))
    pipeline.set_params(clf=SGDClassifier(loss="log_loss", max_iter=10, tol=None,
                                          random_state=0))
    pipeline.fit(x[["designation", "description"]], y)
    name = f"bench-batch-{uuid.uuid4().hex[:8]}"
    tracking.configure(settings, "admin")
    client = tracking.client(settings, "admin")
    experiment = tracking.experiment_id(settings, name)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=name,
                                 pip_requirements=[], serialization_format="cloudpickle")
    trust_version(settings, name, "1", run.info.run_id, reason="benchmark")
    client.set_registered_model_alias(name, "champion", "1")
    return name


def forget_model(settings, name: str) -> None:
    from rakuten_mlops.ml import tracking

    client = tracking.client(settings, "admin")
    client.delete_registered_model(name)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id]):
            client.delete_run(run.info.run_id)
        client.delete_experiment(experiment.experiment_id)


def empty_predictions(settings) -> None:
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        conn.execute("DELETE FROM batch_predictions")
        conn.execute("DELETE FROM batch_prediction_runs")
        conn.commit()


# --------------------------------------------------------------------------- the ways


def run_naive(settings, model) -> float:
    """Rows/s of one predict call and one committed INSERT per product."""
    from rakuten_mlops.serving.batch import UPSERT, _row
    from rakuten_mlops.serving.batch import start_run as start
    from rakuten_mlops.storage import connect

    empty_predictions(settings)
    run = start(settings, model, "test", "bench-naive")
    with connect(settings, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT productid, designation, description FROM products ORDER BY productid"
            " LIMIT %s", (NAIVE_ROWS,)).fetchall()
        started = time.perf_counter()
        for productid, designation, description in rows:
            top = model.predict([designation], [description], 3).top[0]
            conn.execute(UPSERT, _row(productid, model, top, run["run_id"], datetime.now(UTC)))
        return len(rows) / (time.perf_counter() - started)


def run_single_process(settings, model, products: int) -> float:
    from rakuten_mlops.serving.batch import predict_lake

    empty_predictions(settings)
    started = time.perf_counter()
    summary = predict_lake(settings, model=model, shard_size=SHARD_SIZE, run_id="bench-single")
    seconds = time.perf_counter() - started
    assert summary["rows_predicted"] == products, summary
    return products / seconds


def _spawn(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen, stop_signal=signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, stop_signal)
        process.wait(timeout=30)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout} s")
        time.sleep(0.5)


def run_dag(settings, workers: int, products: int, folder: Path) -> dict:
    """The DAG on `workers` Celery workers: rows/s over the shard tasks and the run."""
    from pydantic import SecretStr

    from rakuten_mlops.localstack.celery import redis_service, worker_names, worker_service
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    empty_predictions(settings)
    mode = settings.model_copy(update={
        "airflow_executor": "celery", "redis_port": _free_port(), "celery_workers": workers,
        "redis_password": SecretStr(secrets.token_urlsafe(24)),
        # One core per worker (what the Helm values request), so that 1 worker compares
        # with one process and 2 workers with 1; task slots as the stack's default.
        "celery_pin_workers": True,
    })
    env = {**os.environ, "POSTGRES_DB": BENCH_DB, "MODEL_NAME": settings.model_name,
           **airflow_env(mode), "PATH": f"{venv_bin()}{os.pathsep}{os.environ['PATH']}"}
    broker = redis_service(mode.model_copy(update={"stack_dir": folder / f"redis{workers}"}))
    broker.prepare()
    processes = [_spawn(broker.command, env, folder / f"redis{workers}.log")]
    try:
        _wait(broker.healthy, 20, "redis")
        services = [worker_service(mode, env, name) for name in worker_names(mode)]
        processes += [_spawn(s.command, {**env, **s.env}, folder / f"{s.name}-{workers}.log")
                      for s in services]
        for service in services:
            _wait(service.healthy, 120, service.name)
        started = time.perf_counter()
        result = subprocess.run(
            [str(venv_bin() / "airflow"), "dags", "test", "batch_predictions",
             "--use-executor", "--conf", json.dumps({"shard_size": SHARD_SIZE})],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError((result.stdout + result.stderr)[-3000:])
    finally:
        for process in processes[1:]:
            _stop(process, signal.SIGKILL)
        _stop(processes[0])
    span, hosts = _shard_span(settings)
    return {"workers": workers, "hosts": sorted(hosts), "shard_span_s": round(span, 2),
            "wall_s": round(wall, 2), "rows_per_s": round(products / span, 1),
            "rows_per_s_wall": round(products / wall, 1)}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _shard_span(settings) -> tuple[float, set[str]]:
    import psycopg

    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        run_id = conn.execute(
            "SELECT run_id FROM batch_prediction_runs WHERE finished_at IS NOT NULL"
            " ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    with psycopg.connect(settings.postgres_dsn(settings.airflow_db)) as conn:
        span, hosts = conn.execute(
            "SELECT extract(epoch FROM max(end_date) - min(start_date)), array_agg(hostname)"
            " FROM task_instance WHERE dag_id = 'batch_predictions' AND run_id = %s"
            " AND task_id = 'predict_shard'", (run_id,)).fetchone()
    return float(span), set(hosts)


# --------------------------------------------------------------------------- main


def main() -> int:
    if not TRANSLATED.is_file():
        print(f"bench_batch_predictions: skipped, {TRANSLATED} is not there "
              "(the 57k translated set in ../shared/data)")
        return 0
    from rakuten_mlops.serving.batch import champion
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    name = None
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        try:
            products = load_products(settings, folder)
            note(f"{products} products loaded; training and registering the model")
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links
                name = register_champion(settings)
            settings = settings.model_copy(update={"model_name": name})
            model = champion(settings)
            note("naive per-row loop")
            naive = run_naive(settings, model)
            note("single process (predict-batch's code)")
            single = run_single_process(settings, model, products)
            dags = {}
            for workers in (1, 2):
                note(f"the DAG on {workers} Celery worker(s)")
                dags[workers] = run_dag(settings, workers, products, folder)
        finally:
            if name:
                forget_model(settings, name)
            base.drop_database(settings)
    one, two = dags[1]["rows_per_s"], dags[2]["rows_per_s"]
    per_hour_target = PROJECTION_PRODUCTS / PROJECTION_SECONDS
    report = {
        "products": products,
        "shard_size": SHARD_SIZE,
        "naive_rows_per_s": round(naive, 1),
        "single_process_rows_per_s": round(single, 1),
        "dag_1_worker": dags[1],
        "dag_2_workers": dags[2],
        "ratio_2_vs_1_worker": round(two / one, 2),
        "target_2_vs_1_worker": TARGET_SCALING,
        "ratio_1_worker_vs_single_process": round(one / single, 2),
        "target_1_worker_vs_single_process": TARGET_WORKER_VS_PROCESS,
        "ratio_single_process_vs_naive": round(single / naive, 1),
        "workers_for_10M_products_per_hour": math.ceil(per_hour_target / one),
        "workers_for_10M_products_per_hour_at_single_process_rate": math.ceil(
            per_hour_target / single),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
