"""Helpers and fixtures of the load tests: a lake of their own, inputs, ways to run.

Load tests compare exact counts with their input, so they need a lake nobody else
writes to while they run (other suites share the test database). They use a database
and a bucket derived from the test ones that tests/conftest.py sets
(`<POSTGRES_DB>_ingest`, `<S3_BUCKET_IMAGES>-ingest`), emptied before each test. The
database is created when missing, over the local cluster's superuser socket (as
`stack up` creates the others). tests/ingest/conftest.py and
tests/dags/test_prepare_data.py import the fixtures from here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

PROJECT = Path(__file__).resolve().parents[2]
SAMPLE = PROJECT / "raw_data"


def _admin(settings) -> psycopg.Connection:
    from rakuten_mlops.localstack.postgres import postgres_superuser_kwargs

    return psycopg.connect(**postgres_superuser_kwargs(settings), autocommit=True)


@dataclass
class Lake:
    settings: object  # rakuten_mlops.settings.Settings for this lake

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess (CLI, airflow) that must write to this lake."""
        return {**os.environ, "POSTGRES_DB": self.settings.postgres_db,
                "S3_BUCKET_IMAGES": self.settings.s3_bucket_images,
                "RAW_DATA_DIR": str(self.settings.raw_data_dir)}

    def with_raw(self, raw_dir: Path, **changes) -> Lake:
        return Lake(self.settings.model_copy(update={"raw_data_dir": raw_dir, **changes}))

    def connect(self) -> psycopg.Connection:
        from rakuten_mlops.storage import connect

        return connect(self.settings, autocommit=True)

    def scalar(self, query: str, *args):
        with self.connect() as conn:
            return conn.execute(query, args).fetchone()[0]

    def rows(self, query: str, *args) -> list[tuple]:
        with self.connect() as conn:
            return conn.execute(query, args).fetchall()

    def counts(self) -> dict[str, int]:
        tables = ("products", "labels", "categories", "dataset_split", "images", "rejects",
                  "load_batches")
        with self.connect() as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}

    def objects(self) -> dict[str, object]:
        from rakuten_mlops.storage import s3_client

        client = s3_client(self.settings)
        bucket = self.settings.s3_bucket_images
        if not client.bucket_exists(bucket):
            return {}
        return {o.object_name: o for o in client.list_objects(bucket, recursive=True)}

    def reset(self) -> None:
        from minio.deleteobjects import DeleteObject

        from rakuten_mlops.schema import migrate_lake
        from rakuten_mlops.storage import s3_client

        with self.connect() as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
            # As the stack's start-up does: only `migrate` creates the schema now.
            migrate_lake(self.settings, conn)
        client = s3_client(self.settings)
        bucket = self.settings.s3_bucket_images
        if client.bucket_exists(bucket):
            objects = [DeleteObject(o.object_name)
                       for o in client.list_objects(bucket, recursive=True)]
            assert not list(client.remove_objects(bucket, objects))

    def cli(self, *args: str, env: dict | None = None, timeout: float = 600,
            **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rakuten_mlops", *args],
                              env={**self.env, **(env or {})}, cwd=PROJECT,
                              capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def lake_database(stack, settings) -> str:
    name = f"{settings.postgres_db}_ingest"
    with _admin(settings) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{settings.postgres_user}"')
    return name


@pytest.fixture()
def lake(settings, lake_database, sample_dir) -> Lake:
    """An empty lake (database schema and image bucket) reading `sample_dir`."""
    lake = Lake(settings.model_copy(update={
        "postgres_db": lake_database,
        "s3_bucket_images": f"{settings.s3_bucket_images}-ingest",
        "raw_data_dir": sample_dir,
    }))
    lake.reset()
    return lake


@pytest.fixture()
def sample_dir(tmp_path) -> Path:
    """A private copy of the shipped sample (raw_data/), safe to modify."""
    target = tmp_path / "raw_data"
    shutil.copytree(SAMPLE, target, ignore=shutil.ignore_patterns("README.md"))
    return target


# --------------------------------------------------------------------------- input facts


@dataclass
class Expected:
    """What a raw folder holds, counted independently of the loader (pandas-free csv)."""

    train: dict[int, dict]  # index -> row
    test: dict[int, dict]
    labels: dict[int, int]
    images: dict[str, Path]  # expected object key -> file

    @property
    def products(self) -> int:
        return len(self.train) + len(self.test)


def expected_from(raw: Path) -> Expected:
    def rows(name: str) -> dict[int, dict]:
        path = raw / name
        if not path.exists():
            return {}
        with path.open(newline="", encoding="utf-8") as handle:
            return {int(row[""]): row for row in csv.DictReader(handle)}

    train, test = rows("X_train_update.csv"), rows("X_test_update.csv")
    labels = {index: int(row["prdtypecode"]) for index, row in rows("Y_train_CVw08PX.csv").items()}
    images = {}
    for split, records in (("train", train), ("test", test)):
        for row in records.values():
            name = f"image_{row['imageid']}_product_{row['productid']}.jpg"
            path = raw / "images" / f"image_{split}" / name
            if path.exists():
                images[f"image_{split}/{row['productid']}/{row['imageid']}.jpg"] = path
    return Expected(train, test, labels, images)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jpeg_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()
