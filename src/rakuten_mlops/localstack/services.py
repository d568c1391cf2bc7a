"""What local mode runs: each service's command, environment, health check and set-up.

The supervisor (`supervisor.py`) knows how to start, watch and stop processes; this
module only describes them, from the settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from rakuten_mlops.localstack.celery import (
    celery_env,
    celery_mode,
    redis_service,
    worker_services,
)
from rakuten_mlops.localstack.consoles import (
    pgadmin_service,
    s3_console_options,
    s3_console_port,
    seaweedfs_security_env,
)
from rakuten_mlops.localstack.control_room import control_room_service
from rakuten_mlops.localstack.podman import podman_service
from rakuten_mlops.localstack.postgres import postgres_service
from rakuten_mlops.localstack.schedules import unpause_dags
from rakuten_mlops.localstack.service import HTTP_TIMEOUT, Service, http_ok, state_dir, venv_bin
from rakuten_mlops.ml.tracking import client_env as tracking_client_env
from rakuten_mlops.ml.tracking import s3_client_env
from rakuten_mlops.mlflow_auth import ensure_users, sqlite_uri, write_config
from rakuten_mlops.settings import Settings, env_file, project_root
from rakuten_mlops.storage import ensure_buckets, s3_client

# --------------------------------------------------------------------------- S3


def s3_service(settings: Settings) -> Service:
    """SeaweedFS by default; a real MinIO server when one is on PATH."""
    data_dir = state_dir(settings) / "s3" / "data"

    def healthy() -> bool:
        try:
            s3_client(settings).list_buckets()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not serving yet"
            return False

    def bootstrap() -> None:
        ensure_buckets(s3_client(settings), settings.buckets)

    secret = settings.s3_secret_key.get_secret_value()
    if minio := shutil.which("minio"):
        console_port = settings.s3_port + 1
        return Service(
            name="s3",
            command=[
                minio,
                "server",
                str(data_dir),
                "--address",
                f"{settings.bind_host}:{settings.s3_port}",
                "--console-address",
                f"{settings.bind_host}:{console_port}",
            ],
            env={"MINIO_ROOT_USER": settings.s3_access_key, "MINIO_ROOT_PASSWORD": secret},
            url=f"{settings.s3_endpoint_url} (MinIO, console http://{settings.bind_host}:{console_port})",
            healthy=healthy,
            prepare=lambda: data_dir.mkdir(parents=True, exist_ok=True),
            bootstrap=bootstrap,
            start_timeout=30,
            ports=(settings.s3_port, console_port),
        )

    config_file = state_dir(settings) / "s3" / "s3.json"
    console_options = state_dir(settings) / "s3" / "console.options"

    def prepare() -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # `weed mini` saves its options (the console password too) in DATA/mini.options
        # and lets them win over the command line: closed to other accounts, and removed
        # so that each start takes the flags below.
        data_dir.parent.chmod(0o700)
        (data_dir / "mini.options").unlink(missing_ok=True)
        s3_console_options(settings, console_options)
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": settings.s3_access_key, "secretKey": secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config_file.write_text(json.dumps({"identities": [identity]}))
        config_file.chmod(0o600)

    host = settings.bind_host
    return Service(
        name="s3",
        command=[
            str(venv_bin() / "weed"),
            "mini",
            f"-dir={data_dir}",
            f"-ip={host}",
            f"-ip.bind={host}",
            f"-s3.port={settings.s3_port}",
            # SeaweedFS's internal servers sit just above the S3 port (their gRPC ports
            # 10000 higher) instead of its defaults, 8888 and 9333 among them.
            f"-master.port={settings.s3_port + 1}",
            f"-volume.port={settings.s3_port + 2}",
            f"-filer.port={settings.s3_port + 3}",
            f"-s3.config={config_file}",
            "-webdav=false",
            # The object-store console (rakuten_mlops.localstack.consoles), its login
            # read from a 0600 options file.
            "-admin.ui=true",
            f"-admin.port={s3_console_port(settings)}",
            f"-admin.dataDir={data_dir.parent / 'admin'}",
            f"-options={console_options}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ],
        env=seaweedfs_security_env(settings),
        url=(
            f"{settings.s3_endpoint_url} (SeaweedFS S3; console "
            f"http://{host}:{s3_console_port(settings)}, login S3_CONSOLE_USER/PASSWORD)"
        ),
        healthy=healthy,
        prepare=prepare,
        bootstrap=bootstrap,
        start_timeout=60,
        ports=tuple(settings.s3_port + offset + grpc for offset in range(5) for grpc in (0, 10000)),
    )


# --------------------------------------------------------------------------- MLflow


def mlflow_auth_paths(settings: Settings) -> tuple[Path, Path]:
    """(the basic-auth app's ini, its users database): both 0600 under .stack/mlflow."""
    folder = state_dir(settings) / "mlflow"
    return folder / "basic_auth.ini", folder / "basic_auth.db"


def mlflow_service(settings: Settings) -> Service:
    metrics_dir = state_dir(settings) / "mlflow" / "metrics"
    base = f"http://{settings.bind_host}:{settings.mlflow_port}"
    config_file, users_db = mlflow_auth_paths(settings)

    def prepare() -> None:

        # prometheus_flask_exporter keeps multiprocess files here; stale ones confuse it.
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        admin, reader = (
            settings.mlflow_admin_password,
            settings.mlflow_reader_password,
        )
        if admin is None or reader is None or settings.mlflow_flask_server_secret_key is None:
            raise ValueError(
                "MLflow needs MLFLOW_ADMIN_PASSWORD, MLFLOW_READER_PASSWORD and "
                "MLFLOW_FLASK_SERVER_SECRET_KEY: run `make setup` (init-env adds them to .env)"
            )
        uri = sqlite_uri(users_db)
        write_config(config_file, uri)
        ensure_users(
            uri,
            (settings.mlflow_admin_user, admin.get_secret_value()),
            (settings.mlflow_reader_user, reader.get_secret_value()),
        )

    def secret(value) -> str:
        return value.get_secret_value() if value is not None else ""

    return Service(
        name="mlflow",
        command=[
            str(venv_bin() / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--artifacts-destination",
            f"s3://{settings.s3_bucket_mlflow}/",
            "--host",
            settings.bind_host,
            "--port",
            str(settings.mlflow_port),
            "--workers",
            "1",
            "--expose-prometheus",
            str(metrics_dir),
        ],
        env={
            **s3_client_env(settings),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # Read by `mlflow server` itself: the password stays off the command line.
            "MLFLOW_BACKEND_STORE_URI": settings.postgres_dsn(
                settings.mlflow_db, "postgresql+psycopg2"
            ),
            "MLFLOW_AUTH_CONFIG_PATH": str(config_file),
            "MLFLOW_AUTH_ADMIN_USERNAME": settings.mlflow_admin_user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": secret(settings.mlflow_admin_password),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret(settings.mlflow_flask_server_secret_key),
        },
        url=f"{base} (basic auth: MLFLOW_ADMIN_USER / MLFLOW_READER_USER)",
        healthy=lambda: http_ok(f"{base}/health"),
        after=("postgres", "s3"),
        prepare=prepare,
        start_timeout=180,
        ports=(settings.mlflow_port,),
    )


# --------------------------------------------------------------------------- Airflow


def airflow_home(settings: Settings) -> Path:
    return state_dir(settings) / "airflow"


def airflow_env(settings: Settings) -> dict[str, str]:
    """The environment every Airflow process and `airflow` CLI call of local mode uses."""
    home = airflow_home(settings)
    root = project_root()
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": settings.airflow_fernet_key.get_secret_value(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
            f"http://{settings.bind_host}:{settings.airflow_port}/execution/"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_admin_user}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.postgres_dsn(
            settings.airflow_db, "postgresql+psycopg2"
        ),
        "AIRFLOW__API__BASE_URL": f"http://{settings.bind_host}:{settings.airflow_port}",
        "AIRFLOW__API__SECRET_KEY": settings.airflow_api_secret_key.get_secret_value(),
        "AIRFLOW__API_AUTH__JWT_SECRET": settings.airflow_jwt_secret.get_secret_value(),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # Airflow's start-up hook (airflow_local_settings): localstack/task_supervisor.
        "PYTHONPATH": str(root / "config" / "airflow" / "python"),
        # Tasks import the project package and read the same settings.
        "RAKUTEN_PROJECT_ROOT": str(root),
        "RAKUTEN_ENV_FILE": str(env_file()),
        "NLTK_DATA": str(settings.path(settings.nltk_data_dir)),
        # Airflow's tasks train and promote: MLflow's admin user.
        **tracking_client_env(settings, "admin"),
        # AIRFLOW_EXECUTOR=celery: CeleryExecutor, its broker and results backend.
        **(celery_env(settings) if celery_mode(settings) else {}),
    }


