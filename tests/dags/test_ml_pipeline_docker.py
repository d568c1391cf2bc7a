"""Container mode for real: the ML image built by this machine's engine (local mode's
podman API, or a Docker engine), and `ml_pipeline_docker` running every stage in it.

Kept cheap, since it is the suite's costliest file (one xdist group of its own,
tests/support/workers.py, so it runs on one worker beside the rest): the image is built
once per session, from a clean layer cache (`--no-cache`; the engine's download cache of
uv is a cache mount, never a layer) under a tag of the session's own, and every image
that build made is removed at the end (the user's images, rakuten-mlops/ml:latest and the
base, stay). One training runs in containers, with the `smoke` profile (every family, one
cheap candidate each: each family's library at work in the image, in seconds); the same
training in this process, on the same lake, must give the same dataset id and test
metrics. The failing container fails before any training.
RAKUTEN_TEST_ML_IMAGE=<image> skips the build and uses the image given (while iterating
on the other tests). Skipped, with the reason, only where no engine can exist (no podman
and no Docker engine).
"""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest

from tests.dags import test_ml_pipeline
from tests.dags.test_ml_pipeline import STAGES, dags_test, ml_env

# The sample in a lake of this module's own, with its own model name and experiment.
loaded_lake = test_ml_pipeline.loaded_lake
ml_lake = test_ml_pipeline.ml_lake

pytestmark = pytest.mark.stack

ENTRYPOINT = ["python", "-m", "rakuten_mlops"]
PROFILE = "smoke"


def engine_or_skip(settings) -> None:
    import shutil

    from rakuten_mlops.localstack.podman import docker_engine_elsewhere

    if not (shutil.which("podman") or docker_engine_elsewhere(settings)):
        pytest.skip("no container engine: neither podman (make setup installs it) nor Docker")


def podman(settings, *args: str, timeout: float = 120):
    """`podman` on local mode's storage (what `rakuten-mlops podman` runs)."""
    from rakuten_mlops.localstack.podman import run_podman

    return run_podman(settings, *args, timeout=timeout)


def image_ids(settings) -> set[str]:
    listed = podman(settings, "images", "--all", "--quiet", "--no-trunc")
    assert listed.returncode == 0, listed.stderr
    return set(listed.stdout.split())


@pytest.fixture(scope="session")
def ml_image(stack, settings):
    """The ML image, built once per session from a clean layer cache, under its own tag."""
    from rakuten_mlops.localstack.podman import build_ml_image

    engine_or_skip(settings)
    if reused := os.environ.get("RAKUTEN_TEST_ML_IMAGE"):
        yield reused  # a developer's shortcut while iterating: no clean-cache build
        return
    tag = f"localhost/rakuten-mlops/ml-test-{uuid.uuid4().hex[:8]}:latest"
    before = image_ids(settings)
    started = time.monotonic()
    built = build_ml_image(settings, tag, no_cache=True, timeout=900)
    print(f"ML image built from a clean layer cache in {time.monotonic() - started:.0f} s")
    try:
        assert built.returncode == 0, (built.stdout + built.stderr)[-5000:]
        yield tag
    finally:
        podman(settings, "rmi", "--force", tag)
        for leftover in image_ids(settings) - before:
            podman(settings, "rmi", "--force", leftover)
        assert image_ids(settings) <= before


def secret_values(settings) -> list[str]:
    return [value for value in settings._secrets().values() if len(value) >= 8]


def stage_container(task_id: str, image: str, command: list[str], lake, **kwargs):
    from rakuten_mlops.containers import StageContainer

    return StageContainer(task_id=task_id, image=image, entrypoint=ENTRYPOINT, command=command,
                          settings_source=ml_env(lake), **kwargs)


