"""`airflow dags test ml_pipeline` on the shipped sample, and `ml_pipeline_docker` here.

The sample is loaded once into this module's lake (as prepare_data does), then ml_pipeline
runs in a subprocess with the project's Airflow environment, twice: with the one-family
LINEAR_PROFILE, which registers the first model and makes it the champion; then with a
clearly worse profile, whose model must stay a challenger and say why. (The search over
every family is tests/ml's and test_ml_pipeline_docker's; here the DAG's wiring, the
gate and the retraining chain are the point.) Model name, experiment, models/ and
processed_data/ are the test's own.

The docker DAG without an engine must fail at its first task with a message that says
so, and its stages must be the CLI commands that ml_pipeline's tasks run in-process,
which this test runs as they would run in the container (same arguments, last output
line pushed to XCom), with LINEAR_PROFILE too. Its containers for real: test_ml_pipeline_docker.py.
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
from tests.support.profiles import LINEAR_PROFILE, WORSE_PROFILE

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
    for profile in (WORSE_PROFILE, LINEAR_PROFILE):
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


def test_ml_pipeline_promotes_a_first_model_and_keeps_it_against_a_worse_one(
    ml_lake, settings, browser, screenshot
):
    """First run by hand; the second is the one a data-quality breach starts, and the
    control room shows that chain."""
    from rakuten_mlops.ml import registry

    lake, profiles = ml_lake
    name = lake.settings.model_name
    first = dags_test(
        "ml_pipeline", ml_env(lake), settings, {"profile": str(profiles / "linear.yaml")}
    )
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-5000:]
    for task in STAGES:
        assert f"task_id={task}" in log
    assert "promotion: champion: first registered model: promoted" in log
    # Issue 17: the images of the dataset's products (the 250 labelled ones of the
    # sample's 280) described between preprocess and train.
    assert "task_id=image_features" in log
    assert "image features: 125/250 images" in log  # progress lines reach the task log
    with lake.connect() as conn:
        described = conn.execute("SELECT count(*) FROM dataset_image_features"
                                 " WHERE reason IS NULL").fetchone()[0]
    assert described == 250

    client = registry.client(lake.settings)
    champion = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(champion.run_id)
    assert champion.version == "1"
    assert run.data.tags["airflow_run_id"].startswith("manual__")
    assert "data_quality_run_id" not in run.data.tags
    assert run.data.tags["profile"] == "linear"
    assert int(run.data.params["dataset_rows_train"]) > 1000  # the lake's split, from SQL
    assert run.data.metrics["test_f1_weighted"] > 0.5
    exported = json.loads((lake.settings.models_dir / f"{name}.json").read_text())
    assert (exported["version"], exported["run_id"]) == ("1", champion.run_id)

    # A shifted batch arrives; data_quality, with the trigger on, sees the breach and
    # starts ml_pipeline, whose run trains on the lake with that batch (the worse profile
    # as the TRAINING_PROFILE setting: a triggered run carries no profile).
    shifted = load_shifted_batch(lake, profiles)
    env = {**ml_env(lake), "QUALITY_TRIGGER_RETRAIN": "true",
           "TRAINING_PROFILE": str(profiles / "worse.yaml")}
    # The session keeps both DAGs paused (tests/support/workers.py): the stack's scheduler
    # must not take their tasks or the triggered run (it would use the user's settings).
    with triggered_runs(settings) as caused:
        quality = dags_test("data_quality", env, settings)
        log = quality.stdout + quality.stderr
        assert quality.returncode == 0, log[-5000:]
        assert "trigger ml_pipeline: True (QUALITY_TRIGGER_RETRAIN=True)" in log, log[-5000:]
        [(run_id, conf)] = caused()
        quality_run = conf["data_quality_run_id"]
        assert run_id == f"data_quality__{quality_run}"
        with lake.connect() as conn:
            status, breached = conn.execute(
                "SELECT status, breached_features FROM quality_windows"
                " WHERE batch_id = %s AND dag_run_id = %s", (shifted, quality_run)).fetchone()
        assert status == "breach" and "uppercase_ratio" in breached

        second = run_triggered(run_id, env, settings)
        log = second.stdout + second.stderr
        assert second.returncode == 0, log[-5000:]
        assert dag_run_state(settings, run_id) == "success", log[-5000:]

    assert client.get_model_version_by_alias(name, "champion").version == "1"
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert challenger.version == "2"
    worse_run = client.get_run(challenger.run_id)
    assert worse_run.data.tags["profile"] == "worse"
    assert worse_run.data.tags["airflow_run_id"] == run_id
    assert worse_run.data.tags["data_quality_run_id"] == quality_run
    # Trained on the lake including the shifted batch.
    assert int(worse_run.data.params["dataset_rows_train"]) > int(
        run.data.params["dataset_rows_train"])
    assert worse_run.data.metrics["test_f1_weighted"] < run.data.metrics["test_f1_weighted"]
    # The gate's evidence: worse than the baseline beyond noise, and worse than v1.
    assert worse_run.data.tags["gate_outcome"] == "worse_than_baseline"
    assert worse_run.data.metrics["gate_gain_vs_baseline_high"] < 0
    assert worse_run.data.metrics["gate_gain_vs_champion_high"] < 0
    # ... recorded with its cause, where the control room reads the chain.
    with lake.connect() as conn:
        alias, outcome, cause = conn.execute(
            "SELECT alias, gate_outcome, details->>'data_quality_run_id' FROM model_promotions"
            " WHERE model_name = %s AND version = '2'", (name,)).fetchone()
    assert (alias, outcome, cause) == ("challenger", "worse_than_baseline", quality_run)
    # The export still describes the champion.
    assert json.loads((lake.settings.models_dir / f"{name}.json").read_text())["version"] == "1"
    chain = control_room_chain(lake, env, profiles, browser, screenshot)
    assert quality_run in chain and run_id in chain and "worse_than_baseline" in chain


def control_room_chain(lake, env: dict[str, str], folder: Path, browser, screenshot) -> str:
    """The control room's Data quality page on this lake, through Chromium: the text of
    its "Retraining after a breach" section (screenshot: control-room-retraining-chain)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    from tests.support.browser import wait_until
    from tests.support.control_room import PAGE_TIMEOUT, ControlRoomServer, log_in

    user, password = "test-operator", "test-control-room-password-0123"
    server = ControlRoomServer(lake.settings, folder / "control-room.log", **env,
                               CONTROL_ROOM_USER=user, CONTROL_ROOM_PASSWORD=password)
    try:
        server.start()
        browser.set_window_size(1400, 2400)
        log_in(browser, server.base_url, user, password)
        link = "//a[@data-testid='stSidebarNavLink'][.//*[text()='Data quality and drift']]"

        def open_page(driver):  # the login lands on the first page
            found = driver.find_elements(By.XPATH, link)
            if found:
                with contextlib.suppress(StaleElementReferenceException):
                    found[0].click()
                    return True
            return False

        def chain_shown(driver):
            body = driver.find_element(By.TAG_NAME, "body").text
            return "Retraining after a breach" in body and "worse_than_baseline" in body

        wait_until(browser, open_page, PAGE_TIMEOUT)
        try:
            wait_until(browser, chain_shown, PAGE_TIMEOUT)
        finally:
            screenshot("control-room-retraining-chain")
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stException]")
        body = browser.find_element(By.TAG_NAME, "body").text
        return body[body.index("Retraining after a breach"):body.index("Windows and their")]
    finally:
        server.stop()