def airflow_services(settings: Settings) -> list[Service]:
    env = airflow_env(settings)
    airflow = str(venv_bin() / "airflow")
    base = f"http://{settings.bind_host}:{settings.airflow_port}"

    def monitor() -> dict:
        try:
            response = httpx.get(f"{base}/api/v2/monitor/health", timeout=HTTP_TIMEOUT)
            return response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            return {}

    def component_healthy(component: str) -> Callable[[], bool]:
        return lambda: monitor().get(component, {}).get("status") == "healthy"

    def prepare_api_server() -> None:
        write_airflow_passwords(
            settings, Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        )
        migrate_airflow(settings, {**os.environ, **env}, airflow)

    common = {"env": env, "after": ("postgres",)}
    return [
        Service(
            name="airflow-api-server",
            command=[
                airflow,
                "api-server",
                "-H",
                settings.bind_host,
                "-p",
                str(settings.airflow_port),
                "-w",
                "1",
            ],
            url=base,
            healthy=component_healthy("metadatabase"),
            prepare=prepare_api_server,
            start_timeout=180,
            ports=(settings.airflow_port,),
            **common,
        ),
        Service(
            name="airflow-scheduler",
            command=[airflow, "scheduler", "--skip-serve-logs"],
            url=f"{base} (scheduler heartbeat)",
            healthy=component_healthy("scheduler"),
            **common,
        ),
        Service(
            name="airflow-dag-processor",
            command=[airflow, "dag-processor"],
            url=f"{base} (dag-processor heartbeat)",
            healthy=component_healthy("dag_processor"),
            # data_quality's schedule runs (and ml_pipeline's triggered runs, when on).
            bootstrap=lambda: unpause_dags(settings),
            **common,
        ),
        Service(
            name="airflow-triggerer",
            command=[airflow, "triggerer", "--skip-serve-logs"],
            url=f"{base} (triggerer heartbeat)",
            healthy=component_healthy("triggerer"),
            **common,
        ),
        *(worker_services(settings, env) if celery_mode(settings) else []),
    ]