def test_the_image_runs_as_a_non_root_user_and_carries_no_secret_or_build_tool(ml_image, settings):
    inspected = json.loads(podman(settings, "image", "inspect", ml_image).stdout)[0]
    assert inspected["Config"]["User"] == "app"
    history = podman(settings, "history", "--no-trunc", "--format", "{{.CreatedBy}}", ml_image)
    assert history.returncode == 0, history.stderr
    text = history.stdout + json.dumps(inspected)
    for secret in secret_values(settings):
        assert secret not in text
    # uv, the requirement files and pip's and uv's caches stayed out of the layers.
    probe = podman(
        settings, "run", "--rm", "--user", "root", "--entrypoint", "sh", ml_image, "-c",
        "id -u app; command -v uv || echo no-uv; find /root/.cache /tmp -mindepth 1 | wc -l",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["10001", "no-uv", "0"]


def test_a_failing_container_fails_its_task_with_its_exit_code_and_last_lines(
    ml_image, ml_lake, settings
):
    """No training: `train` on a dataset that does not exist exits 1 at once."""
    from airflow.sdk.exceptions import AirflowException

    lake, _ = ml_lake
    operator = stage_container(
        "train", ml_image, ["train", "--dataset-id", "no-such-dataset", "--profile", "smoke"],
        lake)
    started = time.monotonic()
    with pytest.raises(AirflowException) as failed:
        operator.execute(context={})
    assert time.monotonic() - started < 60
    message = str(failed.value)
    assert message.startswith("the train container failed ({'StatusCode': 1"), message
    last = message.split("lines:\n", 1)[1].splitlines()
    assert last[-1].startswith("train: unknown dataset 'no-such-dataset'"), message
    assert not podman(settings, "ps", "--all", "--quiet", "--filter", f"ancestor={ml_image}").stdout


def test_task_containers_carry_no_secret_and_reach_the_stack_through_a_private_file(
    ml_image, ml_lake, settings
):
    """A stage container, inspected before its removal: the settings it needed to reach
    PostgreSQL (a secret) arrived, yet no secret is in its configuration."""
    from rakuten_mlops.containers import StageContainer
    from rakuten_mlops.localstack.podman import podman_dir

    lake, _ = ml_lake
    inspected: dict = {}

    class Inspected(StageContainer):
        def last_stdout_line(self):
            inspected.update(self.cli.inspect_container(self.container["Id"]))
            return super().last_stdout_line()

    operator = Inspected(task_id="lake_summary", image=ml_image, entrypoint=ENTRYPOINT,
                         command=["lake-summary"], settings_source=ml_env(lake))
    last = operator.execute(context={})
    assert last == "}"  # lake-summary's JSON, read from the lake with the private password
    assert inspected["Config"]["User"] == "app"
    configuration = json.dumps(inspected)
    for secret in secret_values(settings):
        assert secret not in configuration
    assert "POSTGRES_HOST=" in configuration and "POSTGRES_PASSWORD" not in configuration
    assert not list((podman_dir(settings) / "secrets").iterdir())  # the file is gone


def in_process_training(lake) -> tuple[str, dict[str, float]]:
    """The PROFILE training of ml_pipeline's stages, in this process, on `lake`: the dataset
    id and the test metrics (what `evaluate` logs), nothing recorded anywhere."""
    from rakuten_mlops.ml.dataset import prepare_dataset
    from rakuten_mlops.ml.evaluate import evaluate_pipeline
    from rakuten_mlops.ml.profile import load_profile
    from rakuten_mlops.ml.train import train_best

    dataset = prepare_dataset(lake.settings, upload=False)
    trained = train_best(dataset.frame, load_profile(PROFILE), report=lambda _line: None)
    evaluation = evaluate_pipeline(trained.pipeline, dataset.frame)
    return dataset.dataset_id, {"test_f1_weighted": evaluation.f1_weighted,
                                "test_accuracy": evaluation.accuracy}


def test_ml_pipeline_docker_registers_the_model_ml_pipeline_trains_and_exports_it(
    ml_image, ml_lake, settings
):
    from rakuten_mlops.ml import registry

    lake, _ = ml_lake
    name = lake.settings.model_name
    env = {**ml_env(lake), "RAKUTEN_ML_IMAGE": ml_image}
    docker = dags_test("ml_pipeline_docker", env, settings, {"profile": PROFILE})
    log = docker.stdout + docker.stderr
    assert docker.returncode == 0, log[-5000:]
    for stage in [*STAGES, "export_champion"]:
        assert f"[DAG TEST] end task task_id={stage}" in log, log[-5000:]
    assert log.count("Starting docker container from image") == len(STAGES)
    assert "first registered model: promoted" in log  # the promote container's own output

    client = registry.client(lake.settings)
    champion = client.get_model_version_by_alias(name, "champion")
    in_container = client.get_run(champion.run_id)
    assert champion.version == "1" and in_container.data.tags["profile"] == PROFILE
    # The same training in this process: same dataset, same test metrics, to the bit.
    dataset_id, metrics = in_process_training(lake)
    assert in_container.data.tags["dataset_id"] == dataset_id
    assert {m: in_container.data.metrics[m] for m in metrics} == metrics
    # The worker exported the champion the container promoted (the container's own
    # models/ ended with it).
    exported = json.loads((lake.settings.models_dir / f"{name}.json").read_text())
    assert (exported["version"], exported["run_id"]) == ("1", champion.run_id)
