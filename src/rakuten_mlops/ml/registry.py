"""MLflow: what a training run logs, how its model is registered, and when it is promoted.

One run per training: parameters, the dataset version it trained on, one nested run per
model family with its cross-validation results, timings, the fitted pipeline with its
label mapping; then the test evaluation (weighted F1, accuracy, per-class report,
confusion matrix) on the same run.

Promotion: the run's model becomes a new version of the registered model. The alias
`champion` moves to it only when its test weighted F1 beats the current champion's *on
the same test split* (compared from the champion's logged metric when its run used the
same split, else by scoring the champion on this run's test split). The first version is
promoted. Otherwise the version gets the alias `challenger`, and the run and the version
say why. The champion is exported to `models/` (joblib + JSON) for use without MLflow.
Before `champion` moves, the version's artifact checksum is recorded in PostgreSQL: the
API loads nothing else (rakuten_mlops.ml.trust).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rakuten_mlops.settings import Settings

CHALLENGER_ALIAS = "challenger"
MODEL_ARTIFACT = "model"
# What the logged model needs to load: exact versions of the running environment.
REQUIREMENT_DISTRIBUTIONS = (
    "scikit-learn",
    "xgboost-cpu",
    "numpy",
    "scipy",
    "pandas",
    "cloudpickle",
)


def configure(settings: Settings) -> None:
    """Point MLflow at the settings' server and S3 store as the admin; fail fast when down."""
    from rakuten_mlops.ml.tracking import configure as configure_tracking

    configure_tracking(settings, "admin")


