"""Round trips through the project's own storage layer, against the real servers."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from minio.error import S3Error

from rakuten_mlops import storage
from rakuten_mlops.schema import migrate

pytestmark = pytest.mark.stack


def test_postgres_round_trip_with_copy(db):
    db.execute("CREATE TEMP TABLE round_trip (id int, txt text)")
    rows = [(1, "Lampe de chevet"), (2, "Brettspiel für Kinder"), (3, None)]
    with db.cursor().copy("COPY round_trip (id, txt) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    assert db.execute("SELECT id, txt FROM round_trip ORDER BY id").fetchall() == rows


def test_transaction_rolls_back_on_error(settings, stack):
    table = f"tx_{uuid.uuid4().hex[:8]}"
    with storage.connect(settings) as conn:
        conn.execute(f"CREATE TABLE {table} (id int)")
        conn.commit()
    try:
        with pytest.raises(RuntimeError), storage.transaction(settings) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            raise RuntimeError("boom")
        with storage.connect(settings) as conn:
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
    finally:
        with storage.connect(settings) as conn:
            conn.execute(f"DROP TABLE {table}")


def test_wrong_postgres_password_is_refused(settings, stack):
    wrong = settings.model_copy(
        update={"postgres_password": settings.postgres_password.__class__("nope")}
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        storage.connect(wrong)


def test_all_three_databases_exist(settings, stack):
    for database in (settings.postgres_db, settings.airflow_db, settings.mlflow_db):
        with storage.connect(settings, database=database) as conn:
            assert conn.execute("SELECT current_database()").fetchone()[0] == database


def test_migrations_apply_once(db):
    migrate(db)
    assert migrate(db) == []
    versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations")]
    assert versions and versions == sorted(versions)


def test_s3_round_trip(s3, settings):
    key = f"tests/{uuid.uuid4().hex}.bin"
    payload = bytes(range(256)) * 64
    bucket = settings.s3_bucket_artifacts
    storage.ensure_buckets(s3, [bucket])
    etag = storage.put_bytes(s3, bucket, key, payload, "application/x-test", {"sha256": "abc"})
    try:
        assert storage.get_bytes(s3, bucket, key) == payload
        stat = s3.stat_object(bucket, key)
        assert stat.size == len(payload) and stat.etag == etag
        assert stat.content_type == "application/x-test"
        assert {k.lower(): v for k, v in stat.metadata.items()}["x-amz-meta-sha256"] == "abc"
        assert key in [o.object_name for o in s3.list_objects(bucket, prefix="tests/")]
    finally:
        s3.remove_object(bucket, key)
    with pytest.raises(S3Error):
        s3.stat_object(bucket, key)


def test_ensure_buckets_is_idempotent(s3):
    name = f"test-{uuid.uuid4().hex[:12]}"
    try:
        assert storage.ensure_buckets(s3, [name]) == [name]
        assert storage.ensure_buckets(s3, [name]) == []
    finally:
        s3.remove_bucket(name)


def test_wrong_s3_secret_is_refused(settings, stack):
    wrong = settings.model_copy(
        update={"s3_secret_key": settings.s3_secret_key.__class__("wrong-secret")}
    )
    with pytest.raises(S3Error):
        storage.s3_client(wrong).list_buckets()


def test_stack_buckets_exist(s3, settings):
    existing = {bucket.name for bucket in s3.list_buckets()}
    assert set(settings.buckets) <= existing
