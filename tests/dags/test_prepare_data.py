"""`airflow dags test prepare_data` on the shipped sample, against the real services.

The DAG runs in a subprocess with the project's Airflow environment and this test's
lake (database, bucket and a copy of raw_data/), then the lake is counted with SQL and
an S3 listing against the input. A second run must change no count.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.lake import PROJECT, expected_from, sha256

pytestmark = pytest.mark.stack

DATA_TABLES = ("products", "labels", "categories", "dataset_split", "images", "rejects")


def dags_test(lake, settings) -> subprocess.CompletedProcess:
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    env = {**lake.env, **airflow_env(settings)}
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(Path(venv_bin()) / "airflow"), "dags", "test", "prepare_data"],
                          env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600)


def test_the_dag_loads_the_sample_and_a_second_run_changes_nothing(lake, settings):
    result = dags_test(lake, settings)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    for task in ("migrate_schema", "load_text", "assign_split", "load_images", "finalize"):
        assert f"task_id={task}" in log
    assert "images: 140/280 images" in log  # progress lines reach the task log

    expected = expected_from(lake.settings.raw_data_dir)
    counts = lake.counts()
    assert counts["products"] == expected.products == 2306
    assert counts["labels"] == counts["dataset_split"] == len(expected.labels) == 2075
    assert counts["categories"] == 27
    assert lake.rows("SELECT source_split, count(*) FROM products GROUP BY 1 ORDER BY 1") == [
        ("test", len(expected.test)), ("train", len(expected.train))]
    catalogue = dict(lake.rows("SELECT s3_key, sha256 FROM images"))
    assert set(catalogue) == set(lake.objects()) == set(expected.images)
    assert len(catalogue) == 280
    assert all(catalogue[key] == sha256(path) for key, path in expected.images.items())
    assert counts["rejects"] == 2306 - 280  # the sample's products without an image file
    batches = lake.rows("SELECT run_id, status, rows_read FROM load_batches")
    assert len(batches) == 1 and batches[0][0].startswith("manual__")
    assert batches[0][1:] == ("succeeded", 2306)

    again = dags_test(lake, settings)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    after = lake.counts()
    assert {t: after[t] for t in DATA_TABLES} == {t: counts[t] for t in DATA_TABLES}
    assert set(lake.objects()) == set(catalogue)
    # The second run is recorded, as a batch that found nothing left to load.
    assert lake.rows("SELECT status, rows_read, products_loaded, images_loaded, rejects"
                     " FROM load_batches ORDER BY batch_id")[1] == ("succeeded", 0, 0, 0, 0)
