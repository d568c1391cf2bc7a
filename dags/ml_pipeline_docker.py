"""
### ml_pipeline_docker: the ML stages in the ML image, one container per stage

The same stages as `ml_pipeline` (`preprocess` with `image_features`, `train`,
`evaluate`, `promote`),
each run as `python -m rakuten_mlops <command>` in a container of the ML image
(`RAKUTEN_ML_IMAGE`, default `rakuten-mlops/ml:latest`) through a Docker API
(`rakuten_mlops.containers.StageContainer`). Each command prints the reference the next
stage needs as its last line (dataset id, run id), pushed to XCom; data never goes
through XCom. Containers get the platform's settings (the worker's environment and
`.env`): plain ones as environment, secrets in a private read-only file, never in the
image, the environment or the command line. Every container line reaches the task log;
a container that exits non-zero fails its task with its exit code and last lines.

The engine: `DOCKER_HOST`, else this machine's Docker engine, else local mode's podman
API (`make up` runs it: socket under `.stack/podman/`). Network: `host` in local mode (the
stack listens on 127.0.0.1), compose's network otherwise (`RAKUTEN_DOCKER_NETWORK`).

First task `migrate_schema`: the lake's pending migrations and role grants (in this
worker). Then `check_docker_engine`: fails at once, and says why, when no Docker engine
answers or it lacks the image; `ml_pipeline` runs the same stages without containers.

Last, `export_champion` (in this worker): a new champion is written to the worker's
`models/`, as `ml_pipeline`'s promote does (a container's own `models/` ends with it).

**Params**: `profile`, as in `ml_pipeline`.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from rakuten_mlops.containers import StageContainer

# Read from the environment at parse time (the settings' own default otherwise): no .env
# read, no validation while the scheduler parses the file.
IMAGE = os.environ.get("RAKUTEN_ML_IMAGE", "rakuten-mlops/ml:latest")
ENTRYPOINT = ["python", "-m", "rakuten_mlops"]

# The CLI command of each stage, as `ml_pipeline`'s tasks call them in-process.
PROFILE = "{{ params.profile or '' }}"
COMMANDS = {
    # Issue 17: the image_features stage runs in the same container, after preprocess.
    "preprocess": ["preprocess", "--image-features"],
    "train": [
        "train",
        "--dataset-id",
        "{{ ti.xcom_pull(task_ids='preprocess') }}",
        "--profile",
        PROFILE,
    ],
    "evaluate": ["evaluate", "--run-id", "{{ ti.xcom_pull(task_ids='train') }}"],
    # The worker exports a new champion (export_champion): the container's models/ is its own.
    "promote": ["promote", "--run-id", "{{ ti.xcom_pull(task_ids='train') }}", "--no-export"],
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
        import docker
        from airflow.sdk.exceptions import AirflowFailException

        from rakuten_mlops.localstack.podman import docker_url
        from rakuten_mlops.settings import get_settings

        url = docker_url(get_settings())
        if url.startswith("unix://") and not os.path.exists(url.removeprefix("unix://")):
            raise AirflowFailException(
                f"no Docker engine: {url.removeprefix('unix://')} does not exist. "
                f"ml_pipeline_docker runs each stage in the {IMAGE} image and needs a Docker "
                "engine (local mode: `make up` starts podman's; DOCKER_HOST names another); "
                "or run the same stages with the ml_pipeline DAG."
            )
        try:
            client = docker.DockerClient(base_url=url, timeout=5)
            version = client.version().get("Version", "?")
            client.images.get(IMAGE)
        except docker.errors.ImageNotFound as exc:
            raise AirflowFailException(
                f"the Docker engine at {url} has no image {IMAGE}: build it first "
                "(`make ml-image`, or `docker compose build`)"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - any failure to talk to the engine
            raise AirflowFailException(
                f"the Docker engine at {url} does not answer ({type(exc).__name__}: "
                f"{exc}); ml_pipeline_docker needs one, ml_pipeline does not."
            ) from exc
        return f"Docker API {version} at {url}, image {IMAGE}"

    def stage(task_id: str, timeout: timedelta = timedelta(minutes=30)) -> StageContainer:
        return StageContainer(
            task_id=task_id,
            image=IMAGE,
            entrypoint=ENTRYPOINT,
            command=COMMANDS[task_id],
            execution_timeout=timeout,
        )

    @task
    def export_champion(promotion: str) -> str | None:
        """A new champion written to the worker's models/ (what the API serves), as
        ml_pipeline's promote does: a container's own models/ ends with it."""
        import json

        from rakuten_mlops.ml.stages import export_champion as export
        from rakuten_mlops.settings import get_settings

        if not json.loads(promotion)["promoted"]:
            print("no new champion: models/ unchanged")
            return None
        path = export(get_settings())
        print(f"champion exported to {path}")
        return str(path)

    preflight = check_docker_engine()
    preprocess = stage("preprocess")
    train = stage("train", timeout=timedelta(hours=3))
    promote = stage("promote")
    migrate_schema() >> preflight >> preprocess >> train >> stage("evaluate") >> promote
    export_champion(promote.output)


ml_pipeline_docker()
