"""Fixtures of the serving tests: a real model trained on the real sample, registered in
the running MLflow under a test-only name, served by a real uvicorn process.

Session-scoped and shared by every test here: the training (a few seconds), the two
registered versions (v1 = champion, v2 = the hot-swap candidate; both with the checksum
the promotion step records, see rakuten_mlops.ml.trust) and the API server.
The registered model is deleted at the end.
"""

from __future__ import annotations

import uuid
import warnings

import pandas as pd
import pytest

from tests.support.serving import SAMPLE_DATA, ApiServer, project_pipeline

pytestmark = pytest.mark.stack

HOLDOUT_FRACTION = 0.2


@pytest.fixture(scope="session")
def sample():
    """The real products (X, y) shipped in raw_data/, and their category names."""
    x = pd.read_csv(SAMPLE_DATA / "X_train_update.csv", index_col=0)
    y = pd.read_csv(SAMPLE_DATA / "Y_train_CVw08PX.csv", index_col=0)["prdtypecode"]
    names = pd.read_csv(SAMPLE_DATA / "category_names.csv")
    return x, y, dict(zip(names.prdtypecode, names.category, strict=True))


@pytest.fixture(scope="session")
def split(sample):
    from sklearn.model_selection import train_test_split

    x, y, _ = sample
    return train_test_split(
        x[["designation", "description"]],
        y,
        test_size=HOLDOUT_FRACTION,
        stratify=y,
        random_state=0,
    )


def build_pipeline(alpha: float):
    """The project's text steps + a linear model with predict_proba (fast to fit)."""
    from sklearn.linear_model import SGDClassifier

    return project_pipeline(
        SGDClassifier(loss="log_loss", alpha=alpha, max_iter=15, tol=None, random_state=0),
        word_features={"max_features": 30000},
    )


@pytest.fixture(scope="session")
def pipelines(split):
    """Two fitted pipelines on the real training split: v2 shares v1's fitted text steps
    and refits the classifier with 30x the regularisation (different probabilities)."""
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    x_train, _, y_train, _ = split
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: few epochs on purpose
        v1 = build_pipeline(alpha=1e-5).fit(x_train, y_train)
        features = v1[:-1].transform(x_train)
        clf = clone(v1.named_steps["clf"]).set_params(alpha=3e-4).fit(features, y_train)
    v2 = Pipeline([*v1.steps[:-1], ("clf", clf)])
    return {"1": v1, "2": v2}


@pytest.fixture(scope="session")
def registered(stack, settings, pipelines, split):
    """Both pipelines registered under a test-only name; alias champion on version 1."""
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient

    name = f"test-serving-{uuid.uuid4().hex[:8]}"
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    # Not `set_experiment`: a process-wide active experiment makes MLflow refuse the
    # stages' resumption of runs of other experiments later in this worker.
    from rakuten_mlops.ml.tracking import experiment_id

    experiment = experiment_id(settings, "test-serving")
    x_train, x_test, y_train, y_test = split
    run_ids = []
    for version in ("1", "2"):
        pipeline = pipelines[version]
        with mlflow.start_run(experiment_id=experiment, run_name=f"{name}-v{version}") as run:
            mlflow.log_params(
                pipeline.named_steps["clf"].get_params() | {"train_rows": len(x_train)}
            )
            mlflow.log_metric(
                "holdout_accuracy", float((pipeline.predict(x_test) == y_test).mean())
            )
            mlflow.log_input(
                mlflow.data.from_pandas(
                    x_train.assign(prdtypecode=y_train),
                    source=str(settings.path(settings.raw_data_dir)),
                    name="X_train_sample",
                ),
                context="training",
            )
            mlflow.set_tag("data.rows", str(len(x_train)))
            mlflow.sklearn.log_model(
                pipeline,
                name="model",
                registered_model_name=name,
                pip_requirements=[],
                # MLflow 3's default, skops, takes ~30 s to save this pipeline and ~5 s to
                # load it; the service loads either (tests/serving/test_serving_units.py).
                serialization_format="cloudpickle",
            )
            run_ids.append(run.info.run_id)
    # What the promotion step records: the API serves only versions with a checksum.
    from rakuten_mlops.ml.trust import forget, trust_version

    for version, run_id in zip(("1", "2"), run_ids, strict=True):
        trust_version(settings, name, version, run_id, reason="serving test fixture")
    client.set_registered_model_alias(name, "champion", "1")
    yield {"name": name, "client": client, "run_ids": run_ids}
    client.delete_registered_model(name)
    forget(settings, name)
    for run_id in run_ids:
        client.delete_run(run_id)


@pytest.fixture(scope="session")
def lake(stack, settings):
    """The test database, migrated."""
    from rakuten_mlops.schema import migrate
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        migrate(conn)
    return settings


@pytest.fixture(scope="session")
def api(registered, lake, tmp_path_factory):
    """The API serving the test model from MLflow, polling the alias every second."""
    folder = tmp_path_factory.mktemp("api")
    server = ApiServer(
        folder / "api.log",
        MODEL_NAME=registered["name"],
        MODELS_DIR=str(folder / "models"),  # empty: the registry is the only source
        API_MODEL_POLL_SECONDS="1",
        API_LOG_FLUSH_SECONDS="0.2",
        API_MAX_BATCH_SIZE="64",
        API_MAX_DESIGNATION_CHARS="300",
        API_MAX_DESCRIPTION_CHARS="12000",
    )
    server.start()
    yield server
    server.stop()
