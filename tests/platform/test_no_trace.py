"""The no-trace check (tests/support/cleanup.py) sees a leak, names it, and removes what
tests create for good.

The check itself runs once per session, at its end in the main process
(tests/support/workers.py): after every worker and fixture has cleaned up, it removes
the session's Airflow test runs, MLflow test models and experiments, test buckets and
databases, then fails the session if the user's stack differs from its snapshot at the start. These
tests prove each part on the real services, with names of their own.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.cleanup import (
    Snapshot,
    owned_buckets,
    owned_databases,
    remove_buckets,
    remove_mlflow,
    user_settings,
)

pytestmark = pytest.mark.stack


@pytest.fixture()
def user(stack, settings):
    return user_settings(settings)


def test_tests_own_their_database_and_buckets_and_never_the_users(user, settings):
    assert user.postgres_db != settings.postgres_db
    assert settings.postgres_db in owned_databases(user, settings)
    assert user.postgres_db not in owned_databases(user, settings)
    owned = owned_buckets(user)
    assert {settings.s3_bucket_images, settings.s3_bucket_artifacts} <= owned
    assert not owned & {user.s3_bucket_images, user.s3_bucket_artifacts, user.s3_bucket_mlflow}


@pytest.mark.exclusive
def test_a_leak_is_named_and_mlflow_test_entities_are_removed_for_good(user, settings):
    from mlflow.tracking import MlflowClient

    from rakuten_mlops.storage import connect, s3_client

    before = Snapshot.take(user, settings)
    tag = uuid.uuid4().hex[:8]
    bucket, name = f"notrace-{tag}", f"test-notrace-{tag}"
    s3 = s3_client(user)
    s3.make_bucket(bucket)  # not a test-* name: a leak the cleanup would not remove
    client = MlflowClient(user.tracking_uri)
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "an artifact", "note.txt")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    client.create_model_version(name, f"runs:/{run.info.run_id}/note.txt", run.info.run_id)
    try:
        during = Snapshot.take(user, settings)
        named = "\n".join(before.differences(during))
        for leak in (bucket, name, run.info.run_id):
            assert leak in named, named
    finally:
        remove_buckets(user, {bucket})
        removed = remove_mlflow(user, before, Snapshot.take(user, settings))
    assert removed == (1, 1)
    assert before.differences(Snapshot.take(user, settings)) == []
    # For good: not even a deleted experiment, run or version row is left.
    with connect(user, database=user.mlflow_db) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM experiments WHERE name = %s)"
            " + (SELECT count(*) FROM runs WHERE run_uuid = %s)"
            " + (SELECT count(*) FROM model_versions WHERE name = %s)",
            (name, run.info.run_id, name),
        ).fetchone()[0]
    assert left == 0
    assert not s3.bucket_exists(bucket)
