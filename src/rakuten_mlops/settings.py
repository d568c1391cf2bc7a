"""The one settings object: every endpoint, port, path and credential.

Values come from the environment, then from `.env` (generated from `.env.example` by
`make setup`). Nothing here touches the network or the disk beyond reading `.env`.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me"
# Well-known defaults of the images and tutorials this project replaces.
WELL_KNOWN_DEFAULTS = frozenset(
    {PLACEHOLDER_SECRET, "", "admin", "airflow", "minioadmin", "password", "postgres", "secret"}
)
MIN_SECRET_LENGTH = 12


class Mode(StrEnum):
    LOCAL = "local"
    COMPOSE = "compose"
    PRODUCTION = "production"


def project_root() -> Path:
    """The checkout this package is installed from (editable install), else the cwd."""
    if root := os.environ.get("RAKUTEN_PROJECT_ROOT"):
        return Path(root).resolve()
    candidate = Path(__file__).resolve().parents[2]
    if (candidate / "pyproject.toml").is_file() and (candidate / "dags").is_dir():
        return candidate
    return Path.cwd()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_file_encoding="utf-8")

    rakuten_mode: Mode = Mode.LOCAL
    bind_host: str = "127.0.0.1"

    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(55432, ge=1, le=65535)
    postgres_user: str = "rakuten"
    postgres_password: SecretStr
    postgres_db: str = "rakuten_lake"
    airflow_db: str = "airflow"
    mlflow_db: str = "mlflow"
    # Local mode only: the password of the local cluster's `postgres` superuser (every
    # connection to it needs a password, the local socket included).
    postgres_superuser_password: SecretStr | None = None
    # Least-privilege roles (rakuten_mlops.schema.grant_privileges), created by the stack's
    # start-up: the API (insert into its log, read what it serves) and Grafana (read only).
    postgres_api_user: str = "rakuten_api"
    postgres_api_password: SecretStr | None = None
    postgres_grafana_user: str = "rakuten_grafana"
    postgres_grafana_password: SecretStr | None = None

    s3_host: str = "127.0.0.1"
    s3_port: int = Field(8333, ge=1, le=65535)
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_access_key: str = "rakuten"
    s3_secret_key: SecretStr
    s3_bucket_images: str = "rakuten-images"
    s3_bucket_artifacts: str = "rakuten-artifacts"
    s3_bucket_mlflow: str = "rakuten-mlflow"

    airflow_port: int = Field(8080, ge=1, le=65535)
    airflow_admin_user: str = "admin"
    airflow_admin_password: SecretStr
    airflow_api_secret_key: SecretStr
    airflow_jwt_secret: SecretStr
    airflow_fernet_key: SecretStr

    mlflow_port: int = Field(5000, ge=1, le=65535)
    # Where clients reach MLflow; defaults to the local-mode server.
    mlflow_tracking_uri: str | None = None
    # MLflow's basic-auth users (rakuten_mlops.ml.tracking): the admin trains and promotes,
    # the reader (the API) may only read. Optional here so that processes which never
    # talk to MLflow need not carry them; a client without its role's password is
    # refused by the server (401). The Flask key signs MLflow's own CSRF tokens.
    mlflow_admin_user: str = "mlflow-admin"
    mlflow_admin_password: SecretStr | None = None
    mlflow_reader_user: str = "mlflow-reader"
    mlflow_reader_password: SecretStr | None = None
    mlflow_flask_server_secret_key: SecretStr | None = None
    prometheus_port: int = Field(9090, ge=1, le=65535)
    # Grafana (compose mode; `publish-dashboards` pushes config/grafana/dashboards to any
    # Grafana): its URL (default: BIND_HOST:GRAFANA_PORT) and a service-account token,
    # else the admin user and password.
    grafana_port: int = Field(3000, ge=1, le=65535)
    grafana_url: str | None = None
    grafana_token: SecretStr | None = None
    grafana_admin_user: str = "admin"
    grafana_admin_password: SecretStr | None = None

    # Consoles (rakuten_mlops.localstack.consoles): pgAdmin 4 in server mode (local mode
    # and compose) and, in local mode, SeaweedFS's admin UI as the object-store console.
    pgadmin_port: int = Field(5050, ge=1, le=65535)
    pgadmin_email: str = "admin@rakuten-mlops.dev"
    pgadmin_password: SecretStr | None = None
    s3_console_user: str = "admin"
    s3_console_password: SecretStr | None = None

    # The control room (rakuten_mlops.control_room): a Streamlit app on
    # BIND_HOST:CONTROL_ROOM_PORT behind this login; where it reaches the API and
    # Prometheus (default: BIND_HOST and their ports, as in local mode; compose sets both).
    control_room_port: int = Field(8501, ge=1, le=65535)
    control_room_user: str = "admin"
    control_room_password: SecretStr | None = None
    control_room_api_url: str | None = None
    control_room_prometheus_url: str | None = None

    # The registered model trained and served, and the alias of the one in production.
    model_name: str = "rakuten-prdtypecode"
    model_alias: str = "champion"
    # Training (rakuten_mlops.ml.train): the MLflow experiment runs log to, and the default
    # search profile (config/training/<name>.yaml) of `train` and the ml_pipeline DAGs.
    mlflow_experiment: str = "rakuten-prdtypecode"
    training_profile: str = "quick"

    # Prediction API (rakuten_mlops.serving). The keys are optional here so that other
    # processes need not carry them; the API refuses to start without both.
    api_port: int = Field(8000, ge=1, le=65535)
    api_client_key: SecretStr | None = None
    api_admin_key: SecretStr | None = None
    api_max_designation_chars: int = Field(1000, ge=1)
    api_max_description_chars: int = Field(20000, ge=1)
    api_max_batch_size: int = Field(256, ge=1, le=10000)
    api_model_poll_seconds: float = Field(30.0, ge=0)  # 0: only POST /admin/reload
    api_log_flush_seconds: float = Field(1.0, gt=0)
    api_log_buffer_rows: int = Field(100_000, ge=1)
    # The API server's HTTP limits (rakuten_mlops.serving.limits; the compose proxy,
    # config/nginx, applies the same): bytes of request line + headers, header fields,
    # seconds to receive the headers (from the connection's start) and between two reads
    # of a body, idle keep-alive seconds, open connections (beyond: 503), listen backlog.
    api_max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    api_max_headers: int = Field(100, ge=8, le=10_000)
    api_header_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    api_body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    api_keepalive_timeout_seconds: int = Field(5, ge=1, le=3600)
    api_max_connections: int = Field(256, ge=1, le=100_000)
    api_backlog: int = Field(1024, ge=1, le=65_535)

    # Container mode (ml_pipeline_docker; rakuten_mlops.localstack.podman): the
    # Docker API the ML containers run through (empty: this machine's Docker engine, else
    # local mode's podman socket under .stack/podman), the ML image, and the containers'
    # network (empty: "host" in local mode, to reach the stack on 127.0.0.1; compose's
    # network otherwise).
    docker_host: str | None = None
    rakuten_ml_image: str = "rakuten-mlops/ml:latest"
    rakuten_docker_network: str | None = None
    # Compose: the named volume the worker and the stage containers share for the
    # containers' private settings file, and where the worker mounts it (README).
    stage_env_volume: str | None = None
    stage_env_dir: Path = Path("/run/rakuten/stage-env")

    # Paths, relative to the project root unless absolute.
    raw_data_dir: Path = Path("raw_data")
    processed_data_dir: Path = Path("processed_data")
    models_dir: Path = Path("models")
    stack_dir: Path = Path(".stack")
    nltk_data_dir: Path = Path("config/nltk_data")

    # prepare_data / `rakuten-mlops ingest` (see rakuten_mlops.ingest)
    ingest_slice: str = "all"  # records per run: a fraction of the source ("0.2", "20%") or "all"
    # A run fails above these ratios: rejected product records / records of the slice;
    # unusable image files / image files present; products without an image file / products
    # loaded (1.0 = never fail on it: the shipped sample has images for few products).
    ingest_max_text_reject_ratio: float = Field(0.05, ge=0, le=1)
    ingest_max_image_reject_ratio: float = Field(0.05, ge=0, le=1)
    ingest_max_missing_image_ratio: float = Field(1.0, ge=0, le=1)
    # How product rows reach their tables: "copy" (COPY straight in; the planner leaves
    # out rows the lake holds) or "staging" (COPY to a temp table + INSERT ON CONFLICT).
    ingest_text_write: Literal["copy", "staging"] = "copy"
    ingest_image_workers: int = Field(8, ge=1, le=64)
    ingest_image_chunk: int = Field(500, ge=1)  # image catalogue rows per commit
    # Issue 16: a batch's image phase in shards of at most this many products (one
    # mapped task each in prepare_data); a smaller batch is one shard.
    ingest_image_shard_size: int = Field(20_000, ge=1)
    # Issue 12 hardening: a longer designation/description is a field_too_long reject;
    # an image declaring more pixels is a decompression_bomb reject (Pillow's own limit).
    ingest_max_field_chars: int = Field(50_000, ge=1)
    ingest_max_image_pixels: int = Field(89_478_485, ge=1)
    # data_quality DAG (rakuten_mlops.quality): thresholds file, and whether a breach
    # triggers the ml_pipeline DAG (retraining).
    quality_config: Path = Path("config/quality.yaml")
    quality_trigger_retrain: bool = False
    # `stack up` unpauses data_quality (and ml_pipeline when the trigger is on):
    # rakuten_mlops.localstack.schedules. False leaves every DAG's pause state alone.
    stack_schedule_dags: bool = True
    # The train/validation/test split of labelled products (rakuten_mlops.ingest.split)
    split_seed: int = 42
    split_validation_fraction: float = Field(0.15, ge=0, lt=1)
    split_test_fraction: float = Field(0.15, ge=0, lt=1)

    # Issue 16, beyond one machine: batch predictions in shards of at most this many
    # products (one mapped task each in the batch_predictions DAG), committed in chunks.
    batch_shard_size: int = Field(5000, ge=1)
    batch_chunk_size: int = Field(1000, ge=1)
    # Airflow's executor in local mode: "local" (LocalExecutor) or "celery" (a Redis broker
    # on REDIS_PORT with REDIS_PASSWORD, CELERY_WORKERS workers of CELERY_WORKER_CONCURRENCY
    # task slots each; rakuten_mlops.localstack.celery). One slot: a shard keeps its core
    # busy (a task's start and end cost ~0.3 s with the supervisor fix of
    # localstack/task_supervisor), and two shards on one core only share its caches.
    # CELERY_PIN_WORKERS gives worker N core N-1 (modulo the cores): one core per worker,
    # like the Helm values' `cpu: 1` request.
    airflow_executor: Literal["local", "celery"] = "local"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_password: SecretStr | None = None
    celery_workers: int = Field(2, ge=1, le=32)
    celery_worker_concurrency: int = Field(1, ge=1, le=64)
    celery_pin_workers: bool = False

    # Issue 17, images in the model: threads of the image_features stage (S3 reads
    # overlap the decoding; rakuten_mlops.ml.image_stage).
    image_feature_workers: int = Field(4, ge=1, le=64)
    # /predict's optional image (base64 in the JSON body): its largest decoded size.
    api_max_image_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    @model_validator(mode="after")
    def _refuse_default_secrets_outside_local_mode(self) -> Settings:
        if self.rakuten_mode is Mode.LOCAL:
            return self
        weak = [
            name.upper()
            for name, value in self._secrets().items()
            if value in WELL_KNOWN_DEFAULTS or len(value) < MIN_SECRET_LENGTH
        ]
        if weak:
            raise ValueError(
                f"RAKUTEN_MODE={self.rakuten_mode.value} refuses default, placeholder or short "
                f"(<{MIN_SECRET_LENGTH} chars) secrets: {', '.join(sorted(weak))}. "
                "Run `make setup` to generate .env, or set them in the environment."
            )
        return self

    def _secrets(self) -> dict[str, str]:
        return {
            name: value.get_secret_value()
            for name in type(self).model_fields
            if isinstance(value := getattr(self, name), SecretStr)
        }

    def path(self, relative: Path) -> Path:
        return relative if relative.is_absolute() else project_root() / relative

    def postgres_dsn(self, database: str | None = None, driver: str = "postgresql") -> str:
        password = quote(self.postgres_password.get_secret_value(), safe="")
        return (
            f"{driver}://{quote(self.postgres_user, safe='')}:{password}"
            f"@{self.postgres_host}:{self.postgres_port}/{database or self.postgres_db}"
        )

    @property
    def s3_endpoint(self) -> str:
        return f"{self.s3_host}:{self.s3_port}"

    @property
    def s3_endpoint_url(self) -> str:
        return f"{'https' if self.s3_secure else 'http'}://{self.s3_endpoint}"

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.s3_bucket_images, self.s3_bucket_artifacts, self.s3_bucket_mlflow)

    @property
    def grafana_base_url(self) -> str:
        return self.grafana_url or f"http://{self.bind_host}:{self.grafana_port}"

    @property
    def docker_network(self) -> str:
        if self.rakuten_docker_network:
            return self.rakuten_docker_network
        return "host" if self.rakuten_mode is Mode.LOCAL else "rakuten-mlops"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://{self.bind_host}:{self.mlflow_port}"


def env_file() -> Path:
    return Path(os.environ.get("RAKUTEN_ENV_FILE") or project_root() / ".env")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings(_env_file=env_file())


def settings_environment(
    environ: Mapping[str, str] = os.environ,
) -> tuple[dict[str, str], dict[str, str]]:
    """The settings set in `environ`, as (plain, secret) variables.

    What a container needs to run with this process's configuration: the DockerOperator
    passes the first as `environment` and the second as `private_environment`, which
    Airflow keeps out of the task's rendered fields and logs.
    """
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        key = name.upper()
        if key in environ:
            is_secret = SecretStr in (field.annotation, *get_args(field.annotation))
            (secret if is_secret else plain)[key] = environ[key]
    return plain, secret


# A variable holding a secret, by its name (its value may be left empty in .env.example).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN")


def needs_secret(line: str, *, placeholder_too: bool = True) -> bool:
    """`KEY=` (a secret variable left empty) or `KEY=change-me`: a secret to generate."""
    key, sep, value = line.partition("=")
    if not sep or line.lstrip().startswith("#"):
        return False
    value = value.strip()
    if value == PLACEHOLDER_SECRET:  # .env.example before secrets were left empty
        return placeholder_too
    return value == "" and bool(SECRET_NAME.search(key.strip()))


def render_env_file(template: str, *, placeholder_too: bool = True) -> str:
    """`template` with every empty or placeholder secret replaced by a fresh random one."""
    lines = []
    for line in template.splitlines():
        if needs_secret(line, placeholder_too=placeholder_too):
            key = line.partition("=")[0].strip()
            line = f"{key}={_new_secret(key)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _new_secret(key: str) -> str:
    if key == "AIRFLOW_FERNET_KEY":
        # Fernet wants 32 url-safe base64-encoded bytes.
        import base64

        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(24)
