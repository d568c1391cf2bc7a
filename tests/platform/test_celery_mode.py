"""CeleryExecutor mode (`AIRFLOW_EXECUTOR=celery`) as the stack describes it: which
services `make up` then starts, in which order, and where the broker's password goes.
Running it for real: tests/serving/test_batch_predictions_dag.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from rakuten_mlops.errors import ConfigurationError
from rakuten_mlops.localstack.celery import redis_config
from rakuten_mlops.localstack.services import airflow_env, local_services

PASSWORD = "a-redis-password-for-this-test-0123"


@pytest.fixture()
def celery_settings(settings):
    return settings.model_copy(update={
        "airflow_executor": "celery", "celery_workers": 3, "redis_port": 24099,
        "redis_password": SecretStr(PASSWORD),
    })


def test_local_mode_starts_no_broker_and_no_worker(settings):
    names = [service.name for service in local_services(settings.model_copy(
        update={"airflow_executor": "local"}))]
    assert "redis" not in names and not any("celery" in name for name in names)
    assert airflow_env(settings.model_copy(
        update={"airflow_executor": "local"}))["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_celery_mode_adds_redis_before_airflow_and_named_workers(celery_settings):
    services = local_services(celery_settings)
    names = [service.name for service in services]
    workers = [name for name in names if name.startswith("airflow-celery-")]
    assert workers == ["airflow-celery-worker1", "airflow-celery-worker2",
                       "airflow-celery-worker3"]
    assert names.index("redis") < names.index("airflow-api-server")
    by_name = {service.name: service for service in services}
    assert {"redis", "airflow-api-server"} <= set(by_name["airflow-celery-worker1"].after)
    hostnames = {by_name[name].command[by_name[name].command.index("--celery-hostname") + 1]
                 for name in workers}
    assert len(hostnames) == 3  # distinct Celery names on one host
    env = by_name["airflow-scheduler"].env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].endswith("@127.0.0.1:24099/0")


def test_the_broker_password_is_never_on_a_command_line(celery_settings):
    for service in local_services(celery_settings):
        assert not any(PASSWORD in part for part in service.command), service.name
    config = redis_config(celery_settings)
    assert f"requirepass {PASSWORD}" in config and "bind 127.0.0.1" in config.splitlines()


def test_celery_mode_without_a_redis_password_is_one_clear_error(celery_settings):
    broker = next(s for s in local_services(celery_settings) if s.name == "redis")
    missing = celery_settings.model_copy(update={"redis_password": None})
    with pytest.raises(ConfigurationError, match="REDIS_PASSWORD"):
        local_services(missing)
    assert broker.preflight is not None


def test_stack_commands_name_the_missing_password_in_one_line():
    env = {**os.environ, "AIRFLOW_EXECUTOR": "celery", "REDIS_PASSWORD": ""}
    result = subprocess.run([sys.executable, "-m", "rakuten_mlops", "stack", "status"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "stack: AIRFLOW_EXECUTOR=celery needs REDIS_PASSWORD in .env (`make setup` generates it)")


def test_pinned_workers_get_a_core_each_and_unpinned_ones_none(celery_settings):
    from rakuten_mlops.localstack.celery import WORKER_CPU_ENV

    def cores(settings):
        return [service.env.get(WORKER_CPU_ENV) for service in local_services(settings)
                if service.name.startswith("airflow-celery-")]

    assert cores(celery_settings) == [None, None, None]
    pinned = cores(celery_settings.model_copy(update={"celery_pin_workers": True}))
    assert pinned == [str(n % os.cpu_count()) for n in range(3)]
