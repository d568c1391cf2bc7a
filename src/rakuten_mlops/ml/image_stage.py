"""Stage `image_features`: every image of a dataset version described once, cached by content.

For the products of a dataset version that have a catalogued image (ingest/images.py
stored it in S3 with its sha256), the stage looks up `image_features` by (sha256,
EXTRACTOR_VERSION) and reads from S3 only the images it has no row for, each once
(two products sharing one image share one read). Each object read is checked against
its catalogued sha256 before its vector is trusted under that checksum. An image that
cannot be decoded gets a row with its reason instead of a vector, so a re-run does not
read it again; an object whose bytes no longer match the catalogue (or that is gone) is
recorded for this dataset version only, since fixing the store fixes it.

Then the version's `dataset_image_features` rows (product -> key, sha256, reason) are
replaced as a whole, and the counts (cache hits, reads, failures, seconds) are logged
as an MLflow run tagged with the dataset id, in an experiment of its own
(`<MLFLOW_EXPERIMENT>-image-features`: the training experiment's top-level runs stay
trainings, which the control room lists). A re-run, or a new dataset version over the
same images, reads nothing it has.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import psycopg
from minio import Minio
from minio.error import S3Error

from rakuten_mlops.errors import LakeError
from rakuten_mlops.ingest.images import Workers
from rakuten_mlops.ingest.progress import Progress
from rakuten_mlops.ml import tracking
from rakuten_mlops.ml.dataset import Dataset, load_dataset
from rakuten_mlops.ml.fusion import IMAGE_COLUMN
from rakuten_mlops.ml.image_features import (
    EXTRACTOR_VERSION,
    FEATURE_LENGTH,
    UndecodableImage,
    from_bytes,
    image_vector,
    to_bytes,
)
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect, copy_rows, get_bytes, s3_client

log = logging.getLogger("rakuten_mlops.ml.image_stage")

CHECKSUM_MISMATCH = "checksum_mismatch"
MISSING_OBJECT = "missing_object"
COMMIT_EVERY = 200  # vectors per transaction: a crash loses at most this much work
EXPERIMENT_SUFFIX = "-image-features"


@dataclass(frozen=True, slots=True)
class StoredImage:
    productid: int
    bucket: str
    s3_key: str
    sha256: str


@dataclass(slots=True)
class Extracted:
    image: StoredImage
    vector: np.ndarray | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def cacheable(self) -> bool:
        """A vector, or a failure of the content itself (not of the store)."""
        return self.reason not in (CHECKSUM_MISMATCH, MISSING_OBJECT)


def stored_images(conn: psycopg.Connection, productids: Iterable[int]) -> list[StoredImage]:
    """The catalogued image of each of `productids` that has one."""
    rows = conn.execute(
        "SELECT productid, bucket, s3_key, sha256 FROM images"
        " WHERE productid = ANY(%s) ORDER BY productid",
        ([int(p) for p in productids],),
    ).fetchall()
    return [StoredImage(*row) for row in rows]


def cached_checksums(conn: psycopg.Connection, checksums: list[str]) -> dict[str, str | None]:
    """{sha256: failure reason or None} of the checksums already described."""
    rows = conn.execute(
        "SELECT sha256, failure_reason FROM image_features"
        " WHERE extractor_version = %s AND sha256 = ANY(%s)",
        (EXTRACTOR_VERSION, checksums),
    )
    return dict(rows.fetchall())


def extract(client: Minio, image: StoredImage) -> Extracted:
    """Read one object and describe it; its failure as a reason, never an exception
    (S3 being unreachable is the exception: it stops the stage)."""
    try:
        data = get_bytes(client, image.bucket, image.s3_key)
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
            return Extracted(image, reason=MISSING_OBJECT, detail=exc.code)
        raise
    actual = hashlib.sha256(data).hexdigest()
    if actual != image.sha256:
        return Extracted(image, reason=CHECKSUM_MISMATCH,
                         detail=f"stored object's sha256 is {actual[:16]}..., the catalogue's "
                                f"{image.sha256[:16]}...")
    try:
        return Extracted(image, vector=image_vector(data))
    except UndecodableImage as bad:
        return Extracted(image, reason=bad.reason, detail=bad.detail)


def save_vectors(conn: psycopg.Connection, results: list[Extracted]) -> None:
    rows = [
        (r.image.sha256, EXTRACTOR_VERSION, None if r.vector is None else to_bytes(r.vector),
         r.reason, r.detail, r.image.s3_key)
        for r in results if r.cacheable
    ]
    if not rows:
        return
    with conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_image_features (sha256 char(64),"
            " extractor_version text, vector bytea, failure_reason text, failure_detail text,"
            " s3_key text) ON COMMIT DELETE ROWS"
        )
        with conn.cursor() as cur:
            copy_rows(cur, "COPY stage_image_features FROM STDIN", rows)
        # Another run may have described the same image meanwhile: the first row stays.
        conn.execute(
            "INSERT INTO image_features (sha256, extractor_version, vector, failure_reason,"
            " failure_detail, s3_key) SELECT * FROM stage_image_features ON CONFLICT DO NOTHING"
        )


def record_dataset(conn: psycopg.Connection, dataset_id: str, images: list[StoredImage],
                   reasons: dict[str, str | None]) -> None:
    """Replace the version's product -> image rows (one transaction: never half of them)."""
    with conn.transaction():
        conn.execute(
            "DELETE FROM dataset_image_features WHERE dataset_id = %s AND extractor_version = %s",
            (dataset_id, EXTRACTOR_VERSION),
        )
        with conn.cursor() as cur:
            copy_rows(
                cur,
                "COPY dataset_image_features (dataset_id, extractor_version, productid, s3_key,"
                " sha256, reason) FROM STDIN",
                ((dataset_id, EXTRACTOR_VERSION, i.productid, i.s3_key, i.sha256,
                  reasons.get(i.s3_key)) for i in images),
            )


