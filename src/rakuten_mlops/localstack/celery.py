"""CeleryExecutor mode of local mode (`AIRFLOW_EXECUTOR=celery`): a Redis
broker (Debian's `redis-server`: loopback, password from .env in a 0600 config file, data
in `.stack/redis/`), `CELERY_WORKERS` Airflow Celery workers, results in PostgreSQL.

Each worker has a name of its own (`worker1`, `worker2`...: its Celery hostname, and the
hostname its task instances record, through Airflow's `hostname_callable`), so a run's
task instances say which worker ran them even when every worker is on one host.
"""

from __future__ import annotations

import os
import shutil
import socket
from urllib.parse import quote

from rakuten_mlops.errors import ConfigurationError
from rakuten_mlops.localstack.service import Service, replace_file, state_dir, venv_bin
from rakuten_mlops.settings import Settings

WORKER_NAME_ENV = "RAKUTEN_CELERY_WORKER_NAME"
# The core a pinned worker runs on (celery_worker_config applies it at the worker's start).
WORKER_CPU_ENV = "RAKUTEN_CELERY_WORKER_CPU"
# The workers' own settings (bench/bench_batch_predictions.py measured both):
WORKER_ENV = {
    # Task processes forked with the batch code already imported (celery_worker_config).
    "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": (
        "rakuten_mlops.localstack.celery_worker_config.CELERY_CONFIG"
    ),
}
PING_TIMEOUT = 1.0


def celery_mode(settings: Settings) -> bool:
    return settings.airflow_executor == "celery"


def worker_hostname() -> str:
    """Airflow's `[core] hostname_callable` in celery mode: the worker's name, else the
    host's (the scheduler and the other components are not workers)."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


def _redis_password(settings: Settings) -> str:
    if settings.redis_password is None or not settings.redis_password.get_secret_value():
        raise ConfigurationError(
            "AIRFLOW_EXECUTOR=celery needs REDIS_PASSWORD in .env (`make setup` generates it)"
        )
    return settings.redis_password.get_secret_value()


def check_settings(settings: Settings) -> None:
    """ConfigurationError if celery mode lacks what it needs (its broker's password)."""
    if celery_mode(settings):
        _redis_password(settings)


def broker_url(settings: Settings) -> str:
    password = quote(_redis_password(settings), safe="")
    return f"redis://:{password}@{settings.bind_host}:{settings.redis_port}/0"


def celery_env(settings: Settings) -> dict[str, str]:
    """What every Airflow process needs in celery mode (environment, never arguments)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
        "AIRFLOW__CELERY__BROKER_URL": broker_url(settings),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + settings.postgres_dsn(
            settings.airflow_db, "postgresql"
        ),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.celery_worker_concurrency),
    }


def redis_config(settings: Settings) -> str:
    folder = state_dir(settings) / "redis"
    return "\n".join([
        f"bind {settings.bind_host}",
        f"port {settings.redis_port}",
        "protected-mode yes",
        f"requirepass {_redis_password(settings)}",
        "daemonize no",
        f"dir {folder}",
        "dbfilename dump.rdb",
        'logfile ""',
        "",
    ])


def redis_service(settings: Settings) -> Service:
    folder = state_dir(settings) / "redis"
    config = folder / "redis.conf"

    def prepare() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        replace_file(config, redis_config(settings), owner=None)  # 0600: it holds the password

    def healthy() -> bool:
        import redis

        client = redis.Redis(host=settings.bind_host, port=settings.redis_port,
                             password=_redis_password(settings), socket_timeout=PING_TIMEOUT)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return Service(
        name="redis",
        command=[shutil.which("redis-server") or "/usr/bin/redis-server", str(config)],
        url=f"redis://{settings.bind_host}:{settings.redis_port} (Celery broker; REDIS_PASSWORD)",
        healthy=healthy,
        prepare=prepare,
        preflight=lambda: broker_url(settings) and None,  # refuses a missing password
        start_timeout=20,
        ports=(settings.redis_port,),
    )


def worker_names(settings: Settings) -> list[str]:
    return [f"worker{number}" for number in range(1, settings.celery_workers + 1)]


def worker_cpu(settings: Settings, name: str) -> str | None:
    """The core worker N is pinned to (N-1, modulo the cores), or None if not pinned."""
    if not settings.celery_pin_workers:
        return None
    return str((worker_names(settings).index(name)) % (os.cpu_count() or 1))


def worker_service(settings: Settings, env: dict[str, str], name: str) -> Service:
    """One `airflow celery worker`; healthy once it answers a Celery ping by its name."""
    hostname = f"{name}@{socket.gethostname()}"
    cpu = worker_cpu(settings, name)

    def healthy() -> bool:
        from celery import Celery

        app = Celery(broker=broker_url(settings))
        try:
            return bool(app.control.ping(destination=[hostname], timeout=PING_TIMEOUT))
        except Exception:  # noqa: BLE001 - broker not reachable yet: not healthy
            return False
        finally:
            app.close()

    return Service(
        name=f"airflow-celery-{name}",
        # --skip-serve-logs: its log server would bind 0.0.0.0; the UI reads the log files.
        command=[str(venv_bin() / "airflow"), "celery", "worker", "--celery-hostname",
                 hostname, "--skip-serve-logs", "--without-gossip", "--without-mingle"],
        env={**env, **WORKER_ENV, WORKER_NAME_ENV: name, **({WORKER_CPU_ENV: cpu} if cpu else {})},
        url=f"Celery worker {hostname}" + (f" (core {cpu})" if cpu else ""),
        healthy=healthy,
        after=("postgres", "redis", "airflow-api-server"),
        start_timeout=120,
    )


def worker_services(settings: Settings, env: dict[str, str]) -> list[Service]:
    return [worker_service(settings, env, name) for name in worker_names(settings)]