# --------------------------------------------------------------------------- Prometheus


def prometheus_config(settings: Settings) -> dict:
    host = settings.bind_host
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"{host}:{settings.prometheus_port}"]}],
            },
            {
                "job_name": "mlflow",
                "static_configs": [{"targets": [f"{host}:{settings.mlflow_port}"]}],
                # MLflow's basic auth answers /metrics to admins only (others get 403);
                # the password is in a file only this account can read.
                "basic_auth": {
                    "username": settings.mlflow_admin_user,
                    "password_file": str(prometheus_mlflow_password_file(settings)),
                },
            },
            {
                "job_name": "api",
                "static_configs": [{"targets": [f"{host}:{settings.api_port}"]}],
            },
        ],
    }


def prometheus_mlflow_password_file(settings: Settings) -> Path:
    return state_dir(settings) / "prometheus" / "mlflow_password"


def prometheus_service(settings: Settings) -> Service:
    folder = state_dir(settings) / "prometheus"
    config_file = folder / "prometheus.yml"
    base = f"http://{settings.bind_host}:{settings.prometheus_port}"

    def prepare() -> None:
        (folder / "data").mkdir(parents=True, exist_ok=True)
        password = prometheus_mlflow_password_file(settings)
        password.touch(mode=0o600, exist_ok=True)
        password.chmod(0o600)
        admin = settings.mlflow_admin_password
        password.write_text(admin.get_secret_value() if admin else "")
        config_file.write_text(yaml.safe_dump(prometheus_config(settings), sort_keys=False))

    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    return Service(
        name="prometheus",
        command=[
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={settings.bind_host}:{settings.prometheus_port}",
        ],
        url=base,
        healthy=lambda: http_ok(f"{base}/-/ready"),
        prepare=prepare,
        start_timeout=30,
        ports=(settings.prometheus_port,),
    )


