"""How every MLflow client of the project reaches the server: the one place that sets
its URI, its S3 credentials and its basic-auth user.

Two roles: `admin` (training, promotion: the Airflow tasks, the CLI, the tests) and
`reader` (the prediction API, which may read the registry but never move an alias).
MLflow's client reads its credentials from MLFLOW_TRACKING_USERNAME/PASSWORD in the
environment, so that is where they go; values already in the environment win (the
supervisor and compose give each service its role explicitly).

The HTTP retries and timeout are per role (ROLE_LIMITS) and set, not defaulted: the
last `configure` in a process decides, never an earlier caller's leftovers.
"""

from __future__ import annotations

import os
from typing import Literal

from rakuten_mlops.settings import Settings

Role = Literal["admin", "reader"]
# (HTTP retries, timeout in seconds): the API must fail fast and fall back to its
# export instead of waiting through MLflow's minutes of retries; a training job waits.
ROLE_LIMITS: dict[str, tuple[int, int]] = {"admin": (2, 60), "reader": (1, 15)}


def s3_client_env(settings: Settings) -> dict[str, str]:
    """What boto3-based clients (MLflow artifacts) need to reach the S3 store."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": settings.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key.get_secret_value(),
        "AWS_DEFAULT_REGION": settings.s3_region,
    }


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
    return {
        **s3_client_env(settings),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        **credentials(settings, role),
    }


def configure(settings: Settings, role: Role) -> None:
    """Point this process's MLflow client at the server as `role`; fail fast when it is down."""
    # mlflow is imported where used: the stack supervisor reads this module's
    # environment helpers and must not pay for importing MLflow (seconds).
    import mlflow

    retries, timeout = ROLE_LIMITS[role]
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    for key, value in client_env(settings, role).items():
        if key != "MLFLOW_TRACKING_URI":  # set below, for this process only
            os.environ.setdefault(key, value)
    # MLflow 3 resolves models:/ URIs through the process-wide registry URI.
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


def client(settings: Settings, role: Role = "admin"):
    """A configured MlflowClient of `role` (tracking and registry on the same server)."""
    from mlflow import MlflowClient

    configure(settings, role)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def experiment_id(settings: Settings, name: str | None = None) -> str:
    """The id of experiment `name` (default: the settings'), created if missing."""
    import mlflow

    configure(settings, "admin")
    name = name or settings.mlflow_experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name)


# MLflow 3.17's UI opens an experiment in its GenAI view (Overview, Traces) unless the
# link asks for the training view: `workflowType` is the UI's own switch (its sidebar's
# "GenAI | Model training", remembered per browser); the experiment tag
# `mlflow.experimentKind` no longer decides it.
CLASSIC_VIEW = "workflowType=machine_learning"


def experiment_ui_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at `base`, in the training view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{CLASSIC_VIEW}"


def run_ui_url(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page in the MLflow UI at `base`, in the training view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{CLASSIC_VIEW}"
