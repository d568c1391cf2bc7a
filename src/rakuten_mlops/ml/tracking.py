"""How every MLflow client of the project reaches the server: the one place that sets
its URI, its S3 credentials and its basic-auth user.

Two roles: `admin` (training, promotion: the Airflow tasks, the CLI, the tests) and
`reader` (the prediction API, which may read the registry but never move an alias).
MLflow's client reads its credentials from MLFLOW_TRACKING_USERNAME/PASSWORD in the
environment, so that is where they go; values already in the environment win (the
supervisor and compose give each service its role explicitly).
"""

from __future__ import annotations

import os
from typing import Literal

from rakuten_mlops.settings import Settings

Role = Literal["admin", "reader"]


def credentials(settings: Settings, role: Role) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME/PASSWORD of `role` (empty when its password is not set)."""
    user, password = (
        (settings.mlflow_admin_user, settings.mlflow_admin_password)
        if role == "admin"
        else (settings.mlflow_reader_user, settings.mlflow_reader_password)
    )
    if password is None:
        return {}
    return {
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password.get_secret_value(),
    }


def client_env(settings: Settings, role: Role) -> dict[str, str]:
    """The environment an MLflow client process of `role` needs."""
    from rakuten_mlops.localstack.services import s3_client_env

    return {
        **s3_client_env(settings),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        **credentials(settings, role),
    }


def configure(settings: Settings, role: Role, retries: int = 2, timeout: int = 60) -> None:
    """Point this process's MLflow client at the server as `role`; fail fast when it is down."""
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout))
    for key, value in client_env(settings, role).items():
        if key != "MLFLOW_TRACKING_URI":  # set below, for this process only
            os.environ.setdefault(key, value)
    # MLflow 3 resolves models:/ URIs through the process-wide registry URI.
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
