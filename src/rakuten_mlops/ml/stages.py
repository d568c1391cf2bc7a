"""The ML stages the CLI and the ml_pipeline DAGs run: train, evaluate, promote, export.

The glue, and the only ML code that reaches MLflow, PostgreSQL and S3 through the
adapters (dataset, runs, registry, promotion records, export, trust): each stage reads
its inputs by reference (a dataset id, a run id), calls the pure modules (train,
evaluate, promotion.decide) and records what they returned.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from rakuten_mlops.errors import EvaluationError, PromotionError
from rakuten_mlops.ml import registry, runs, tracking
from rakuten_mlops.ml.dataset import Dataset
from rakuten_mlops.ml.evaluate import (
    Evaluation,
    baseline_evaluation,
    evaluate_pipeline,
    f1_gain,
    score_predictions,
)
from rakuten_mlops.ml.export import write_export
from rakuten_mlops.ml.image_stage import load_dataset_with_images  # issue 17
from rakuten_mlops.ml.profile import load_profile, promotion_policy
from rakuten_mlops.ml.promotion import (
    ALREADY_CHAMPION,
    GateDecision,
    Promotion,
    compare,
    record_promotion,
)
from rakuten_mlops.ml.train import train_best
from rakuten_mlops.ml.trust import trust_version
from rakuten_mlops.settings import Settings


def run_train(
    settings: Settings,
    dataset_id: str,
    profile: str | Path | dict | None = None,
    families: list[str] | None = None,
    model_name: str | None = None,
    experiment: str | None = None,
    extra_tags: dict[str, str] | None = None,
    report=print,
) -> str:
    """Stage `train`: search + refit on dataset `dataset_id`, all logged to MLflow; the run id."""
    registry.configure(settings)  # fail before a long search if MLflow is misconfigured
    profile = load_profile(profile or settings.training_profile)
    dataset = load_dataset_with_images(settings, dataset_id)
    report(f"dataset {dataset_id}: {dataset.manifest['rows']} rows {dataset.manifest['subsets']}")
    trained = train_best(dataset.frame, profile, families, report=report)
    run_id = runs.log_training(
        settings,
        dataset=dataset,
        profile=profile,
        result=trained.search,
        pipeline=trained.pipeline,
        refit_seconds=trained.refit_seconds,
        temperature=trained.temperature,
        experiment=experiment,
        extra_tags=extra_tags,
    )
    report(f"mlflow run {run_id}")
    return run_id


def logged_profile(run_id: str) -> dict[str, Any]:
    """The profile a run was trained with, as it logged it."""
    import mlflow.artifacts  # heavy; only the stages that read a run need it

    return yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/profile.yaml"))


def run_evaluate(
    settings: Settings, run_id: str, baseline: bool | None = None, report=print
) -> dict[str, float]:
    """Stage `evaluate`: the run's logged model, scored once on its dataset's test split.

    Loads the model back from MLflow (so what is scored is what was logged), and, unless
    the run's profile says `baseline: false`, trains the plain baseline on the same rows
    for comparison.
    """
    run = registry.client(settings).get_run(run_id)
    dataset = load_dataset_with_images(settings, run.data.tags["dataset_id"])
    pipeline = registry.load_run_model(settings, run_id)
    evaluation = evaluate_pipeline(pipeline, dataset.frame)
    report(
        f"test: weighted F1 {evaluation.f1_weighted:.4f}, accuracy {evaluation.accuracy:.4f} "
        f"on {evaluation.n_test} products"
    )
    profile = logged_profile(run_id)
    gain = plain = None
    if baseline if baseline is not None else profile.get("baseline", True):
        plain = baseline_evaluation(dataset.frame, profile["train_subsets"])
        gain = f1_gain(evaluation, plain)
        report(
            f"baseline (word+char TF-IDF + LinearSVC): test weighted F1 {plain.f1_weighted:.4f}; "
            f"the model {'clearly beats it' if gain.clear else 'does not clearly beat it'}: "
            f"{gain}"
        )
    return runs.log_evaluation(settings, run_id, evaluation, dataset.categories, gain, plain)


# --------------------------------------------------------------------------- promote


def promote(
    settings: Settings,
    run_id: str,
    model_name: str | None = None,
    export: bool = True,
) -> Promotion:
    """Register the run's model; the gate (rakuten_mlops.ml.promotion) decides whether
    `champion` moves to it; the decision and its numbers go to MLflow and PostgreSQL."""
    name = model_name or settings.model_name
    mlflow_client = registry.client(settings)
    run = mlflow_client.get_run(run_id)
    score = run.data.metrics.get("test_f1_weighted")
    if score is None:
        raise PromotionError(f"run {run_id} has no test_f1_weighted: run `evaluate` first")
    version = registry.register(settings, run_id, name)
    current = registry.champion(settings, name)
    champion_f1 = comparison = None
    if current is not None and current.version == version.version:
        decision = GateDecision(
            True, ALREADY_CHAMPION, f"version {version.version} is already the champion"
        )
    else:
        profile = logged_profile(run_id)
        dataset = load_dataset_with_images(settings, run.data.tags["dataset_id"])
        candidate, baseline = candidate_and_baseline(settings, run_id, dataset, profile)
        champion_evaluation = None
        if current is not None:
            champion_model = registry.load_version_model(settings, name, str(current.version))
            champion_evaluation = evaluate_pipeline(champion_model, dataset.frame)
            champion_f1 = champion_evaluation.f1_weighted
            comparison = f"champion v{current.version} scored on this run's test split"
        decision = compare(candidate, champion_evaluation, baseline, promotion_policy(profile))
    promoted = decision.promote
    alias = settings.model_alias if promoted else registry.CHALLENGER_ALIAS
    if promoted:
        # Before the alias moves: the API loads only a champion whose artifacts hash to
        # what is recorded here (rakuten_mlops.ml.trust).
        trust_version(settings, name, str(version.version), run_id, decision.reason[:5000])
    registry.set_alias(settings, name, str(version.version), alias)
    mlflow_client.set_model_version_tag(name, version.version, "promotion", decision.reason[:5000])
    result = Promotion(
        model_name=name,
        version=str(version.version),
        run_id=run_id,
        promoted=promoted,
        alias=alias,
        reason=decision.reason,
        test_f1_weighted=float(score),
        champion_version=None if current is None else str(current.version),
        champion_f1_weighted=champion_f1,
        comparison=comparison,
        gate_outcome=decision.outcome,
        **decision.numbers(),
    )
    if promoted and export:
        result.exported = str(export_champion(settings, name))
    _log_decision(run_id, result, decision)
    record_promotion(
        settings,
        {
            **result.as_dict(),
            "cv_f1_weighted": run.data.metrics.get("cv_f1_weighted"),
            "best_family": run.data.tags.get("best_family"),
            "dataset_id": run.data.tags.get("dataset_id"),
            # What started the run (the control room's breach -> run -> decision chain).
            "airflow_run_id": run.data.tags.get("airflow_run_id"),
            "data_quality_run_id": run.data.tags.get("data_quality_run_id"),
        },
    )
    return result


def candidate_and_baseline(
    settings: Settings, run_id: str, dataset: Dataset, profile: dict[str, Any]
) -> tuple[Evaluation, Evaluation]:
    """The candidate's and the plain baseline's evaluations on the run's test rows: as the
    evaluate stage logged them, or (runs evaluated before it logged predictions, or
    without a baseline) computed now on the same rows."""
    logged = runs.logged_predictions(run_id)
    if logged is None:
        candidate = evaluate_pipeline(registry.load_run_model(settings, run_id), dataset.frame)
        logged = {"truth": candidate.truth, "predicted": candidate.predicted}
    test_truth = dataset.frame.loc[dataset.frame["subset"] == "test", "prdtypecode"].to_numpy()
    if len(logged["truth"]) != len(test_truth) or (logged["truth"] != test_truth).any():
        raise EvaluationError(f"run {run_id}'s logged predictions are not on its test rows")
    candidate = score_predictions(logged["truth"], logged["predicted"])
    if "baseline" in logged:
        baseline = score_predictions(logged["truth"], logged["baseline"])
    else:
        baseline = baseline_evaluation(dataset.frame, profile["train_subsets"])
    return candidate, baseline


def _log_decision(run_id: str, result: Promotion, decision: GateDecision) -> None:
    import mlflow  # heavy; only the promote stage writes to a run here

    with mlflow.start_run(run_id=run_id):
        mlflow.set_tags(
            {
                "stage": "promoted" if result.promoted else "challenger",
                "promotion_decision": result.alias,
                "promotion_reason": result.reason[:5000],
                "registered_version": result.version,
                "gate_outcome": decision.outcome,
            }
        )
        metrics = {f"gate_{key}": value for key, value in decision.numbers().items()}
        if result.champion_f1_weighted is not None:
            metrics["champion_test_f1_weighted_before"] = result.champion_f1_weighted
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.log_dict(result.as_dict(), "promotion.json")


# --------------------------------------------------------------------------- export


def export_champion(settings: Settings, model_name: str | None = None) -> Path:
    """The registry's champion written to models/ (rakuten_mlops.ml.export) for use
    without MLflow."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    name = model_name or settings.model_name
    version = registry.champion(settings, name)
    if version is None:
        raise PromotionError(f"no {name}@{settings.model_alias} to export")
    tracking.configure(settings, "admin")
    run = registry.client(settings).get_run(version.run_id)
    model = registry.load_version_model(settings, name, str(version.version))
    try:
        mapping = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/label_mapping.json")
        manifest = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/dataset_manifest.json")
    except MlflowException:  # older runs: rebuild what we can
        mapping = runs.label_mapping(model, {})
        manifest = {}
    params = dict(run.data.params)
    meta = {
        "name": name,
        "version": str(version.version),
        "alias": settings.model_alias,
        "run_id": version.run_id,
        "format": "joblib (scikit-learn Pipeline; input: a frame with designation, description)",
        "metrics": dict(run.data.metrics),
        "params": params,
        "label_mapping": mapping,
        "training_data": {
            key: manifest.get(key)
            for key in ("dataset_id", "sha256", "rows", "subsets", "load_batches",
                        "test_split_sha256", "s3_uri")
        },
        "promotion": (version.tags or {}).get("promotion"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if "score_temperature" in params:
        meta["score_temperature"] = float(params["score_temperature"])
    return write_export(settings, model, meta, name)
