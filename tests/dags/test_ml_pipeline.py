"""`airflow dags test ml_pipeline` on the shipped sample, and `ml_pipeline_docker` here.

The sample is loaded once into this module's lake (as prepare_data does), then ml_pipeline
runs in a subprocess with the project's Airflow environment, twice: with a small real
profile (every family searched), which registers the first model and makes it the
champion; then with a clearly worse profile, whose model must stay a challenger and say
why. Model name, experiment, models/ and processed_data/ are the test's own.

The docker DAG cannot run its containers here (no engine): it must fail at its first
task with a message that says so, and its stages must be the CLI commands that
ml_pipeline's tasks run in-process, which this test runs as they would run in the
container (same arguments, last output line pushed to XCom), with the one-family
LINEAR_PROFILE: their wiring is the point, the search is the first test's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support import lake as lakehelpers
from tests.support.lake import PROJECT
from tests.support.profiles import LINEAR_PROFILE, TINY_PROFILE, WORSE_PROFILE

pytestmark = pytest.mark.stack

STAGES = ["preprocess", "train", "evaluate", "promote"]


@pytest.fixture(scope="module")
def loaded_lake(settings, lake_database, tmp_path_factory):
    """The sample loaded once (as prepare_data does) into the ingest lake, for this module.

    Its tests only read the lake (the ML stages write to MLflow, S3 and their own
    folders), so one load serves them all; the ingest tests reset it before their own."""
    import shutil

    sample = tmp_path_factory.mktemp("ml_lake") / "raw_data"
    shutil.copytree(lakehelpers.SAMPLE, sample, ignore=shutil.ignore_patterns("README.md"))
    lake = lakehelpers.Lake(
        settings.model_copy(
            update={
                "postgres_db": lake_database,
                "s3_bucket_images": f"{settings.s3_bucket_images}-ingest",
                "raw_data_dir": sample,
            }
        )
    )
    lake.reset()
    loaded = lake.cli("ingest")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    return lake


@pytest.fixture()
def ml_lake(settings, loaded_lake, tmp_path):
    """The loaded lake, with ML names and folders nobody else uses."""
    from rakuten_mlops.ml import registry

    name = f"test-dag-{uuid.uuid4().hex[:8]}"
    lake = lakehelpers.Lake(
        loaded_lake.settings.model_copy(
            update={
                "model_name": name,
                "mlflow_experiment": name,
                "models_dir": tmp_path / "models",
                "processed_data_dir": tmp_path / "processed_data",
            }
        )
    )
    for profile in (TINY_PROFILE, WORSE_PROFILE, LINEAR_PROFILE):
        (tmp_path / f"{profile['name']}.yaml").write_text(yaml.safe_dump(profile))
    yield lake, tmp_path
    client = registry.client(lake.settings)
    # A failed test may not have registered it.
    with contextlib.suppress(Exception):
        client.delete_registered_model(name)
    from rakuten_mlops.ml.trust import forget

    forget(lake.settings, name)  # the checksums its promotions recorded
    if experiment := client.get_experiment_by_name(name):
        client.delete_experiment(experiment.experiment_id)


def ml_env(lake) -> dict[str, str]:
    s = lake.settings
    return {
        **lake.env,
        "MODEL_NAME": s.model_name,
        "MLFLOW_EXPERIMENT": s.mlflow_experiment,
        "MODELS_DIR": str(s.models_dir),
        "PROCESSED_DATA_DIR": str(s.processed_data_dir),
    }


def dags_test(dag_id: str, env: dict[str, str], settings, conf: dict | None = None):
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    env = {**env, **airflow_env(settings)}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    command = [str(Path(venv_bin()) / "airflow"), "dags", "test", dag_id]
    if conf:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(
        command, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=1200
    )


def test_ml_pipeline_promotes_a_first_model_and_keeps_it_against_a_worse_one(ml_lake, settings):
    from rakuten_mlops.ml import registry

    lake, profiles = ml_lake
    name = lake.settings.model_name
    first = dags_test(
        "ml_pipeline", ml_env(lake), settings, {"profile": str(profiles / "tiny.yaml")}
    )
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    for task in STAGES:
        assert f"task_id={task}" in log
    assert "promotion: champion: first registered model: promoted" in log

    client = registry.client(lake.settings)
    champion = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(champion.run_id)
    assert champion.version == "1"
    assert run.data.tags["airflow_run_id"].startswith("manual__")
    assert run.data.tags["profile"] == "tiny"
    assert int(run.data.params["dataset_rows_train"]) > 1000  # the lake's split, from SQL
    assert run.data.metrics["test_f1_weighted"] > 0.5
    exported = json.loads((lake.settings.models_dir / f"{name}.json").read_text())
    assert (exported["version"], exported["run_id"]) == ("1", champion.run_id)

    second = dags_test(
        "ml_pipeline", ml_env(lake), settings, {"profile": str(profiles / "worse.yaml")}
    )
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-5000:]
    assert "promotion: challenger: clearly worse than the plain baseline" in log
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert challenger.version == "2"
    worse_run = client.get_run(challenger.run_id)
    assert worse_run.data.tags["profile"] == "worse"
    assert worse_run.data.metrics["test_f1_weighted"] < run.data.metrics["test_f1_weighted"]
    # The gate's evidence: worse than the baseline beyond noise, and worse than v1.
    assert worse_run.data.tags["gate_outcome"] == "worse_than_baseline"
    assert worse_run.data.metrics["gate_gain_vs_baseline_high"] < 0
    assert worse_run.data.metrics["gate_gain_vs_champion_high"] < 0
    # The export still describes the champion.
    assert json.loads((lake.settings.models_dir / f"{name}.json").read_text())["version"] == "1"


# --------------------------------------------------------------------------- docker DAG


SCRIPT = """
import json, sys
from airflow.models import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
docker, local = bag.get_dag("ml_pipeline_docker"), bag.get_dag("ml_pipeline")

