"""The `batch_predictions` DAG in celery mode on the shipped sample, with the serving
tests' registered champion and a small shard size, against the real services.

Celery mode as `AIRFLOW_EXECUTOR=celery` runs it (rakuten_mlops.localstack.celery): a
Redis of this module's own (its config file, password, loopback) and two Airflow Celery
workers, `worker1` and `worker2`; `airflow dags test --use-executor` sends the run's
tasks to them through the broker.

One story, to pay for the lake and the runs once: a shard run by `predict-batch --shard`
is killed (SIGKILL, a real process) while it waits on a row lock the test holds in the
middle of the shard, after some of its chunks were committed; the DAG run that follows
finishes the job on both workers (its mapped task instances record both names; one
prediction per product and model version, no gap); a second DAG run changes no row.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
from pydantic import SecretStr

from tests.support.lake import PROJECT, Lake
from tests.support.serving import free_port, wait_for

pytestmark = pytest.mark.stack

SHARD_SIZE = 80
CHUNK = 10
KILLED_RUN = "test-killed-shard"


def _start(service, log: Path) -> subprocess.Popen:
    if service.prepare:
        service.prepare()
    with log.open("w") as out:
        return subprocess.Popen(service.command, env={**os.environ, **service.env},
                                cwd=PROJECT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(process: subprocess.Popen, stop_signal=signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, stop_signal)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def celery(settings, lake_database, registered, tmp_path_factory):
    """Settings in celery mode, a Redis broker and two Celery workers whose tasks write to
    this module's lake; stopped at the end."""
    from rakuten_mlops.localstack.celery import redis_service, worker_names, worker_service

    folder = tmp_path_factory.mktemp("celery")
    mode = settings.model_copy(update={
        "airflow_executor": "celery", "redis_port": free_port(),
        "redis_password": SecretStr(secrets.token_urlsafe(24)), "celery_workers": 2,
        "celery_pin_workers": True, "postgres_db": lake_database, "model_name": registered["name"],
        "s3_bucket_images": f"{settings.s3_bucket_images}-ingest",
    })
    broker = redis_service(mode.model_copy(update={"stack_dir": folder}))
    processes = [_start(broker, folder / "redis.log")]
    try:
        wait_for(broker.healthy, timeout=20, what="redis")
        assert (folder / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
        workers = [worker_service(mode, _env(mode), name) for name in worker_names(mode)]
        processes += [_start(worker, folder / f"{worker.name}.log") for worker in workers]
        for worker, process, name in zip(workers, processes[1:], worker_names(mode),
                                         strict=True):
            def answers(worker=worker, process=process, name=name) -> bool:
                assert process.poll() is None, (folder / f"{worker.name}.log").read_text()[-3000:]
                return worker.healthy()

            wait_for(answers, timeout=120, interval=0.5, what=name)
        # The settings, and each worker's process by name (a test kills one).
        yield mode, dict(zip(worker_names(mode), processes[1:], strict=True))
    finally:
        # The workers hold nothing worth a warm shutdown (their broker goes too).
        for process in processes[1:]:
            _stop(process, signal.SIGKILL)
        _stop(processes[0])


@pytest.fixture()
def sample_lake(celery, sample_dir, registered) -> Lake:
    """The shipped sample's products in a lake of this test's own, and the champion's
    promotion checksums there (the model is loaded only if they match)."""
    from rakuten_mlops.ingest import load_text
    from rakuten_mlops.ml.trust import trust_version

    lake = Lake(celery[0].model_copy(update={"raw_data_dir": sample_dir}))
    lake.reset()
    load_text(lake.settings, "test-batch-predictions", "all")
    for version, run_id in zip(("1", "2"), registered["run_ids"], strict=True):
        trust_version(lake.settings, registered["name"], version, run_id, reason="test")
    return lake


def _env(settings) -> dict[str, str]:
    """A process of this lake, in celery mode (settings.airflow_executor)."""
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    env = {**os.environ, "POSTGRES_DB": settings.postgres_db,
           "S3_BUCKET_IMAGES": settings.s3_bucket_images, "MODEL_NAME": settings.model_name,
           **airflow_env(settings)}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return env


def _dags_test_command(shard_size: int) -> list[str]:
    from rakuten_mlops.localstack.service import venv_bin

    return [str(Path(venv_bin()) / "airflow"), "dags", "test", "batch_predictions",
            "--use-executor", "--conf", f'{{"shard_size": {shard_size}}}']


def _dags_test(lake: Lake, shard_size: int = SHARD_SIZE) -> str:
    result = subprocess.run(
        _dags_test_command(shard_size),
        env=_env(lake.settings), cwd=PROJECT, capture_output=True, text=True, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    return log


def _predictions(lake: Lake, version: str) -> dict[int, tuple]:
    rows = lake.rows(
        "SELECT productid, prdtypecode, confidence, top_k::text, run_id, predicted_at"
        " FROM batch_predictions WHERE model_name = %s AND model_version = %s",
        lake.settings.model_name, version)
    return {row[0]: row[1:] for row in rows}


def _shard_hosts(settings, dag_run: str) -> set[str]:
    with psycopg.connect(settings.postgres_dsn(settings.airflow_db), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT hostname, state FROM task_instance WHERE dag_id = 'batch_predictions'"
            " AND run_id = %s AND task_id = 'predict_shard'", (dag_run,)).fetchall()
    assert rows and {state for _, state in rows} == {"success"}, rows
    return {hostname for hostname, _ in rows}


def _shard_logs(settings, dag_run: str) -> list[str]:
    """The task logs of the run's predict_shard tasks (celery mode writes them like local)."""
    from rakuten_mlops.localstack.services import airflow_env

    folder = (Path(airflow_env(settings)["AIRFLOW__LOGGING__BASE_LOG_FOLDER"])
              / "dag_id=batch_predictions" / f"run_id={dag_run}" / "task_id=predict_shard")
    return [path.read_text() for path in sorted(folder.glob("map_index=*/attempt=*.log"))]


def _kill_a_shard_midway(lake: Lake, version: str, shard: list[int]) -> int:
    """`predict-batch --shard` blocked on the test's uncommitted row for a product in the
    middle of the shard, then SIGKILLed; returns how many rows it had committed."""
    ids = [row[0] for row in lake.rows(
        "SELECT productid FROM products WHERE source_split = 'test'"
        " AND productid BETWEEN %s AND %s ORDER BY productid", *shard)]
    blocked_at = ids[len(ids) // 2]
    committed_before = (len(ids) // 2) // CHUNK * CHUNK
    blocker = lake.connect()
    blocker.autocommit = False
    blocker.execute(
        "INSERT INTO batch_prediction_runs (run_id, model_name, model_version, model_source,"
        " source_split) VALUES ('test-blocker', %s, %s, 'registry', 'test')",
        (lake.settings.model_name, version))
    blocker.execute(
        "INSERT INTO batch_predictions (productid, model_name, model_version, prdtypecode,"
        " confidence, top_k, run_id) VALUES (%s, %s, %s, 0, 0, '[]', 'test-blocker')",
        (blocked_at, lake.settings.model_name, version))
    shard_process = subprocess.Popen(
        [sys.executable, "-m", "rakuten_mlops", "predict-batch",
         "--shard", f"{shard[0]}:{shard[1]}", "--run-id", KILLED_RUN, "--chunk-size", str(CHUNK)],
        env=_env(lake.settings), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        def waiting_on_the_lock() -> bool:
            assert shard_process.poll() is None, shard_process.stderr.read().decode()[-3000:]
            return lake.scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE NOT l.granted AND a.datname = current_database()") > 0
        wait_for(waiting_on_the_lock, timeout=120, interval=0.2, what="the shard to block")
    finally:
        os.killpg(shard_process.pid, signal.SIGKILL)
        shard_process.wait(timeout=30)
        blocker.rollback()
        blocker.close()
    committed = lake.scalar("SELECT count(*) FROM batch_predictions WHERE run_id = %s", KILLED_RUN)
    assert committed == committed_before and 0 < committed < len(ids)
    return committed


def test_sharded_dag_finishes_a_killed_shard_and_a_second_run_changes_nothing(
    sample_lake, celery, registered
):
    from rakuten_mlops.serving.batch import shard_ranges

    lake = sample_lake
    version = registered["client"].get_model_version_by_alias(
        lake.settings.model_name, "champion").version
    products = {row[0] for row in lake.rows(
        "SELECT productid FROM products WHERE source_split = 'test'")}
    shards = shard_ranges(lake.settings, "test", SHARD_SIZE)
    assert len(shards) == -(-len(products) // SHARD_SIZE) >= 3

    committed = _kill_a_shard_midway(lake, version, shards[1])

    _dags_test(lake)
    first = _predictions(lake, version)
    assert set(first) == products  # no gap, and one row per product and version (the key)
    # The rows the killed shard committed were right: the DAG run left them alone.
    runs = [row[3] for row in first.values()]
    assert runs.count(KILLED_RUN) == committed
    dag_run = next(run for run in runs if run != KILLED_RUN)
    assert dag_run.startswith("manual__") and runs.count(dag_run) == len(products) - committed
    summary = lake.rows(
        "SELECT model_version, shards, rows_predicted, class_counts, finished_at IS NOT NULL"
        " FROM batch_prediction_runs WHERE run_id = %s", dag_run)[0]
    assert summary[:3] == (version, len(shards), len(products)) and summary[4]
    by_class: dict[str, int] = {}
    for prediction in first.values():
        by_class[str(prediction[0])] = by_class.get(str(prediction[0]), 0) + 1
    assert summary[3] == by_class
    # The mapped tasks ran on both Celery workers, as their task instances record.
    assert _shard_hosts(lake.settings, dag_run) == {"worker1", "worker2"}
    # CELERY_PIN_WORKERS: each worker, and the task processes it forks, on a core of its own.
    _, workers = celery
    cores = {name: psutil.Process(process.pid).cpu_affinity() for name, process in workers.items()}
    assert cores == {"worker1": [0], "worker2": [1 % os.cpu_count()]}
    # Each worker kept the champion loaded (celery_worker_config): no shard task loaded it.
    logs = _shard_logs(lake.settings, dag_run)
    assert len(logs) == len(shards) and all(" products" in log for log in logs)
    assert not any("from the registry" in log for log in logs), logs[0][-2000:]

    _dags_test(lake)
    assert _predictions(lake, version) == first  # not one row rewritten


def _running_shard_on(settings, worker: str) -> str | None:
    """The run id of a batch_predictions shard running now on `worker`, if any."""
    with psycopg.connect(settings.postgres_dsn(settings.airflow_db), autocommit=True) as conn:
        row = conn.execute(
            "SELECT run_id FROM task_instance WHERE dag_id = 'batch_predictions'"
            " AND task_id = 'predict_shard' AND state = 'running' AND hostname = %s"
            " ORDER BY start_date DESC LIMIT 1", (worker,)).fetchone()
    return row[0] if row else None


def test_a_worker_killed_mid_run_then_a_rerun_leaves_no_duplicate_and_no_gap(
    sample_lake, celery, registered
):
    """worker2 is SIGKILLed while it runs a shard, and the run's process with it; a new
    run finishes the lake's predictions on worker1 alone. (Runs after the test above:
    the module's worker2 stays dead.)"""
    lake = sample_lake
    _, workers = celery
    version = registered["client"].get_model_version_by_alias(
        lake.settings.model_name, "champion").version
    products = {row[0] for row in lake.rows(
        "SELECT productid FROM products WHERE source_split = 'test'")}
    run = subprocess.Popen(_dags_test_command(40), env=_env(lake.settings), cwd=PROJECT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        def worker2_busy():
            assert run.poll() is None, "the run ended before worker2 ran a shard"
            return _running_shard_on(lake.settings, "worker2")

        killed_run = wait_for(worker2_busy, timeout=120, interval=0.05, what="a shard on worker2")
        os.killpg(workers["worker2"].pid, signal.SIGKILL)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    workers["worker2"].wait(timeout=30)
    # Died halfway: never summarized (its shard on worker2 never reported either).
    assert lake.scalar("SELECT finished_at FROM batch_prediction_runs WHERE run_id = %s",
                       killed_run) is None

    _dags_test(lake, shard_size=80)
    rows = lake.rows(
        "SELECT productid, count(*) FROM batch_predictions WHERE model_name = %s"
        " AND model_version = %s GROUP BY productid", lake.settings.model_name, version)
    assert {productid for productid, _ in rows} == products  # no gap
    assert {count for _, count in rows} == {1}  # no duplicate
    new_run = lake.scalar("SELECT run_id FROM batch_prediction_runs WHERE run_id <> %s"
                          " AND finished_at IS NOT NULL", killed_run)
    assert _shard_hosts(lake.settings, new_run) == {"worker1"}
