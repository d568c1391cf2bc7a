#!/usr/bin/env python3
"""Benchmark (issue 14): `ml_pipeline_docker` against `ml_pipeline`, quick profile, same lake.

Both DAGs run with `airflow dags test` on the local stack's lake (load it first:
`make demo`, or `rakuten-mlops airflow dags test prepare_data`), under a model name and
experiment of this benchmark's own (deleted at the end) and private `models/` and
`processed_data/` folders, so the user's champion is untouched; its lake records
(promotion decisions, checksums) are deleted at the end. Do not run it during `make
test`: the tests check that the user's lake did not change meanwhile. The in-process DAG runs
first, then the container one (each stage in the ML image, `RAKUTEN_ML_IMAGE`, default
rakuten-mlops/ml:latest, through local mode's podman API or a Docker engine).

Prints one JSON object: wall time of each DAG, their ratio (target <= 1.3), each stage's
time in both, and the container start overhead: a bare container of the image running
`python -m rakuten_mlops --help` through the same Docker API, against the same command
as a local process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

STAGES = ("preprocess", "train", "evaluate", "promote")
TARGET_RATIO = 1.3
# A task's log line: its time stamp, then (among its fields) the task's id.
TASK_LINE = re.compile(r"^(\d{4}-\d\d-\d\d[ T][\d:.]+(?:Z|[+-]\d\d:\d\d)) .*\btask_id=(\w+)")


def log(line: str) -> None:
    print(f"[bench_docker_pipeline] {line}", file=sys.stderr, flush=True)


def dags_test(dag_id: str, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """(wall seconds, seconds per stage) of one `airflow dags test` run, quick profile."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "airflow", "dags", "test", dag_id,
         "--conf", json.dumps({"profile": "quick"})],
        env=env, capture_output=True, text=True, timeout=3600, check=False,
    )
    wall = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"{dag_id} failed:\n{output[-4000:]}")
    return wall, stage_seconds(output)


def stage_seconds(output: str) -> dict[str, float]:
    """Seconds from each task's first log line to its last."""
    first, last = {}, {}
    for line in output.splitlines():
        if match := TASK_LINE.match(line):
            stamp = datetime.fromisoformat(match[1].replace("Z", "+00:00")).timestamp()
            first.setdefault(match[2], stamp)
            last[match[2]] = stamp
    return {task: round(last[task] - first[task], 1) for task in first}


def container_start_overhead(settings, image: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds of `python -m rakuten_mlops --help`: in a fresh container vs locally."""
    import docker

    from rakuten_mlops.localstack.podman import docker_url

    client = docker.DockerClient(base_url=docker_url(settings), timeout=120)

    def in_container() -> float:
        started = time.perf_counter()
        client.containers.run(image, ["--help"], network_mode="host", remove=True)
        return time.perf_counter() - started

    def in_process() -> float:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rakuten_mlops", "--help"], check=True,
                       capture_output=True, timeout=120)
        return time.perf_counter() - started

    def median(run) -> float:
        return sorted(run() for _ in range(repeats))[repeats // 2]

    container, local = median(in_container), median(in_process)
    return {"container_s": round(container, 2), "process_s": round(local, 2),
            "overhead_s": round(container - local, 2)}


def forget_model(settings, name: str) -> None:
    """The benchmark's model, experiment and lake records (checksums, promotion decisions)."""
    from rakuten_mlops.ml import registry
    from rakuten_mlops.ml.trust import forget
    from rakuten_mlops.storage import connect

    client = registry.client(settings)
    if client.search_model_versions(f"name = '{name}'"):
        client.delete_registered_model(name)
    forget(settings, name)
    with connect(settings) as conn:
        conn.execute("DELETE FROM model_promotions WHERE model_name = %s", (name,))
    if experiment := client.get_experiment_by_name(name):
        client.delete_experiment(experiment.experiment_id)


def main() -> int:
    from rakuten_mlops.ml.tracking import configure
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    configure(settings, "admin")
    image = os.environ.get("RAKUTEN_ML_IMAGE", settings.rakuten_ml_image)
    name = f"bench-docker-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="bench-docker-") as folder:
        env = {**os.environ, "MODEL_NAME": name, "MLFLOW_EXPERIMENT": name,
               "MODELS_DIR": str(Path(folder) / "models"),
               "PROCESSED_DATA_DIR": str(Path(folder) / "processed_data"),
               "RAKUTEN_ML_IMAGE": image}
        try:
            log("ml_pipeline (in-process), quick profile")
            local_wall, local_stages = dags_test("ml_pipeline", env)
            log(f"  {local_wall:.0f} s {local_stages}")
            log(f"ml_pipeline_docker ({image}), quick profile")
            docker_wall, docker_stages = dags_test("ml_pipeline_docker", env)
            log(f"  {docker_wall:.0f} s {docker_stages}")
        finally:
            forget_model(settings, name)
    ratio = docker_wall / local_wall
    print(json.dumps({
        "benchmark": "docker_pipeline",
        "image": image,
        "ml_pipeline_s": round(local_wall, 1),
        "ml_pipeline_docker_s": round(docker_wall, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "stages_in_process_s": local_stages,
        "stages_in_containers_s": docker_stages,
        "container_start": container_start_overhead(settings, image),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
