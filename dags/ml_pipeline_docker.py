"""
### ml_pipeline_docker: the ML stages in the ML image, one container per stage

The same four stages as `ml_pipeline` (`preprocess`, `train`, `evaluate`, `promote`),
each run as `python -m rakuten_mlops <command>` in a container of the ML image
(`RAKUTEN_ML_IMAGE`, default `rakuten-mlops/ml:latest`) by DockerOperator. Each command
prints the reference the next stage needs as its last line (dataset id, run id), which
DockerOperator pushes to XCom; data never goes through XCom. Containers get the
platform's settings as environment (secrets through `private_environment`) and join the
compose network (`RAKUTEN_DOCKER_NETWORK`, default `rakuten-mlops`), so they reach
PostgreSQL, MinIO and MLflow by service name.

First task `migrate_schema`: the lake's pending migrations and role grants (in this
worker). Then `check_docker_engine`: fails at once, and says why, when no Docker engine
answers at `DOCKER_HOST` (default `unix:///var/run/docker.sock`), e.g. in local mode,
where `ml_pipeline` runs the same stages without containers.

**Params**: `profile`, as in `ml_pipeline`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk import Param, dag, task

from rakuten_mlops.settings import settings_environment

IMAGE = os.environ.get("RAKUTEN_ML_IMAGE", "rakuten-mlops/ml:latest")
DOCKER_URL = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
NETWORK = os.environ.get("RAKUTEN_DOCKER_NETWORK", "rakuten-mlops")
ENTRYPOINT = ["python", "-m", "rakuten_mlops"]

# The CLI command of each stage, as `ml_pipeline`'s tasks call them in-process.
PROFILE = "{{ params.profile or '' }}"
COMMANDS = {
    "preprocess": ["preprocess"],
    "train": [
        "train",
        "--dataset-id",
        "{{ ti.xcom_pull(task_ids='preprocess') }}",
        "--profile",
        PROFILE,
    ],
    "evaluate": ["evaluate", "--run-id", "{{ ti.xcom_pull(task_ids='train') }}"],
    "promote": ["promote", "--run-id", "{{ ti.xcom_pull(task_ids='train') }}"],
}


@dag(
    dag_id="ml_pipeline_docker",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["rakuten", "ml", "training", "docker"],
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
            description="quick, full, or a profile YAML path (inside the image); empty: "
            "the TRAINING_PROFILE setting.",
        ),
    },
)
def ml_pipeline_docker():
    @task
    def migrate_schema() -> list[str]:
        """The lake's migrations and role grants: the only task that changes the schema."""
        from rakuten_mlops.schema import migrate_lake
        from rakuten_mlops.settings import get_settings

        result = migrate_lake(get_settings())
        print(f"migrations applied now: {result['applied'] or 'none (schema up to date)'}")
        return result["applied"]

    @task
    def check_docker_engine() -> str:
        """Fail now, clearly and without retrying, when no Docker engine answers."""
        from airflow.sdk.exceptions import AirflowFailException

        if DOCKER_URL.startswith("unix://"):
            socket_path = DOCKER_URL.removeprefix("unix://")
            if not os.path.exists(socket_path):
                raise AirflowFailException(
                    f"no Docker engine: {socket_path} does not exist. ml_pipeline_docker runs "
                    f"each stage in the {IMAGE} image and needs a Docker engine (compose "
                    "mode); here, run the same stages with the ml_pipeline DAG."
                )
        import docker

        try:
            client = docker.DockerClient(base_url=DOCKER_URL, timeout=5)
            version = client.version().get("Version", "?")
            client.images.get(IMAGE)
        except docker.errors.ImageNotFound as exc:
            raise AirflowFailException(
                f"the Docker engine at {DOCKER_URL} has no image {IMAGE}: build it first "
                "(`docker compose build`)"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - any failure to talk to the engine
            raise AirflowFailException(
                f"the Docker engine at {DOCKER_URL} does not answer ({type(exc).__name__}: "
                f"{exc}); ml_pipeline_docker needs one, ml_pipeline does not."
            ) from exc
        return f"Docker {version} at {DOCKER_URL}, image {IMAGE}"

    # This worker's settings (names only read from its environment, nothing resolved).
    settings, secrets = settings_environment()

    def stage(task_id: str, timeout: timedelta = timedelta(minutes=30)) -> DockerOperator:
        return DockerOperator(
            task_id=task_id,
            image=IMAGE,
            entrypoint=ENTRYPOINT,
            command=COMMANDS[task_id],
            docker_url=DOCKER_URL,
            network_mode=NETWORK,
            environment=settings,
            private_environment=secrets,
            mount_tmp_dir=False,
            auto_remove="success",
            do_xcom_push=True,
            execution_timeout=timeout,
        )

    preflight = check_docker_engine()
    preprocess = stage("preprocess")
    train = stage("train", timeout=timedelta(hours=3))
    migrate_schema() >> preflight >> preprocess >> train >> stage("evaluate") >> stage("promote")


ml_pipeline_docker()
