"""MLflow's model registry, read and written for this project's one registered model.

Who is the champion, the registered version of a run, a run's logged model, and what
`make demo` prints about the champion. Decisions (whether the alias moves) belong to
rakuten_mlops.ml.promotion; the promote stage (rakuten_mlops.ml.stages) calls both.
"""

from __future__ import annotations

from typing import Any

from rakuten_mlops.errors import PromotionError
from rakuten_mlops.ml import tracking
from rakuten_mlops.ml.evaluate import Gain
from rakuten_mlops.settings import Settings

CHALLENGER_ALIAS = "challenger"
MODEL_ARTIFACT = "model"
# What MLflow answers when the model or its alias does not exist (server and file stores
# differ); any other error, such as MLflow being down, must not read as "no champion".
NO_SUCH_MODEL_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def configure(settings: Settings) -> None:
    """Point MLflow at the settings' server and S3 store as the admin; fail fast when down."""
    tracking.configure(settings, "admin")


def client(settings: Settings):
    """An MlflowClient as the admin (training, promotion)."""
    return tracking.client(settings, "admin")


def model_uri(settings: Settings, run_id: str) -> str:
    run = client(settings).get_run(run_id)
    return run.data.tags.get("model_uri") or f"runs:/{run_id}/{MODEL_ARTIFACT}"


def load_run_model(settings: Settings, run_id: str):
    """The pipeline logged by training run `run_id`."""
    import mlflow.sklearn  # heavy: only the stages that load a model pay for it

    return mlflow.sklearn.load_model(model_uri(settings, run_id))


def load_version_model(settings: Settings, name: str, version: str):
    """The pipeline of registered version `name` v`version`."""
    import mlflow.sklearn

    configure(settings)
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def register(settings: Settings, run_id: str, model_name: str | None = None):
    """The registered version of this run's model (created once; re-runs reuse it)."""
    import mlflow

    name = model_name or settings.model_name
    mlflow_client = client(settings)
    existing = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if existing:
        return max(existing, key=lambda v: int(v.version))
    run = mlflow_client.get_run(run_id)
    tags = {
        key: run.data.tags[key]
        for key in ("dataset_id", "test_split_sha256", "best_family")
        if key in run.data.tags
    }
    return mlflow.register_model(model_uri(settings, run_id), name, tags=tags)


def champion(settings: Settings, model_name: str | None = None):
    """The version under the champion alias, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(
            model_name or settings.model_name, settings.model_alias
        )
    except MlflowException as exc:
        if exc.error_code in NO_SUCH_MODEL_CODES:
            return None
        raise


def set_alias(settings: Settings, name: str, version: str, alias: str) -> None:
    """Move `alias` to `version`; a new champion is nobody's challenger any more."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    mlflow_client.set_registered_model_alias(name, alias, version)
    if alias == CHALLENGER_ALIAS:
        return
    try:
        challenger = mlflow_client.get_model_version_by_alias(name, CHALLENGER_ALIAS)
    except MlflowException as exc:
        if exc.error_code in NO_SUCH_MODEL_CODES:
            return
        raise
    if challenger.version == version:
        mlflow_client.delete_registered_model_alias(name, CHALLENGER_ALIAS)


def champion_summary(settings: Settings, model_name: str | None = None) -> dict[str, Any]:
    """What `make demo` prints about the champion: version, family, metrics, MLflow URLs."""
    name = model_name or settings.model_name
    version = champion(settings, name)
    if version is None:
        raise PromotionError(f"no {name}@{settings.model_alias} yet: run the ml_pipeline DAG")
    run = client(settings).get_run(version.run_id)
    metrics, tags = run.data.metrics, run.data.tags
    summary: dict[str, Any] = {
        "model": f"{name} v{version.version} (@{settings.model_alias})",
        "family": tags.get("best_family", "?"),
        "profile": tags.get("profile", "?"),
        "trained on": f"dataset {tags.get('dataset_id', '?')} "
        f"({run.data.params.get('n_train', '?')} training products)",
    }
    for key in ("cv_f1_weighted", "test_f1_weighted", "test_accuracy", "baseline_test_f1_weighted"):
        if key in metrics:
            summary[key] = f"{metrics[key]:.4f}"
    keys = [f"test_f1_weighted_gain_over_baseline{end}" for end in ("", "_low", "_high")]
    if set(keys) <= set(metrics):
        gain = Gain(*(metrics[key] for key in keys))
        summary["gain over baseline"] = (
            f"{gain}: {'clear' if gain.clear else 'within resampling noise'}"
        )
    summary["promotion"] = (version.tags or {}).get("promotion", "")
    base = settings.tracking_uri.rstrip("/")
    summary["MLflow run"] = tracking.run_ui_url(base, run.info.experiment_id, run.info.run_id)
    summary["MLflow model"] = f"{base}/#/models/{name}/versions/{version.version}"
    return summary
