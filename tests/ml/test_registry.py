"""Tracking, registry and promotion against the running MLflow (PostgreSQL + S3).

A first model is logged, evaluated, registered and promoted; a worse one trained on the
same split stays a challenger and says why; the champion loaded from the registry and
the exported copy in models/ predict identically. Both runs are trained once per session
by the stages (tests/ml/conftest.py) and promoted here under this module's own model
name; every run, experiment and model is deleted at the end.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid

import numpy as np
import pandas as pd
import pytest

from rakuten_mlops.ml import export, stages
from tests.support.ml import private_model
from tests.support.profiles import TINY_PROFILE

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def ml_settings(stack, settings, shared_dataset, tmp_path_factory):
    """A registered model of this module's own, reading the session's shared dataset."""
    folder = tmp_path_factory.mktemp("ml_settings")
    processed = shared_dataset.settings.processed_data_dir
    with private_model(settings, folder, "test-ml", processed) as own:
        yield own


@pytest.fixture(scope="module")
def dataset(shared_dataset):
    return shared_dataset.dataset


@pytest.fixture(scope="module")
def first(ml_settings, tiny_run):
    """The session's TINY_PROFILE run (trained and evaluated once, tests/ml/conftest.py),
    promoted here as this module's first model."""
    from rakuten_mlops.ml.stages import promote

    run_id, metrics = tiny_run
    return run_id, metrics, promote(ml_settings, run_id)


def test_the_dataset_snapshot_is_read_back_by_reference(ml_settings, dataset):
    from rakuten_mlops.ml.dataset import dataset_dir, load_dataset

    shutil.rmtree(dataset_dir(ml_settings, dataset.dataset_id))  # as on another machine
    again = load_dataset(ml_settings, dataset.dataset_id)  # from S3
    assert again.manifest["sha256"] == dataset.manifest["sha256"]
    pd.testing.assert_frame_equal(again.frame, dataset.frame, check_dtype=False)


def test_a_run_logs_search_data_version_model_and_evaluation(ml_settings, first, dataset):
    import mlflow.artifacts

    from rakuten_mlops.ml import registry

    run_id, metrics, _ = first
    client = registry.client(ml_settings)
    run = client.get_run(run_id)
    assert run.data.tags["dataset_sha256"] == dataset.manifest["sha256"]
    assert run.data.tags["test_split_sha256"] == dataset.manifest["test_split_sha256"]
    assert run.data.params["best_family"] == run.data.tags["best_family"]
    assert run.data.params["dataset_rows_train"] == str(dataset.manifest["subsets"]["train"])
    for key in (
        "cv_f1_weighted",
        "search_seconds",
        "refit_seconds",
        "test_f1_weighted",
        "test_accuracy",
        "baseline_test_f1_weighted",
    ):
        assert key in run.data.metrics, key
    assert metrics["test_f1_weighted"] == pytest.approx(run.data.metrics["test_f1_weighted"])
    gain = run.data.metrics["test_f1_weighted_gain_over_baseline"]
    assert gain == pytest.approx(
        run.data.metrics["test_f1_weighted"] - run.data.metrics["baseline_test_f1_weighted"]
    )
    low = run.data.metrics["test_f1_weighted_gain_over_baseline_low"]
    assert low <= gain <= run.data.metrics["test_f1_weighted_gain_over_baseline_high"]
    assert run.inputs.dataset_inputs[0].dataset.digest == dataset.manifest["sha256"][:16]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    assert sorted(child.data.tags["family"] for child in children) == sorted(
        TINY_PROFILE["families"]
    )
    for child in children:
        assert "cv_f1_weighted" in child.data.metrics
        table = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/cv_results.csv")
        assert len(table.strip().splitlines()) >= 3  # header + two candidates
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "evaluation")
    }
    assert {
        "label_mapping.json",
        "dataset_manifest.json",
        "profile.yaml",
        "evaluation/confusion_matrix.png",
        "evaluation/per_class_report.csv",
    } <= artifacts
    mapping = mlflow.artifacts.load_dict(f"runs:/{run_id}/label_mapping.json")
    assert len(mapping["classes"]) == 27 and mapping["categories"]["10"]


def test_the_first_model_is_registered_and_promoted(ml_settings, first):
    from rakuten_mlops.ml import registry

    run_id, _, promotion = first
    assert promotion.promoted and promotion.alias == "champion"
    assert promotion.reason == "first registered model: promoted"
    champion = registry.champion(ml_settings)
    assert champion.version == promotion.version and champion.run_id == run_id


def test_promotion_records_the_champions_artifact_checksum(ml_settings, first):
    """What the API checks before it loads a champion (rakuten_mlops.ml.trust)."""
    from rakuten_mlops.ml.trust import recorded_sha256, version_digest

    _, _, promotion = first
    name = ml_settings.model_name
    recorded = recorded_sha256(ml_settings, name, promotion.version)
    assert recorded == version_digest(ml_settings, name, promotion.version).sha256


