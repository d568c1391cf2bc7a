"""Every DAG file imports cleanly, and every DAG has tags, a real owner and retries.

The DagBag is filled in a subprocess with local mode's Airflow environment, so this
test's process (and the rest of the suite) never imports Airflow or its configuration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"

SCRIPT = """
import json, os
from airflow.models import DagBag

bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
print(json.dumps({
    "errors": bag.import_errors,
    "dags": {
        dag.dag_id: {
            "file": dag.fileloc,
            "tags": sorted(dag.tags or []),
            "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries} for t in dag.tasks},
        }
        for dag in bag.dags.values()
    },
}))
"""


@pytest.fixture(scope="module")
def dagbag(settings) -> dict:
    from rakuten_mlops.localstack.services import airflow_env

    env = {**os.environ, **airflow_env(settings), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_import_errors(dagbag):
    assert dagbag["errors"] == {}


def test_every_dag_file_defines_a_dag(dagbag):
    files = {Path(info["file"]).name for info in dagbag["dags"].values()}
    defined = {path.name for path in DAGS.glob("*.py") if not path.name.startswith("_")}
    assert defined <= files
    assert "prepare_data" in dagbag["dags"]


def test_every_dag_has_tags_an_owner_and_retries(dagbag):
    for dag_id, info in dagbag["dags"].items():
        assert info["tags"], f"{dag_id} has no tags"
        for task_id, task in info["tasks"].items():
            assert task["owner"] and task["owner"] != "airflow", f"{dag_id}.{task_id} owner"
            assert task["retries"] >= 1, f"{dag_id}.{task_id} has no retries"