def client(settings: Settings):
    from mlflow import MlflowClient

    configure(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def pip_requirements() -> list[str]:
    found = []
    for name in REQUIREMENT_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def experiment_id(settings: Settings, name: str | None = None) -> str:
    import mlflow

    configure(settings)
    name = name or settings.mlflow_experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow.create_experiment(name)


# --------------------------------------------------------------------------- training


def label_mapping(pipeline, categories: dict[int, str]) -> dict[str, Any]:
    """The order of the model's scores (predict_proba columns) and each code's name."""
    classes = [int(code) for code in pipeline.classes_]
    return {
        "classes": classes,
        "categories": {str(code): categories.get(code, "") for code in classes},
    }


def log_training(
    settings: Settings,
    *,
    dataset,
    profile: dict[str, Any],
    result,
    pipeline,
    refit_seconds: float,
    temperature: float | None = None,
    experiment: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """One MLflow run for a finished search and its refit model; returns the run id."""
    import mlflow
    import mlflow.data
    import mlflow.sklearn
    import pandas as pd
    import yaml
    from mlflow.models import infer_signature

    from rakuten_mlops.ml.train import INPUT_COLUMNS, training_rows

    configure(settings)
    manifest = dataset.manifest
    best = result.best
    tags = {
        "dataset_id": manifest["dataset_id"],
        "dataset_sha256": manifest["sha256"],
        "test_split_sha256": manifest["test_split_sha256"],
        "load_batches": ",".join(str(b) for b in manifest["load_batches"]),
        "profile": profile["name"],
        "best_family": best.family,
        "stage": "trained",
        **(extra_tags or {}),
    }
    experiment_ref = experiment_id(settings, experiment)
    with mlflow.start_run(
        experiment_id=experiment_ref,
        run_name=f"{profile['name']}-{manifest['dataset_id'][:8]}-{best.family}",
        tags=tags,
    ) as run:
        mlflow.log_params(
            {
                "profile": profile["name"],
                "cv_folds": profile["cv_folds"],
                "scoring": "f1_weighted",
                "train_subsets": ",".join(profile["train_subsets"]),
                "calibration": profile["calibration"],
                "n_train": result.n_train,
                "families": ",".join(result.families),
                "best_family": best.family,
                "dataset_id": manifest["dataset_id"],
                "dataset_rows": manifest["rows"],
                **{f"dataset_rows_{k}": v for k, v in manifest["subsets"].items()},
                **{f"best.{k}": _param(v) for k, v in best.best_params.items()},
                **({"score_temperature": round(temperature, 6)} if temperature else {}),
            }
        )
        train = training_rows(dataset.frame, profile)
        mlflow.log_input(
            mlflow.data.from_pandas(
                train[[*INPUT_COLUMNS, "prdtypecode"]].reset_index(drop=True),
                source=manifest.get("s3_uri") or manifest.get("local_path") or "lake",
                targets="prdtypecode",
                name=f"rakuten-products-{manifest['dataset_id']}",
                digest=manifest["sha256"][:16],
            ),
            context="training",
        )
        mlflow.log_metrics(
            {
                "cv_f1_weighted": best.cv_score,
                "cv_f1_weighted_std": best.cv_std,
                "search_seconds": result.seconds,
                "search_peak_rss_mb": result.peak_rss_mb,
                "refit_seconds": refit_seconds,
                **{f"cv_f1_weighted.{name}": r.cv_score for name, r in result.families.items()},
                **{f"search_seconds.{name}": r.seconds for name, r in result.families.items()},
            }
        )
        for name, family in result.families.items():
            with mlflow.start_run(
                experiment_id=experiment_ref, run_name=name, nested=True, tags={"family": name}
            ):
                spec = profile["families"][name]
                mlflow.log_params(
                    {
                        "family": name,
                        "search": family.search,
                        "n_candidates": family.n_candidates,
                        "n_fits": family.n_fits,
                        "grid": json.dumps(spec.get("grid", {}), default=str)[:6000],
                        "fixed": json.dumps(spec.get("fixed", {}), default=str)[:6000],
                        **(
                            {"n_resources": ",".join(map(str, family.n_resources))}
                            if family.n_resources
                            else {}
                        ),
                        **{f"best.{k}": _param(v) for k, v in family.best_params.items()},
                    }
                )
                mlflow.log_metrics(
                    {
                        "cv_f1_weighted": family.cv_score,
                        "cv_f1_weighted_std": family.cv_std,
                        "seconds": family.seconds,
                        "peak_rss_mb": family.peak_rss_mb,
                    }
                )
                table = family.cv_results.copy()
                table["params"] = table["params"].map(lambda p: json.dumps(p, default=str))
                mlflow.log_text(table.to_csv(index=False), "cv_results.csv")
        mapping = label_mapping(pipeline, dataset.categories)
        mlflow.log_dict(mapping, "label_mapping.json")
        mlflow.log_dict(result.summary(), "search_summary.json")
        mlflow.log_dict(manifest, "dataset_manifest.json")
        mlflow.log_text(yaml.safe_dump(profile, sort_keys=False), "profile.yaml")
        example = train[INPUT_COLUMNS].head(5).reset_index(drop=True).fillna("")
        example = example.astype({"designation": str, "description": str})
        signature = infer_signature(
            example, pd.Series(pipeline.predict(example), name="prdtypecode")
        )
        info = mlflow.sklearn.log_model(
            pipeline,
            name=MODEL_ARTIFACT,
            pip_requirements=pip_requirements(),
            # skops (the default) takes ~30 s to save a TF-IDF pipeline and needs every
            # project class declared trusted; the registry is ours, so pickle is fine.
            serialization_format="cloudpickle",
            signature=signature,
            metadata={"label_mapping": mapping, "dataset_id": manifest["dataset_id"]},
        )
        mlflow.set_tag("model_uri", info.model_uri)
        return run.info.run_id


def _param(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text[:6000]


def model_uri(settings: Settings, run_id: str) -> str:
    run = client(settings).get_run(run_id)
    return run.data.tags.get("model_uri") or f"runs:/{run_id}/{MODEL_ARTIFACT}"


def load_run_model(settings: Settings, run_id: str):
    import mlflow.sklearn

    configure(settings)
    return mlflow.sklearn.load_model(model_uri(settings, run_id))


def log_evaluation(
    settings: Settings,
    run_id: str,
    evaluation,
    categories: dict[int, str],
    gain=None,
) -> dict[str, float]:
    """Test metrics, per-class report and confusion matrix, on the training run; `gain`
    (an `evaluate.Gain`) is the model's lead over the plain baseline on the same rows."""
    import mlflow

    from rakuten_mlops.ml.evaluate import confusion_figure

    configure(settings)
    metrics = evaluation.metrics()
    metrics["test_predict_seconds"] = evaluation.predict_seconds
    if gain is not None:
        metrics["baseline_test_f1_weighted"] = evaluation.f1_weighted - gain.f1_weighted
        metrics["test_f1_weighted_gain_over_baseline"] = gain.f1_weighted
        metrics["test_f1_weighted_gain_over_baseline_low"] = gain.low
        metrics["test_f1_weighted_gain_over_baseline_high"] = gain.high
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        report = evaluation.report_frame(categories)
        mlflow.log_text(report.to_csv(index=False), "evaluation/per_class_report.csv")
        mlflow.log_dict(evaluation.report, "evaluation/classification_report.json")
        figure = confusion_figure(evaluation, categories)
        mlflow.log_figure(figure, "evaluation/confusion_matrix.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
        mlflow.set_tag("stage", "evaluated")
    return metrics


# --------------------------------------------------------------------------- promotion


@dataclass
class Promotion:
    model_name: str
    version: str
    run_id: str
    promoted: bool
    alias: str
    reason: str
    test_f1_weighted: float
    champion_version: str | None = None
    champion_f1_weighted: float | None = None
    comparison: str | None = None  # how the champion's score was obtained
    exported: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# What MLflow answers when the model or its alias does not exist (server and file stores
# differ); any other error, such as MLflow being down, must not read as "no champion".
NO_SUCH_MODEL_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


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


def champion_score_on(settings: Settings, champion_version, run) -> tuple[float, str]:
    """The champion's test weighted F1 on `run`'s test split, and how it was obtained."""
    mlflow_client = client(settings)
    champion_run = mlflow_client.get_run(champion_version.run_id)
    same_split = champion_run.data.tags.get("test_split_sha256") == run.data.tags.get(
        "test_split_sha256"
    )
    recorded = champion_run.data.metrics.get("test_f1_weighted")
    if same_split and recorded is not None:
        return float(recorded), "logged on the same test split"
    import mlflow.sklearn

    from rakuten_mlops.ml.evaluate import evaluate
    from rakuten_mlops.ml.dataset import load_dataset

    dataset = load_dataset(settings, run.data.tags["dataset_id"])
    model = mlflow.sklearn.load_model(f"models:/{champion_version.name}/{champion_version.version}")
    score = evaluate(model, dataset.frame).f1_weighted
    return score, "re-scored on this run's test split (the champion's run used another one)"


def promote(
    settings: Settings,
    run_id: str,
    model_name: str | None = None,
    export: bool = True,
) -> Promotion:
    """Register the run's model; move `champion` to it only if it beats the champion."""
    import mlflow

    name = model_name or settings.model_name
    mlflow_client = client(settings)
    run = mlflow_client.get_run(run_id)
    score = run.data.metrics.get("test_f1_weighted")
    if score is None:
        raise ValueError(f"run {run_id} has no test_f1_weighted: run `evaluate` first")
    version = register(settings, run_id, name)
    current = champion(settings, name)
    champion_f1 = comparison = None
    if current is None:
        promoted, reason = True, "first registered model: promoted"
    elif current.version == version.version:
        promoted, reason = True, f"version {version.version} is already the champion"
    else:
        champion_f1, comparison = champion_score_on(settings, current, run)
        if score > champion_f1:
            promoted = True
            reason = (
                f"test weighted F1 {score:.4f} beats champion v{current.version}'s "
                f"{champion_f1:.4f} ({comparison})"
            )
        else:
            promoted = False
            reason = (
                f"test weighted F1 {score:.4f} does not beat champion v{current.version}'s "
                f"{champion_f1:.4f} ({comparison}): stays a challenger"
            )
    alias = settings.model_alias if promoted else CHALLENGER_ALIAS
    if promoted:
        # Before the alias moves: the API loads only a champion whose artifacts hash to
        # what is recorded here (rakuten_mlops.ml.trust).
        from rakuten_mlops.ml.trust import trust_version

        trust_version(settings, name, str(version.version), run_id, reason[:5000])
    mlflow_client.set_registered_model_alias(name, alias, version.version)
    if promoted:
        # A promoted version is nobody's challenger any more.
        try:
            if (
                mlflow_client.get_model_version_by_alias(name, CHALLENGER_ALIAS).version
                == version.version
            ):
                mlflow_client.delete_registered_model_alias(name, CHALLENGER_ALIAS)
        except Exception:  # noqa: BLE001 - no challenger alias
            pass
    mlflow_client.set_model_version_tag(name, version.version, "promotion", reason[:5000])
    result = Promotion(
        model_name=name,
        version=str(version.version),
        run_id=run_id,
        promoted=promoted,
        alias=alias,
        reason=reason,
        test_f1_weighted=float(score),
        champion_version=None if current is None else str(current.version),
        champion_f1_weighted=champion_f1,
        comparison=comparison,
    )
    if promoted and export:
        result.exported = str(export_champion(settings, name))
    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags(
            {
                "stage": "promoted" if promoted else "challenger",
                "promotion_decision": alias,
                "promotion_reason": reason[:5000],
                "registered_version": str(version.version),
            }
        )
        if champion_f1 is not None:
            mlflow.log_metric("champion_test_f1_weighted_before", champion_f1)
        mlflow.log_dict(result.as_dict(), "promotion.json")
    # For the Model dashboard (Grafana reads PostgreSQL, not MLflow). Keyed by version
    # and alias, so a retried promote task records the same decision once.
    from rakuten_mlops.monitoring import record_promotion

    record_promotion(
        settings,
        {
            **result.as_dict(),
            "cv_f1_weighted": run.data.metrics.get("cv_f1_weighted"),
            "best_family": run.data.tags.get("best_family"),
            "dataset_id": run.data.tags.get("dataset_id"),
        },
    )
    return result


def champion_summary(settings: Settings, model_name: str | None = None) -> dict[str, Any]:
    """What `make demo` prints about the champion: version, family, metrics, MLflow URLs."""
    name = model_name or settings.model_name
    version = champion(settings, name)
    if version is None:
        raise ValueError(f"no {name}@{settings.model_alias} yet: run the ml_pipeline DAG")
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
        from rakuten_mlops.ml.evaluate import Gain

        gain = Gain(*(metrics[key] for key in keys))
        summary["gain over baseline"] = (
            f"{gain}: {'clear' if gain.clear else 'within resampling noise'}"
        )
    summary["promotion"] = (version.tags or {}).get("promotion", "")
    base = settings.tracking_uri.rstrip("/")
    summary["MLflow run"] = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    summary["MLflow model"] = f"{base}/#/models/{name}/versions/{version.version}"
    return summary


# --------------------------------------------------------------------------- export


def export_paths(settings: Settings, model_name: str | None = None) -> tuple[Path, Path]:
    folder = settings.path(settings.models_dir)
    name = model_name or settings.model_name
    return folder / f"{name}.joblib", folder / f"{name}.json"


def export_champion(settings: Settings, model_name: str | None = None) -> Path:
    """The champion as `models/<name>.joblib` + `models/<name>.json` (no MLflow needed to load).

    Both files are replaced atomically (written aside, then renamed), the model first, so
    a reader never sees metadata describing a model that is not there yet.
    """
    import hashlib

    import joblib
    import mlflow.artifacts
    import mlflow.sklearn

    name = model_name or settings.model_name
    version = champion(settings, name)
    if version is None:
        raise ValueError(f"no {name}@{settings.model_alias} to export")
    mlflow_client = client(settings)
    run = mlflow_client.get_run(version.run_id)
    model = mlflow.sklearn.load_model(f"models:/{name}/{version.version}")
    model_file, meta_file = export_paths(settings, name)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=model_file.parent, suffix=".joblib.tmp", delete=False
    ) as tmp:
        joblib.dump(model, tmp.name)
        digest = hashlib.sha256(Path(tmp.name).read_bytes()).hexdigest()
    os.replace(tmp.name, model_file)
    try:
        mapping = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/label_mapping.json")
        manifest = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/dataset_manifest.json")
    except Exception:  # noqa: BLE001 - older runs: rebuild what we can
        mapping = label_mapping(model, {})
        manifest = {}
    params = dict(run.data.params)
    meta = {
        "name": name,
        "version": str(version.version),
        "alias": settings.model_alias,
        "run_id": version.run_id,
        "model_path": model_file.name,
        "model_sha256": digest,
        "format": "joblib (scikit-learn Pipeline; input: a frame with designation, description)",
        "metrics": {k: v for k, v in run.data.metrics.items()},
        "params": params,
        "label_mapping": mapping,
        "training_data": {
            key: manifest.get(key)
            for key in (
                "dataset_id",
                "sha256",
                "rows",
                "subsets",
                "load_batches",
                "test_split_sha256",
                "s3_uri",
            )
        },
        "promotion": (version.tags or {}).get("promotion"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if "score_temperature" in params:
        meta["score_temperature"] = float(params["score_temperature"])
    with tempfile.NamedTemporaryFile(
        "w", dir=meta_file.parent, suffix=".json.tmp", delete=False
    ) as tmp:
        json.dump(meta, tmp, indent=2, sort_keys=True, default=str)
    os.replace(tmp.name, meta_file)
    return model_file


def load_export(settings: Settings, model_name: str | None = None):
    """(pipeline, metadata) of the exported champion, without MLflow."""
    import joblib

    model_file, meta_file = export_paths(settings, model_name)
    return joblib.load(model_file), json.loads(meta_file.read_text())
