"""
### ml_pipeline: train, evaluate and promote the product-type classifier

Runs the ML stages of `rakuten_mlops` in this Airflow worker, on what `prepare_data`
loaded into the lake:

0. `migrate_schema`: the lake's pending migrations and role grants.
1. `preprocess`: the lake's labelled products and their stored train/validation/test
   split, frozen as a **dataset version** (parquet + manifest, in `processed_data/` and
   S3). Returns its id: a content hash, so the same lake gives the same id.
1b. `image_features`: each image of the dataset's products (S3) described once: a
   colour, shape and size vector cached in the lake by the image's sha256, so a re-run
   or a new dataset version reads only images it has not seen; undecodable ones are
   recorded with their reason and skipped. Counts in MLflow (experiment
   `<MLFLOW_EXPERIMENT>-image-features`).
2. `train`: per model family (LinearSVC, LogisticRegression, RandomForest, XGBoost), a
   cross-validated search on the profile's training subsets (train and validation in the
   shipped profiles; stratified folds, weighted F1); the best is refit. Everything is
   logged to MLflow (parameters, CV results per family as nested runs, timings, the
   dataset version, the pipeline with its label mapping). Returns the MLflow run id.
3. `evaluate`: the logged model, loaded back from MLflow, scored once on the test split
   (weighted F1, accuracy, per-class report, confusion matrix), next to the plain
   TF-IDF + LinearSVC baseline trained on the same rows.
4. `promote`: the model is registered; alias `champion` moves to it only if its test
   weighted F1 beats the champion's on the same test split (the first model is
   promoted), else it becomes `challenger` and the run says why. A new champion is
   exported to `models/`.

**Triggered by `data_quality`** on a breach when `QUALITY_TRIGGER_RETRAIN` is true (its
conf names the data_quality run, kept as the MLflow tag `data_quality_run_id` and in the
gate's recorded decision). The stack unpauses this DAG only then.

**Params**: `profile`: `quick` (small grids, the demo), `full` (the real search), or a
path to a profile YAML; empty uses the `TRAINING_PROFILE` setting.

Tasks pass only references through XCom (dataset id, MLflow run id). Same code as
`python -m rakuten_mlops preprocess | train | evaluate | promote`, which is what
`ml_pipeline_docker` runs in containers.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task


@dag(
    dag_id="ml_pipeline",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["rakuten", "ml", "training"],
    default_args={
        "owner": "ml-platform",
        "retries": 1,
        "retry_delay": timedelta(minutes=1),
    },
    params={
        "profile": Param(
            "",
            type="string",
            title="Training profile",
            description="quick, full, or a profile YAML path; empty: the TRAINING_PROFILE setting.",
        ),
    },
)
def ml_pipeline():
    @task
    def migrate_schema() -> list[str]:
        """The lake's migrations and role grants: the only task that changes the schema."""
        from rakuten_mlops.schema import migrate_lake
        from rakuten_mlops.settings import get_settings

        result = migrate_lake(get_settings())
        print(f"migrations applied now: {result['applied'] or 'none (schema up to date)'}")
        return result["applied"]

    @task
    def preprocess() -> str:
        from rakuten_mlops.ml.dataset import prepare_dataset
        from rakuten_mlops.settings import get_settings

        dataset = prepare_dataset(get_settings())
        print(f"dataset {dataset.dataset_id}: {dataset.manifest['subsets']}")
        return dataset.dataset_id

    @task
    def image_features(dataset_id: str) -> str:
        from rakuten_mlops.ml.image_stage import run_image_features
        from rakuten_mlops.settings import get_settings

        run_image_features(get_settings(), dataset_id)
        return dataset_id

    @task(execution_timeout=timedelta(hours=3))
    def train(dataset_id: str, **context) -> str:
        from rakuten_mlops.ml.stages import run_train
        from rakuten_mlops.settings import get_settings

        profile = context["params"].get("profile") or None
        tags = {"airflow_run_id": context["run_id"]}
        # A run that data_quality triggered on a breach says so: the control room shows
        # the chain breach -> run -> gate decision from these tags.
        cause = (context["dag_run"].conf or {}).get("data_quality_run_id")
        if cause:
            tags["data_quality_run_id"] = cause
        return run_train(get_settings(), dataset_id, profile, extra_tags=tags)

    @task
    def evaluate(mlflow_run_id: str) -> str:
        from rakuten_mlops.ml.stages import run_evaluate
        from rakuten_mlops.settings import get_settings

        run_evaluate(get_settings(), mlflow_run_id)
        return mlflow_run_id

    @task
    def promote(mlflow_run_id: str) -> dict:
        from rakuten_mlops.ml.stages import promote as decide
        from rakuten_mlops.settings import get_settings

        result = decide(get_settings(), mlflow_run_id)
        print(f"promotion: {result.alias}: {result.reason}")
        return result.as_dict()

    dataset_id = preprocess()
    migrate_schema() >> dataset_id
    promote(evaluate(train(image_features(dataset_id))))


ml_pipeline()