SHIFTED_ROWS = 150  # above config/quality.yaml's min_current (100): drift can be flagged


def load_shifted_batch(lake, folder: Path) -> int:
    """A new load batch of SHIFTED_ROWS products that shout: copies of the sample's first
    train records under new indices and product ids, upper-cased (labels kept, so the
    lake's other models still learn the same classes). Returns its batch id."""
    import shutil

    import pandas as pd

    raw = folder / "shifted_raw"
    shutil.copytree(lake.settings.raw_data_dir, raw, ignore=shutil.ignore_patterns("images"))
    x_file, y_file = raw / "X_train_update.csv", raw / "Y_train_CVw08PX.csv"
    x = pd.read_csv(x_file, index_col=0, dtype=str, keep_default_na=False)
    y = pd.read_csv(y_file, index_col=0, dtype=str, keep_default_na=False)
    new = x.iloc[:SHIFTED_ROWS].copy()
    new.index = range(x.index.astype(int).max() + 1, x.index.astype(int).max() + 1 + len(new))
    new["productid"] = [str(10**9 + i) for i in range(len(new))]
    new["imageid"] = [str(2 * 10**9 + i) for i in range(len(new))]
    new[["designation", "description"]] = new[["designation", "description"]].apply(
        lambda column: column.str.upper())
    labels = y.iloc[:SHIFTED_ROWS].copy()
    labels.index = new.index
    pd.concat([x, new]).to_csv(x_file)
    pd.concat([y, labels]).to_csv(y_file)
    loaded = lake.with_raw(raw).cli("ingest", "--slice", "all")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    with lake.connect() as conn:
        batch, rows = conn.execute(
            "SELECT batch_id, count(*) FROM products GROUP BY batch_id"
            " ORDER BY batch_id DESC LIMIT 1").fetchone()
    assert rows == SHIFTED_ROWS
    return batch