def chain(dag):
    order, task = [], dag.roots[0]
    while True:
        order.append(task.task_id)
        if not task.downstream_list:
            return order
        task = task.downstream_list[0]

print(json.dumps({
    "local": chain(local),
    "docker": chain(docker),
    "commands": {
        t.task_id: {"entrypoint": t.entrypoint, "command": t.command, "image": t.image,
                    "network": t.network_mode, "env": sorted(t.environment),
                    "private": sorted(t._private_environment)}
        for t in docker.tasks if t.task_type == "DockerOperator"
    },
}))
"""


@pytest.fixture(scope="module")
def docker_dag(settings) -> dict:
    from rakuten_mlops.localstack.services import airflow_env

    env = {
        **os.environ,
        **airflow_env(settings),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "POSTGRES_HOST": "postgres",
        "POSTGRES_PASSWORD": "a-secret-password",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(PROJECT / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_docker_dag_runs_the_same_stages_as_cli_commands_in_the_ml_image(docker_dag):
    from typer.main import get_command

    from rakuten_mlops.cli import app

    # Both start with the lake's migrations (the only tasks that change its schema).
    assert docker_dag["local"] == ["migrate_schema", *STAGES]
    assert docker_dag["docker"] == ["migrate_schema", "check_docker_engine", *STAGES]
    cli = get_command(app)
    for stage in STAGES:
        task = docker_dag["commands"][stage]
        assert task["entrypoint"] == ["python", "-m", "rakuten_mlops"]
        assert task["command"][0] == stage
        assert task["image"] == "rakuten-mlops/ml:latest"
        assert task["network"] == "rakuten-mlops"  # docker-compose.yml's network name
        # Every argument parses as the CLI command's own options.
        cli.get_command(None, stage).make_context(stage, list(task["command"][1:]))
        # Settings reach the container; secrets only through private_environment.
        assert "POSTGRES_HOST" in task["env"] and "POSTGRES_PASSWORD" not in task["env"]
        assert "POSTGRES_PASSWORD" in task["private"]


def test_the_docker_dag_fails_fast_and_says_why_without_an_engine(settings, tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = dags_test("ml_pipeline_docker", env, settings)
    log = result.stdout + result.stderr
    assert "no Docker engine" in log and "ml_pipeline DAG" in log, log[-5000:]
    assert "task_id=preprocess" not in log or "upstream_failed" in log
    assert "Started process" not in log.split("check_docker_engine")[-1]


def test_the_docker_stage_commands_run_the_pipeline_and_print_their_reference_last(
    ml_lake, docker_dag
):
    """Each container's command, run here with the same arguments and environment."""
    from rakuten_mlops.ml import registry

    lake, profiles = ml_lake
    env = ml_env(lake)
    pushed: dict[str, str] = {}

    def run(stage: str) -> str:
        command = [
            part.replace("{{ ti.xcom_pull(task_ids='preprocess') }}", pushed.get("preprocess", ""))
            .replace("{{ ti.xcom_pull(task_ids='train') }}", pushed.get("train", ""))
            # The cheapest profile: these commands' wiring is the point; the search of
            # every family is run by the test above (and tests/ml).
            .replace("{{ params.profile or '' }}", str(profiles / "linear.yaml"))
            for part in docker_dag["commands"][stage]["command"]
        ]
        result = lake.cli(*command, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed[stage] = result.stdout.strip().splitlines()[-1]  # what DockerOperator pushes
        return pushed[stage]

    dataset_id = run("preprocess")
    assert (lake.settings.processed_data_dir / "datasets" / dataset_id / "manifest.json").is_file()
    run_id = run("train")
    assert registry.client(lake.settings).get_run(run_id).data.tags["dataset_id"] == dataset_id
    assert json.loads(run("evaluate"))["test_f1_weighted"] > 0.5
    promotion = json.loads(run("promote"))
    assert promotion["promoted"] and promotion["run_id"] == run_id
