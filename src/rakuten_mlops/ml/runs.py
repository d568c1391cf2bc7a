"""What a training run records in MLflow: the search, the model, its test evaluation.

One run per training: parameters, the dataset version it trained on, one nested run per
model family with its cross-validation results, timings, the fitted pipeline with its
label mapping; then the test evaluation (weighted F1, accuracy, per-class report,
confusion matrix, and the test rows' predictions the promotion gate resamples) on the
same run. Called by the stages (rakuten_mlops.ml.stages), which own the inputs.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Any

import mlflow
import mlflow.artifacts
import mlflow.data
import mlflow.sklearn
import numpy as np
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from rakuten_mlops.ml import tracking
from rakuten_mlops.ml.evaluate import Evaluation, confusion_figure
from rakuten_mlops.ml.registry import MODEL_ARTIFACT
from rakuten_mlops.ml.train import INPUT_COLUMNS, training_rows
from rakuten_mlops.settings import Settings

# What the logged model needs to load: exact versions of the running environment.
REQUIREMENT_DISTRIBUTIONS = (
    "scikit-learn",
    "xgboost-cpu",
    "numpy",
    "scipy",
    "pandas",
    "cloudpickle",
)
# The test rows' truth and predictions (and the baseline's): what the gate resamples.
PREDICTIONS_ARTIFACT = "evaluation/test_predictions.json"


def pip_requirements() -> list[str]:
    found = []
    for name in REQUIREMENT_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


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
    tracking.configure(settings, "admin")
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
    experiment_ref = tracking.experiment_id(settings, experiment)
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
                # race: one successive halving across the families (each family's
                # cv_results.csv gives every candidate's rows per rung: its budget).
                "search": profile.get("search", "per_family"),
                **({"race_factor": profile["race"]["factor"]} if profile.get("race") else {}),
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


def log_evaluation(
    settings: Settings,
    run_id: str,
    evaluation,
    categories: dict[int, str],
    gain=None,
    baseline: Evaluation | None = None,
) -> dict[str, float]:
    """Test metrics, per-class report and confusion matrix, on the training run; `gain`
    (an `evaluate.Gain`) is the model's lead over the plain baseline on the same rows."""
    tracking.configure(settings, "admin")
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
        import matplotlib.pyplot as plt  # after confusion_figure chose the Agg backend

        plt.close(figure)
        mlflow.log_dict(_predictions(evaluation, baseline), PREDICTIONS_ARTIFACT)
        mlflow.set_tag("stage", "evaluated")
    return metrics


def _predictions(evaluation: Evaluation, baseline: Evaluation | None) -> dict[str, Any]:
    return {
        "truth": evaluation.truth.tolist(),
        "predicted": evaluation.predicted.tolist(),
        "baseline": None if baseline is None else baseline.predicted.tolist(),
    }


def logged_predictions(run_id: str) -> dict[str, np.ndarray] | None:
    """The test predictions the evaluate stage logged (None for runs from before it did)."""
    try:
        data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{PREDICTIONS_ARTIFACT}")
    except MlflowException:
        return None
    return {
        key: np.asarray(values, dtype=np.int64)
        for key, values in data.items()
        if values is not None
    }
