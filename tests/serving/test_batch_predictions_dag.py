"""The `batch_predictions` DAG (`airflow dags test`) on the shipped sample, with the serving
tests' registered champion and a small shard size, against the real services.

One story, to pay for the lake and the runs once: a shard run by `predict-batch --shard`
is killed (SIGKILL, a real process) while it waits on a row lock the test holds in the
middle of the shard, after some of its chunks were committed; the DAG run that follows
finishes the job (one prediction per product and model version, no gap); a second DAG
run changes no row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.lake import PROJECT, Lake
from tests.support.serving import wait_for

pytestmark = pytest.mark.stack

SHARD_SIZE = 80
CHUNK = 10
KILLED_RUN = "test-killed-shard"


@pytest.fixture()
def sample_lake(settings, lake_database, sample_dir, registered) -> Lake:
    """The shipped sample's products in a lake of this test's own, and the champion's
    promotion checksums there (the model is loaded only if they match)."""
    from rakuten_mlops.ingest import load_text
    from rakuten_mlops.ml.trust import trust_version

    lake = Lake(settings.model_copy(update={
        "postgres_db": lake_database,
        "s3_bucket_images": f"{settings.s3_bucket_images}-ingest",
        "raw_data_dir": sample_dir,
        "model_name": registered["name"],
    }))
    lake.reset()
    load_text(lake.settings, "test-batch-predictions", "all")
    for version, run_id in zip(("1", "2"), registered["run_ids"], strict=True):
        trust_version(lake.settings, registered["name"], version, run_id, reason="test")
    return lake


def _env(lake: Lake) -> dict[str, str]:
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    env = {**lake.env, **airflow_env(lake.settings), "MODEL_NAME": lake.settings.model_name}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return env


def _dags_test(lake: Lake) -> str:
    from rakuten_mlops.localstack.service import venv_bin

    result = subprocess.run(
        [str(Path(venv_bin()) / "airflow"), "dags", "test", "batch_predictions",
         "--conf", f'{{"shard_size": {SHARD_SIZE}}}'],
        env=_env(lake), cwd=PROJECT, capture_output=True, text=True, timeout=300,
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
        env=_env(lake), cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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
    sample_lake, registered
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

    log = _dags_test(lake)
    assert log.count("task_id=predict_shard") >= len(shards), log[-3000:]
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

    _dags_test(lake)
    assert _predictions(lake, version) == first  # not one row rewritten