def airflow_db(settings):
    from rakuten_mlops.storage import connect

    return connect(settings, database=settings.airflow_db, autocommit=True)


@contextlib.contextmanager
def triggered_runs(settings):
    """Yields a function listing the ml_pipeline runs data_quality triggered since; at
    the end deletes them and their task logs (they are not `dags test` runs, which the
    session's no-trace check removes)."""
    import shutil

    from rakuten_mlops.localstack.services import airflow_home

    query = ("SELECT run_id, conf FROM dag_run WHERE dag_id = 'ml_pipeline'"
             " AND run_id LIKE 'data\\_quality\\_\\_%'")
    with airflow_db(settings) as conn:
        before = {r[0] for r in conn.execute(query)}

    def caused() -> list[tuple[str, dict]]:
        with airflow_db(settings) as conn:
            return [(r[0], r[1]) for r in conn.execute(query) if r[0] not in before]

    try:
        yield caused
    finally:
        for run_id, _ in caused():
            with airflow_db(settings) as conn:
                conn.execute("DELETE FROM dag_run WHERE dag_id = 'ml_pipeline' AND run_id = %s",
                             (run_id,))
            shutil.rmtree(airflow_home(settings) / "logs" / "dag_id=ml_pipeline"
                          / f"run_id={run_id}", ignore_errors=True)


def dag_run_state(settings, run_id: str) -> str:
    with airflow_db(settings) as conn:
        return conn.execute("SELECT state FROM dag_run WHERE dag_id = 'ml_pipeline'"
                            " AND run_id = %s", (run_id,)).fetchone()[0]


# `airflow dags test` always makes a run of its own (Airflow 3.3's `DAG.test` replaces a
# run at the same logical date): this runs the queued run data_quality triggered, with
# the same loop, by handing `DAG.test` that run instead of a new one.
RUN_TRIGGERED = """
import sys

import airflow.models.dagrun as dagrun
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState
from sqlalchemy import select

run_id = sys.argv[2]


def the_triggered_run(*, dag, session, start_date, **_):
    run = session.scalar(select(dagrun.DagRun).where(
        dagrun.DagRun.dag_id == dag.dag_id, dagrun.DagRun.run_id == run_id))
    run.state, run.start_date, run.dag = DagRunState.RUNNING, start_date, dag
    session.commit()
    return run


dagrun.get_or_create_dagrun = the_triggered_run
dag = DagBag(dag_folder=sys.argv[1]).get_dag("ml_pipeline")
with create_session() as session:
    logical_date = session.scalar(select(dagrun.DagRun.logical_date).where(
        dagrun.DagRun.dag_id == "ml_pipeline", dagrun.DagRun.run_id == run_id))
dag.test(logical_date=logical_date)
"""


def run_triggered(run_id: str, env: dict[str, str], settings):
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    env = {**env, **airflow_env(settings)}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-c", RUN_TRIGGERED, str(PROJECT / "dags"), run_id],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=1200,
    )


# --------------------------------------------------------------------------- docker DAG


