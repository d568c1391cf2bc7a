"""A load killed part-way and started again ends with every row and image exactly once.

These run the real CLI in a subprocess against the real PostgreSQL and S3, and kill it
for real (SIGKILL: no cleanup, no finally blocks, connections cut mid-transaction).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import psycopg
import pytest

from tests.support.lake import PROJECT, expected_from, sha256

pytestmark = pytest.mark.stack


def assert_loaded_exactly_once(lake, summary: dict) -> None:
    expected = expected_from(lake.settings.raw_data_dir)
    assert summary["status"] == "succeeded"
    assert lake.scalar("SELECT count(*) FROM products") == expected.products == 2306
    assert lake.scalar("SELECT count(DISTINCT productid) FROM products") == 2306
    assert lake.scalar("SELECT count(*) FROM labels") == len(expected.labels)
    assert lake.scalar("SELECT count(*) FROM dataset_split") == len(expected.labels)
    catalogue = dict(lake.rows("SELECT s3_key, sha256 FROM images"))
    objects = lake.objects()
    assert set(catalogue) == set(objects) == set(expected.images)
    assert all(catalogue[key] == sha256(path) for key, path in expected.images.items())
    assert lake.scalar("SELECT count(*) FROM rejects") == 2306 - 280  # missing images
    assert not lake.rows("SELECT source_file, locator, reason FROM rejects"
                         " GROUP BY 1, 2, 3 HAVING count(*) > 1")
    assert lake.scalar("SELECT count(*) FROM load_batches") == 1


def count_or_zero(lake, query: str) -> int:
    try:
        return lake.scalar(query)
    except psycopg.errors.UndefinedTable:  # before the load created the schema
        return 0


def sigkill_ingest_once_stored(lake, run_id: str, objects: int, extra_env=None) -> int:
    """`ingest --run-id run_id`, SIGKILLed once `objects` images are in S3: its return code.

    One upload thread and a commit every 10 images: slow enough to be caught mid-way."""
    slow = {**lake.env, "INGEST_IMAGE_WORKERS": "1", "INGEST_IMAGE_CHUNK": "10",
            **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "rakuten_mlops", "ingest", "--run-id", run_id],
        env=slow, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while len(lake.objects()) < objects:
            assert process.poll() is None, "the load ended before it could be killed"
            assert time.monotonic() < deadline, f"not {objects} images uploaded within 120 s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    return process.returncode


def test_sigkill_while_uploading_images_then_the_same_run_finishes_it(lake):
    assert sigkill_ingest_once_stored(lake, "killed", objects=25) == -signal.SIGKILL

    catalogued = lake.scalar("SELECT count(*) FROM images")
    stored = len(lake.objects())
    print(f"killed with {catalogued} images catalogued and {stored} stored")
    assert 0 < catalogued < 280 and catalogued <= stored < 280
    assert lake.rows("SELECT status, text_loaded_at IS NOT NULL FROM load_batches") == [
        ("running", True)]
    assert lake.scalar("SELECT count(*) FROM products") == 2306  # the text had committed

    result = lake.cli("ingest", "--run-id", "killed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming its images" in result.stderr
    summary = json.loads(result.stdout)
    assert_loaded_exactly_once(lake, summary)
    # Objects stored before the kill but not catalogued were recognised, not re-sent.
    assert summary["images_skipped"] == stored - catalogued
    assert summary["images_uploaded"] + summary["images_skipped"] == 280


def test_sharded_image_load_killed_midway_then_rerun_stores_each_image_once(lake):
    """The image phase in shards of 400 products (6 on the sample, about 47
    images each), killed in a later shard, then the same run re-run."""
    sigkill_ingest_once_stored(lake, "killed-shards", objects=110,
                               extra_env={"INGEST_IMAGE_SHARD_SIZE": "400"})
    shards = lake.rows("SELECT first_id, finished_at IS NOT NULL FROM image_shards"
                       " ORDER BY first_id")
    # Killed after its first shard, before its last one finished (or started).
    assert shards[0][1] and (len(shards) < 6 or not shards[-1][1]), shards
    stored = len(lake.objects())
    catalogued = lake.scalar("SELECT count(*) FROM images")
    assert catalogued <= stored < 280

    result = lake.cli("ingest", "--run-id", "killed-shards",
                      env={"INGEST_IMAGE_SHARD_SIZE": "400"})
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert_loaded_exactly_once(lake, summary)
    assert summary["images_skipped"] == stored - catalogued
    assert lake.rows("SELECT count(*), bool_and(finished_at IS NOT NULL) FROM image_shards"
                     ) == [(6, True)]


def test_death_inside_the_text_transaction_leaves_nothing_then_the_run_loads(lake):
    crash = {"RAKUTEN_TEST_CRASH_POINT": "text_before_commit"}
    result = lake.cli("ingest", "--run-id", "crashed", env=crash)
    assert result.returncode == 75, result.stderr[-3000:]
    assert "exiting abruptly" in result.stderr
    # Products, labels, rejects and the batch row were all one uncommitted transaction.
    assert count_or_zero(lake, "SELECT count(*) FROM load_batches") == 0
    assert count_or_zero(lake, "SELECT count(*) FROM products") == 0
    assert count_or_zero(lake, "SELECT count(*) FROM rejects") == 0

    result = lake.cli("ingest", "--run-id", "crashed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_loaded_exactly_once(lake, json.loads(result.stdout))
