"""The Celery configuration of CeleryExecutor mode's workers (`[celery]
celery_config_options`): Airflow's own, the imports a batch task needs done once, and
the champion kept loaded between batch-prediction shards.

Airflow 3 runs each task in a process forked from the worker's pool process: what that
process imported or loaded, its task processes inherit instead of doing it again. The
imports cost about 1.3 s per task otherwise, and loading the champion (download, checksum,
unpickle) about 1.5 s, for a shard of a few seconds of predictions
(bench/bench_batch_predictions.py). Loaded by the workers only, never by the scheduler.
"""

from __future__ import annotations

import json
import logging
import os

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import task_prerun, worker_init

# Imported for the side effect above: the modules a batch_predictions / prepare_data
# shard task loads, preloaded in the worker.
import rakuten_mlops.ingest  # noqa: F401
from rakuten_mlops.localstack.celery import WORKER_CPU_ENV
from rakuten_mlops.serving.batch import keep_champion_loaded
from rakuten_mlops.settings import get_settings

CELERY_CONFIG = DEFAULT_CELERY_CONFIG
SHARD_TASK = ("batch_predictions", "predict_shard")
log = logging.getLogger(__name__)

# CELERY_PIN_WORKERS: set before Celery forks its pool, so every task process inherits it.
if core := os.environ.get(WORKER_CPU_ENV):
    os.sched_setaffinity(0, {int(core)})


def shard_task(workload: str) -> bool:
    """Whether an Airflow workload (the JSON Celery carries) is a batch-prediction shard."""
    try:
        ti = json.loads(workload).get("ti") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return (ti.get("dag_id"), ti.get("task_id")) == SHARD_TASK


@worker_init.connect
def load_champion_at_start(**_) -> None:
    """Before Celery forks its pool: every task slot then starts with the same copy."""
    _keep_champion_loaded()


def _keep_champion_loaded() -> None:
    try:
        keep_champion_loaded(get_settings())
    except Exception as exc:  # noqa: BLE001 - the task loads the model itself and says why
        log.warning("could not keep the champion loaded: %s: %s", type(exc).__name__, exc)


@task_prerun.connect
def load_champion_before_a_shard(args=(), **_) -> None:
    """Runs in the pool process, before it forks the shard's task process."""
    if args and shard_task(args[0]):
        _keep_champion_loaded()