SCRIPT = """
import json, sys
from airflow.models import DagBag
from airflow.providers.docker.operators.docker import DockerOperator

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
                    "env": sorted(t.environment), "private": sorted(t._private_environment)}
        for t in docker.tasks if isinstance(t, DockerOperator)
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
    assert docker_dag["local"] == [
        "migrate_schema", "preprocess", "image_features", *STAGES[1:]]
    # In containers the image features are described by the preprocess container.
    assert docker_dag["commands"]["preprocess"]["command"][:2] == ["preprocess", "--image-features"]
    # ... and the docker DAG ends in the worker: the export of a new champion to models/.
    assert docker_dag["docker"] == [
        "migrate_schema", "check_docker_engine", *STAGES, "export_champion"]
    cli = get_command(app)
    for stage in STAGES:
        task = docker_dag["commands"][stage]
        assert task["entrypoint"] == ["python", "-m", "rakuten_mlops"]
        assert task["command"][0] == stage
        assert task["image"] == "rakuten-mlops/ml:latest"
        # Every argument parses as the CLI command's own options.
        cli.get_command(None, stage).make_context(stage, list(task["command"][1:]))
        # Nothing of the worker's settings is read while the scheduler parses the file:
        # StageContainer resolves them when the task runs (test_ml_pipeline_docker.py).
        assert task["env"] == [] and task["private"] == []


def test_containers_get_plain_settings_as_environment_and_secrets_apart(tmp_path, settings):
    from dotenv import dotenv_values

    from rakuten_mlops.containers import container_environment, write_secrets_file
    from rakuten_mlops.settings import Mode

    plain, secret = container_environment(
        {"POSTGRES_HOST": "postgres", "POSTGRES_PASSWORD": "a-secret-password",
         "MODELS_DIR": "/host/models", "PROCESSED_DATA_DIR": "processed_data", "HOME": "/root"}
    )
    # Host paths and non-settings stay out; the image has its own project root.
    assert plain == {"POSTGRES_HOST": "postgres", "PROCESSED_DATA_DIR": "processed_data"}
    assert secret == {"POSTGRES_PASSWORD": "a-secret-password"}
    # The private file reads back exactly, quotes and all.
    tricky = {"POSTGRES_PASSWORD": "it's $HOME \\ \"x\""}
    path = write_secrets_file(tmp_path / "secrets", tricky)
    assert oct(path.stat().st_mode & 0o777) == "0o400"
    assert oct((tmp_path / "secrets").stat().st_mode & 0o777) == "0o700"
    assert dotenv_values(path) == tricky  # what pydantic-settings reads a .env with
    # The host's network in local mode (the stack is on 127.0.0.1), compose's otherwise.
    assert settings.docker_network == "host"
    compose = settings.model_copy(update={"rakuten_mode": Mode.COMPOSE})
    assert compose.docker_network == "rakuten-mlops"  # docker-compose.yml's network


def test_compose_stage_secrets_go_through_the_shared_volume_not_a_worker_path(tmp_path, settings):
    """In compose the worker is a container: a path of its own means nothing to the Docker
    host, so the file goes into the named volume the stage container mounts."""
    from rakuten_mlops.containers import CONTAINER_ENV_DIR, secrets_mount

    compose = settings.model_copy(update={
        "stage_env_volume": "rakuten-mlops-stage-env",
        "stage_env_dir": tmp_path / "stage-secrets"})
    path, mount, in_container = secrets_mount(compose, {"POSTGRES_PASSWORD": "a-secret"})
    assert path.parent == tmp_path / "stage-secrets"
    assert (mount["Type"], mount["Source"], mount["Target"], mount["ReadOnly"]) == (
        "volume", "rakuten-mlops-stage-env", CONTAINER_ENV_DIR, True)
    assert in_container == f"{CONTAINER_ENV_DIR}/{path.name}"
    # The worker's group reads it (the stage container joins that group); nobody else.
    assert oct(path.stat().st_mode & 0o777) == "0o440"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o750"
    # Local mode: a bind mount of the file alone, as the container's .env.
    path, mount, in_container = secrets_mount(settings, {"POSTGRES_PASSWORD": "a-secret"})
    path.unlink()
    assert (mount["Type"], mount["Source"]) == ("bind", str(path))


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
            # every family is tests/ml's and test_ml_pipeline_docker's.
            .replace("{{ params.profile or '' }}", str(profiles / "linear.yaml"))
            for part in docker_dag["commands"][stage]["command"]
        ]
        result = lake.cli(*command, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed[stage] = result.stdout.strip().splitlines()[-1]  # what DockerOperator pushes
        return pushed[stage]

    dataset_id = run("preprocess")
    assert (lake.settings.processed_data_dir / "datasets" / dataset_id / "manifest.json").is_file()
    assert lake.scalar("SELECT count(*) FROM dataset_image_features WHERE dataset_id = %s",
                       dataset_id) == 250  # and its images described (issue 17)
    run_id = run("train")
    assert registry.client(lake.settings).get_run(run_id).data.tags["dataset_id"] == dataset_id
    assert json.loads(run("evaluate"))["test_f1_weighted"] > 0.5
    promotion = json.loads(run("promote"))
    assert promotion["promoted"] and promotion["run_id"] == run_id
