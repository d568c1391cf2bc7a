"""Access to the data lake's two stores: PostgreSQL (text, metadata) and S3 (objects).

Everything else in the package reaches the stores through these functions, so local
mode (SeaweedFS) and compose mode (MinIO) differ only in settings.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from minio import Minio

from rakuten_mlops.settings import Settings, get_settings


def connect(settings: Settings | None = None, database: str | None = None, **kwargs):
    """A new psycopg connection to `database` (the data lake by default)."""
    settings = settings or get_settings()
    return psycopg.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        user=settings.postgres_user,
        password=settings.postgres_password.get_secret_value(),
        dbname=database or settings.postgres_db,
        connect_timeout=kwargs.pop("connect_timeout", 5),
        **kwargs,
    )


def copy_rows(cursor: psycopg.Cursor, statement: str, rows: Iterable[Sequence]) -> None:
    """Stream `rows` into PostgreSQL with one `COPY ... FROM STDIN` statement."""
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


@contextmanager
def transaction(settings: Settings | None = None) -> Iterator[psycopg.Connection]:
    """A connection whose work commits on success and rolls back on any error."""
    with connect(settings) as conn, conn.transaction():
        yield conn


def s3_client(settings: Settings | None = None) -> Minio:
    settings = settings or get_settings()
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def ensure_buckets(client: Minio, buckets: tuple[str, ...] | list[str]) -> list[str]:
    """Create the buckets that do not exist yet; return the ones created."""
    created = []
    for bucket in buckets:
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            created.append(bucket)
    return created


def put_bytes(
    client: Minio,
    bucket: str,
    key: str,
    data: bytes,
    content_type: str = "application/octet-stream",
    metadata: dict[str, str] | None = None,
) -> str:
    """Store `data` under `key`; return the object's ETag."""
    result = client.put_object(
        bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata=metadata
    )
    return result.etag


def get_bytes(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()