# --------------------------------------------------------------------------- API


def api_database_env(settings: Settings) -> dict[str, str]:
    """POSTGRES_USER/PASSWORD of the API's own role (rakuten_mlops.schema.API_GRANTS);
    without POSTGRES_API_PASSWORD (an .env older than the role) it keeps the owner's."""
    if settings.postgres_api_password is None:
        return {}
    return {
        "POSTGRES_USER": settings.postgres_api_user,
        "POSTGRES_PASSWORD": settings.postgres_api_password.get_secret_value(),
    }


def api_service(settings: Settings) -> Service:
    """The prediction API (rakuten_mlops.serving); it loads the champion from MLflow."""
    base = f"http://{settings.bind_host}:{settings.api_port}"
    return Service(
        name="api",
        command=[sys.executable, "-m", "rakuten_mlops", "serve"],
        env={
            "RAKUTEN_PROJECT_ROOT": str(project_root()),
            "RAKUTEN_ENV_FILE": str(env_file()),
            # The API only reads the registry: MLflow's read-only user.
            **tracking_client_env(settings, "reader"),
            # ... and connects to the lake as its own least-privilege role.
            **api_database_env(settings),
        },
        url=f"{base} (docs {base}/docs)",
        healthy=lambda: http_ok(f"{base}/health"),
        after=("postgres", "mlflow"),
        start_timeout=60,
        ports=(settings.api_port,),
    )


def local_services(settings: Settings) -> list[Service]:
    """Every local-mode service, in start order (dependencies first)."""
    return [
        postgres_service(settings),
        s3_service(settings),
        prometheus_service(settings),
        mlflow_service(settings),
        *([redis_service(settings)] if celery_mode(settings) else []),
        *airflow_services(settings),
        api_service(settings),
        pgadmin_service(settings),
        control_room_service(settings),
        # Container mode: the Docker API for ml_pipeline_docker (none if an engine exists).
        *filter(None, [podman_service(settings)]),
    ]


def write_airflow_passwords(settings: Settings, path: Path) -> None:
    """SimpleAuthManager reads user passwords from this file; ours come from .env."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {settings.airflow_admin_user: settings.airflow_admin_password.get_secret_value()}
        )
    )
    path.chmod(0o600)


def migrate_airflow(settings: Settings, env: dict[str, str], airflow: str) -> None:
    """`airflow db migrate`, skipped when this Airflow version already migrated the database."""
    from importlib.metadata import version

    marker = (
        Path(env["AIRFLOW_HOME"])
        / f".migrated-{version('apache-airflow-core')}-{settings.airflow_db}"
    )
    if marker.is_file():
        return
    result = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` failed:\n{result.stderr[-3000:]}")
    marker.write_text("")