def test_the_champion_summary_shows_its_scores_and_its_lead_over_the_baseline(
    ml_settings, first
):
    from rakuten_mlops.ml import registry

    _, metrics, promotion = first
    summary = registry.champion_summary(ml_settings)
    assert summary["model"].startswith(f"{ml_settings.model_name} v{promotion.version} ")
    assert summary["test_f1_weighted"] == f"{metrics['test_f1_weighted']:.4f}"
    gain = metrics["test_f1_weighted_gain_over_baseline"]
    assert summary["gain over baseline"].startswith(f"{gain:+.4f} (interval ")
    verdict = "clear" if metrics["test_f1_weighted_gain_over_baseline_low"] > 0 else "noise"
    assert summary["gain over baseline"].endswith(verdict)


def test_champion_from_the_registry_and_the_export_predict_identically(
    ml_settings, first, sample_frame
):
    import mlflow.sklearn

    from rakuten_mlops.ml import registry
    from rakuten_mlops.ml.train import split_xy

    run_id, _, promotion = first
    registry.configure(ml_settings)
    served = mlflow.sklearn.load_model(f"models:/{ml_settings.model_name}@champion")
    found = export.read_export(ml_settings)
    exported, meta = found.load(), found.metadata
    X, _ = split_xy(sample_frame[sample_frame["subset"] == "test"])  # noqa: N806
    np.testing.assert_array_equal(served.predict(X), exported.predict(X))
    np.testing.assert_array_equal(served.decision_function(X), exported.decision_function(X))
    assert meta["version"] == promotion.version and meta["run_id"] == run_id
    assert meta["label_mapping"]["classes"] == [int(c) for c in exported.classes_]
    assert meta["metrics"]["test_f1_weighted"] == pytest.approx(promotion.test_f1_weighted)
    assert meta["training_data"]["dataset_id"]
    model_file, _ = export.export_paths(ml_settings)
    assert meta["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()


def test_a_worse_model_stays_challenger_and_says_why(ml_settings, first, worse_run):
    """The session's WORSE_PROFILE run (trained on the same split), promoted here."""
    from rakuten_mlops.ml import registry

    first_run, _, first_promotion = first
    model_file, meta_file = export.export_paths(ml_settings)
    exported_before = (model_file.read_bytes(), meta_file.read_text())

    run_id = worse_run
    promotion = stages.promote(ml_settings, run_id)

    assert not promotion.promoted and promotion.alias == "challenger"
    assert promotion.champion_version == first_promotion.version
    assert promotion.champion_f1_weighted == pytest.approx(first_promotion.test_f1_weighted)
    assert promotion.test_f1_weighted < promotion.champion_f1_weighted
    # The gate: worse than the plain baseline beyond noise (checked first: such a model is
    # never promoted), and worse than the champion on the same test rows too.
    assert promotion.gate_outcome == "worse_than_baseline"
    assert promotion.gain_vs_baseline_high < 0 and promotion.gain_vs_champion_high < 0
    assert "clearly worse than the plain baseline" in promotion.reason
    assert promotion.comparison == (
        f"champion v{first_promotion.version} scored on this run's test split"
    )
    client = registry.client(ml_settings)
    name = ml_settings.model_name
    assert client.get_model_version_by_alias(name, "champion").version == first_promotion.version
    assert client.get_model_version_by_alias(name, "challenger").version == promotion.version
    from rakuten_mlops.ml.trust import recorded_sha256

    assert recorded_sha256(ml_settings, name, promotion.version) is None  # never promoted
    run = client.get_run(run_id)
    assert run.data.tags["promotion_decision"] == "challenger"
    assert run.data.tags["promotion_reason"] == promotion.reason
    assert client.get_model_version(name, promotion.version).tags["promotion"] == promotion.reason
    # models/ still holds the champion, untouched.
    assert (model_file.read_bytes(), meta_file.read_text()) == exported_before

    # Both decisions are in the lake, for the Model dashboard.
    from rakuten_mlops.storage import connect

    with connect(ml_settings) as conn:
        recorded = conn.execute(
            "SELECT version, alias, promoted, best_family FROM model_promotions"
            " WHERE model_name = %s ORDER BY version",
            (name,),
        ).fetchall()
    assert recorded == [
        (
            first_promotion.version,
            "champion",
            True,
            client.get_run(first_run).data.tags["best_family"],
        ),
        (promotion.version, "challenger", False, "random_forest"),
    ]

    # Promoting the same run again registers nothing new and decides the same.
    again = stages.promote(ml_settings, run_id)
    assert (again.version, again.alias) == (promotion.version, "challenger")
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    assert first_run != run_id


def test_no_champion_yet_is_none_but_an_unreachable_mlflow_is_an_error(ml_settings, monkeypatch):
    import socket

    from mlflow.exceptions import MlflowException

    from rakuten_mlops.ml import registry

    unknown = ml_settings.model_copy(update={"model_name": f"test-none-{uuid.uuid4().hex[:8]}"})
    assert registry.champion(unknown) is None

    with socket.socket() as probe:  # a port nothing listens on: MLflow is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = ml_settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{port}"})
    try:
        with pytest.raises(MlflowException, match=str(port)):
            registry.champion(down)
    finally:
        registry.configure(ml_settings)  # the process-wide URIs point at the real MLflow again

