"""Helpers of the data-quality tests: a lake of their own, a shifted sample, a champion.

The tests of this folder write to databases and buckets of their own, derived from the
test ones tests/conftest.py sets, so they never collide with other suites: the
end-to-end scenario uses `<POSTGRES_DB>_quality` and `<bucket>-quality`, the tests that
empty their lake before each test `<POSTGRES_DB>_quality_units` and `<bucket>-quality-units`.

The end-to-end fixture (conftest.py) loads the shipped sample in two load batches; the
second is deliberately shifted on exactly two features:

* `uppercase_ratio`: its designations and descriptions are upper-cased (an export
  that shouts); lengths, words, digits, language, HTML and tokens (lower-cased before
  counting) are unchanged;
* `label`: its labelled products carry only two product types (2583 for even product
  ids, 1560 for odd ones), a broken labelling feed.

Everything else about the second batch is the real sample, so drift must be flagged on
those two features and on no other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from tests.support import lake as lakehelpers
from tests.support.lake import PROJECT, SAMPLE, Lake

SHIFTED_FEATURES = {"uppercase_ratio", "label"}
SHIFTED_CLASSES = (2583, 1560)
SLICE = "0.5"  # two batches: ceil(0.5 x 2306) = 1153 records each (X_train, then X_test)


def quality_settings(settings, database: str, processed: Path, suffix="quality", **changes):
    return settings.model_copy(
        update={
            "postgres_db": database,
            "s3_bucket_images": f"{settings.s3_bucket_images}-{suffix}",
            "s3_bucket_artifacts": f"{settings.s3_bucket_artifacts}-{suffix}",
            "processed_data_dir": processed,
            **changes,
        }
    )


def ensure_database(settings, name: str) -> str:
    with lakehelpers._admin(settings) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{settings.postgres_user}"')
    return name


def env_of(settings) -> dict[str, str]:
    """Environment for a subprocess (airflow, the API) that must use these settings."""
    return {
        **os.environ,
        "POSTGRES_DB": settings.postgres_db,
        "S3_BUCKET_IMAGES": settings.s3_bucket_images,
        "S3_BUCKET_ARTIFACTS": settings.s3_bucket_artifacts,
        "PROCESSED_DATA_DIR": str(settings.processed_data_dir),
        "RAW_DATA_DIR": str(settings.raw_data_dir),
        "MODEL_NAME": settings.model_name,
    }


def reset(settings) -> None:
    """Empty the lake's schema, its image bucket and the job's objects in the artifacts one."""
    from minio.deleteobjects import DeleteObject

    from rakuten_mlops.storage import s3_client

    Lake(settings).reset()
    client = s3_client(settings)
    bucket = settings.s3_bucket_artifacts
    if client.bucket_exists(bucket):
        objects = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
        assert not list(client.remove_objects(bucket, objects))


def shifted_sample(target: Path) -> Path:
    """A copy of raw_data/ whose records after the first SLICE are shifted (see above)."""
    shutil.copytree(SAMPLE, target, ignore=shutil.ignore_patterns("README.md"))
    x_file, y_file = target / "X_train_update.csv", target / "Y_train_CVw08PX.csv"
    x = pd.read_csv(x_file, index_col=0, dtype=str, keep_default_na=False)
    y = pd.read_csv(y_file, index_col=0, dtype=str, keep_default_na=False)
    first = int(np.ceil(float(SLICE) * (len(x) + _rows(target / "X_test_update.csv"))))
    late = x.index[first:]
    x.loc[late, ["designation", "description"]] = x.loc[late, ["designation", "description"]].apply(
        lambda column: column.str.upper()
    )
    even = x.loc[late, "productid"].astype(int) % 2 == 0
    y.loc[late, "prdtypecode"] = np.where(even, str(SHIFTED_CLASSES[0]), str(SHIFTED_CLASSES[1]))
    x.to_csv(x_file)
    y.to_csv(y_file)
    test_file = target / "X_test_update.csv"
    xt = pd.read_csv(test_file, index_col=0, dtype=str, keep_default_na=False)
    xt[["designation", "description"]] = xt[["designation", "description"]].apply(
        lambda column: column.str.upper()
    )
    xt.to_csv(test_file)
    return target


def _rows(path: Path) -> int:
    return len(pd.read_csv(path, index_col=0, dtype=str))


def train_champion(
    settings, dataset, name: str, experiment: str = "test-quality", subsets=("train",)
) -> dict:
    """A small real model (TF-IDF + logistic SGD) on the dataset's `subsets`, registered
    as `name` with the dataset_id tag and train_subsets param the job reads, alias champion."""
    import warnings

    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import Pipeline

    from rakuten_mlops.ml.trust import trust_version

    frame = dataset.frame[dataset.frame["subset"].isin(subsets)]
    texts = (frame["designation"] + " " + frame["description"].fillna("")).tolist()
    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(sublinear_tf=True, max_features=30000)),
            (
                "clf",
                SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=20, tol=None, random_state=0),
            ),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.fit(texts, frame["prdtypecode"].astype(int))
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    # An explicit experiment, never the process-wide active one (`set_experiment`): the
    # stages resume runs by id, which MLflow refuses under another active experiment.
    from rakuten_mlops.ml.tracking import experiment_id

    with mlflow.start_run(experiment_id=experiment_id(settings, experiment), run_name=name) as run:
        mlflow.set_tags({"dataset_id": dataset.dataset_id, "best_family": "sgd_log_loss"})
        mlflow.log_param("train_subsets", ",".join(subsets))
        mlflow.log_metric("test_f1_weighted", 0.5)
        mlflow.sklearn.log_model(
            pipeline,
            name="model",
            registered_model_name=name,
            pip_requirements=[],
            serialization_format="cloudpickle",
        )
    # As promotion does: the API loads only a version whose checksum was recorded.
    trust_version(settings, name, "1", run.info.run_id, reason="data-quality test champion")
    client.set_registered_model_alias(name, "champion", "1")
    return {"name": name, "run_id": run.info.run_id, "client": client}


def delete_champion(settings, model: dict) -> None:
    """Remove what `train_champion` made: the registered model, its run, its checksum."""
    from rakuten_mlops.ml.trust import forget

    model["client"].delete_registered_model(model["name"])
    model["client"].delete_run(model["run_id"])
    forget(settings, model["name"])


def dags_test(settings, logical_date: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`airflow dags test data_quality <date>` with local mode's Airflow and these settings."""
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    env = {**env_of(settings), **airflow_env(settings)}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [str(Path(venv_bin()) / "airflow"), "dags", "test", "data_quality", logical_date],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
