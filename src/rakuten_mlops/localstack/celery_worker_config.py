"""The Celery configuration of CeleryExecutor mode's workers (`[celery]
celery_config_options`): Airflow's own, and the imports a batch task needs, done once.

Airflow 3 runs each task in a process forked from the worker: what the worker imported
here, its task processes inherit instead of importing it again (about 1.3 s of MLflow,
scikit-learn and pandas per task otherwise, for a shard of about 0.5 s of predictions:
bench/bench_batch_predictions.py). Loaded by the workers only, never by the scheduler.
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

# Imported for the side effect above: the modules a batch_predictions / prepare_data
# shard task loads, preloaded in the worker.
import rakuten_mlops.ingest  # noqa: F401
import rakuten_mlops.serving.batch  # noqa: F401

CELERY_CONFIG = DEFAULT_CELERY_CONFIG