def describe_images(
    settings: Settings,
    dataset_id: str,
    productids: Iterable[int],
    workers: int | None = None,
    client: Minio | None = None,
) -> dict[str, float]:
    """Describe the images of `productids` (the products of `dataset_id`) that are not
    cached yet and record the version's references; the counts of this call."""
    started = time.perf_counter()
    client = client or s3_client(settings)
    with connect(settings, autocommit=True) as conn:
        images = stored_images(conn, productids)
        cached = cached_checksums(conn, sorted({i.sha256 for i in images}))
        todo = list({i.sha256: i for i in images if i.sha256 not in cached}.values())
        log.info("dataset %s: %d products with an image, %d distinct images cached, %d to "
                 "read (extractor %s)", dataset_id, len(images), len(cached), len(todo),
                 EXTRACTOR_VERSION)
        failed = {i.s3_key: cached[i.sha256] for i in images if cached.get(i.sha256)}
        keys: dict[str, list[str]] = {}  # sha256 -> the keys of the products sharing it
        for image in images:
            keys.setdefault(image.sha256, []).append(image.s3_key)
        done: list[Extracted] = []
        with Workers(lambda image: extract(client, image), todo,
                     workers or settings.image_feature_workers) as results, \
                Progress(f"dataset {dataset_id} image features", len(todo), "images",
                         bar=False) as progress:
            for result in results:
                done.append(result)
                progress.update()
                if result.reason:
                    failed.update({key: result.reason for key in keys[result.image.sha256]})
                    log.warning("image %s skipped: %s (%s)", result.image.s3_key,
                                result.reason, result.detail)
                if len(done) % COMMIT_EVERY == 0:
                    save_vectors(conn, done[-COMMIT_EVERY:])
            save_vectors(conn, done[len(done) - len(done) % COMMIT_EVERY:])
            if results.error is not None:
                raise results.error
        record_dataset(conn, dataset_id, images, failed)
    seconds = time.perf_counter() - started
    counts = {
        "products_with_image": len(images),
        "cache_hits": sum(i.sha256 in cached for i in images),
        "images_read": len(todo),
        "computed": sum(r.vector is not None for r in done),
        "failed": len(failed),
        "seconds": round(seconds, 3),
    }
    log.info("dataset %s image features: %s", dataset_id, counts)
    return counts


def dataset_vectors(settings: Settings, dataset_id: str) -> dict[int, np.ndarray]:
    """{productid: vector} of the products of `dataset_id` whose image was described."""
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT d.productid, f.vector FROM dataset_image_features d"
            " JOIN image_features f USING (sha256, extractor_version)"
            " WHERE d.dataset_id = %s AND d.extractor_version = %s AND d.reason IS NULL"
            " AND f.vector IS NOT NULL",
            (dataset_id, EXTRACTOR_VERSION),
        ).fetchall()
    vectors = {int(pid): from_bytes(blob) for pid, blob in rows}
    if any(len(vector) != FEATURE_LENGTH for vector in vectors.values()):
        raise LakeError(f"dataset {dataset_id}: image vectors of another length than "
                        f"{EXTRACTOR_VERSION}'s {FEATURE_LENGTH} (change EXTRACTOR_VERSION "
                        "with the extractor)")
    return vectors


def experiment_name(settings: Settings) -> str:
    return settings.mlflow_experiment + EXPERIMENT_SUFFIX


def load_dataset_with_images(settings: Settings, dataset_id: str) -> Dataset:
    """Dataset version `dataset_id` with each product's image vector (None without one,
    or before the stage ran on it) in the IMAGE_COLUMN the fusion family reads."""
    dataset = load_dataset(settings, dataset_id)
    vectors = dataset_vectors(settings, dataset_id)
    column = [vectors.get(int(productid)) for productid in dataset.frame["productid"]]
    return Dataset(dataset.frame.assign(**{IMAGE_COLUMN: column}), dataset.manifest)


def log_to_mlflow(settings: Settings, dataset_id: str, counts: dict[str, float]) -> str:
    """One MLflow run per call, tagged with the dataset version; its id.

    Through a client, not mlflow's fluent API: `set_experiment` would change the active
    experiment of the whole process, where `airflow dags test` runs the next tasks.
    """
    from mlflow.entities import Metric, Param, RunTag  # heavy; only this step needs MLflow

    client = tracking.client(settings, "admin")
    run = client.create_run(
        tracking.experiment_id(settings, experiment_name(settings)),
        run_name=f"image-features-{dataset_id}",
        tags={"stage": "image_features", "dataset_id": dataset_id,
              "extractor_version": EXTRACTOR_VERSION},
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(f"image_{name}", float(value), now, 0) for name, value in counts.items()],
        params=[Param("extractor_version", EXTRACTOR_VERSION),
                Param("feature_length", str(FEATURE_LENGTH))],
        tags=[RunTag("mlflow.source.name", "rakuten_mlops.ml.image_stage")],
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_image_features(settings: Settings, dataset_id: str, report=print) -> dict[str, float]:
    """Stage `image_features` on dataset version `dataset_id`: describe, record, log."""
    dataset = load_dataset(settings, dataset_id)
    counts = describe_images(settings, dataset_id, dataset.frame["productid"])
    counts["mlflow_run_id"] = log_to_mlflow(settings, dataset_id, counts)
    report(f"dataset {dataset_id} image features ({EXTRACTOR_VERSION}): {counts}")
    return counts
