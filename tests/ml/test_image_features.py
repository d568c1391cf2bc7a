"""The image feature step: the pure extractor, and the stage on the shipped sample's images
loaded into a lake of this module's own (real PostgreSQL, real S3, real MLflow).

The stage's promise is that S3 is read once per image content: the proof counts the
GET requests a real client sends (CountingClient), not what the stage says it did.
"""

from __future__ import annotations

import hashlib
import io
import shutil

import numpy as np
import pytest
from minio import Minio

from rakuten_mlops.ml.image_features import (
    EXTRACTOR_VERSION,
    FEATURE_LENGTH,
    UndecodableImage,
    colour_histogram,
    decode_thumbnail,
    image_vector,
)
from tests.support import lake as lakehelpers
from tests.support.lake import jpeg_bytes, png_bytes

SAMPLE_IMAGES = lakehelpers.SAMPLE / "images" / "image_train"


def sample_jpeg() -> bytes:
    return next(iter(sorted(SAMPLE_IMAGES.glob("*.jpg")))).read_bytes()


# ------------------------------------------------------------------ the pure extractor


def test_a_vector_has_a_fixed_length_and_depends_only_on_the_bytes():
    data = sample_jpeg()
    first, again = image_vector(data), image_vector(data)
    assert first.dtype == np.float32 and first.shape == (FEATURE_LENGTH,)
    assert np.isfinite(first).all()
    assert np.array_equal(first, again)
    small = image_vector(jpeg_bytes((40, 20)))  # any size gives the same length
    assert small.shape == (FEATURE_LENGTH,)
    assert small[-1] == pytest.approx(np.log(2.0))  # the aspect ratio, last


def test_the_colour_histogram_sees_colour():
    red, _ = decode_thumbnail(jpeg_bytes())  # (200, 30, 30)
    assert colour_histogram(red).sum() == pytest.approx(1.0)
    assert colour_histogram(red).max() > 0.9  # one hue, one saturation, one value bin
    blue = solid_jpeg((30, 30, 200))
    assert np.argmax(colour_histogram(decode_thumbnail(blue)[0])) != np.argmax(
        colour_histogram(red))


def solid_jpeg(colour) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_png_is_described_and_broken_files_say_why():
    assert image_vector(png_bytes()).shape == (FEATURE_LENGTH,)
    data = sample_jpeg()
    cases = {
        b"": "empty_image",
        b"<html>not an image</html>": "undecodable_image",
        data[: len(data) // 2]: "undecodable_image",  # truncated in the entropy data
    }
    for broken, reason in cases.items():
        with pytest.raises(UndecodableImage) as caught:
            image_vector(broken)
        assert caught.value.reason == reason


# ------------------------------------------------------------------ the stage


class CountingClient(Minio):
    """A real S3 client that counts the objects it reads."""

    gets = 0

    def get_object(self, *args, **kwargs):
        CountingClient.gets += 1
        return super().get_object(*args, **kwargs)


def counting_client(settings) -> CountingClient:
    CountingClient.gets = 0
    return CountingClient(settings.s3_endpoint, access_key=settings.s3_access_key,
                          secret_key=settings.s3_secret_key.get_secret_value(),
                          secure=settings.s3_secure, region=settings.s3_region)


@pytest.fixture(scope="module")
def image_lake(settings, lake_database, tmp_path_factory):
    """The shipped sample loaded (as prepare_data loads it) into the ingest lake, once."""
    from rakuten_mlops.ingest import run_ingest

    sample = tmp_path_factory.mktemp("image_lake") / "raw_data"
    shutil.copytree(lakehelpers.SAMPLE, sample, ignore=shutil.ignore_patterns("README.md"))
    lake = lakehelpers.Lake(settings.model_copy(update={
        "postgres_db": lake_database,
        "s3_bucket_images": f"{settings.s3_bucket_images}-ingest",
        "raw_data_dir": sample,
    }))
    lake.reset()
    assert run_ingest(lake.settings, "image-features", bar=False)["status"] == "succeeded"
    return lake


@pytest.mark.stack
def test_the_step_reads_each_image_once_across_reruns_and_dataset_versions(image_lake):
    from rakuten_mlops.ml.image_stage import dataset_vectors, describe_images

    settings = image_lake.settings
    products = [row[0] for row in image_lake.rows("SELECT productid FROM products")]
    with_image = {row[0] for row in image_lake.rows("SELECT productid FROM images")}
    assert len(with_image) == 280

    # An older dataset version with part of the products: only their images are read.
    older = sorted(with_image)[:100] + [p for p in products if p not in with_image][:50]
    client = counting_client(settings)
    first = describe_images(settings, "test-older", older, workers=2, client=client)
    assert CountingClient.gets == first["images_read"] == first["computed"] == 100
    assert first["cache_hits"] == 0 and first["products_with_image"] == 100

    # A new version with every product: the 100 are cache hits, 180 are read.
    client = counting_client(settings)
    newer = describe_images(settings, "test-newer", products, workers=2, client=client)
    assert CountingClient.gets == newer["images_read"] == 180
    assert newer["cache_hits"] == 100 and newer["products_with_image"] == 280

    # Its re-run reads no image at all.
    client = counting_client(settings)
    rerun = describe_images(settings, "test-newer", products, workers=2, client=client)
    assert CountingClient.gets == 0 == rerun["images_read"]
    assert rerun["cache_hits"] == 280 and rerun["failed"] == 0

    vectors = dataset_vectors(settings, "test-newer")
    assert set(vectors) == with_image
    productid, imageid, split = image_lake.rows(
        "SELECT productid, imageid, source_split FROM images ORDER BY productid LIMIT 1")[0]
    source = settings.raw_data_dir / "images" / f"image_{split}" / \
        f"image_{imageid}_product_{productid}.jpg"
    assert np.array_equal(vectors[productid], image_vector(source.read_bytes()))
    assert image_lake.scalar(
        "SELECT count(*) FROM dataset_image_features WHERE dataset_id = 'test-newer'") == 280
    assert image_lake.scalar(
        "SELECT count(DISTINCT extractor_version) FROM image_features") == 1
    assert image_lake.scalar("SELECT min(extractor_version) FROM image_features") \
        == EXTRACTOR_VERSION


@pytest.mark.stack
def test_a_corrupt_or_altered_object_is_recorded_with_its_reason_and_skipped(image_lake):
    from rakuten_mlops.ml.image_stage import dataset_vectors, describe_images
    from rakuten_mlops.storage import put_bytes, s3_client

    settings = image_lake.settings
    bucket = settings.s3_bucket_images
    client = s3_client(settings)
    # A product without an image gets a catalogued object that is a truncated JPEG.
    product, imageid = image_lake.rows(
        "SELECT productid, imageid FROM products WHERE productid NOT IN"
        " (SELECT productid FROM images) ORDER BY productid LIMIT 1")[0]
    corrupt = sample_jpeg()[:2000]
    key = f"image_train/{product}/{imageid}.jpg"
    put_bytes(client, bucket, key, corrupt, "image/jpeg")
    with image_lake.connect() as conn:
        conn.execute(
            "INSERT INTO images (s3_key, bucket, productid, imageid, source_split, size_bytes,"
            " sha256, width, height, batch_id) SELECT %s, %s, %s, %s, 'train', %s, %s, 500,"
            " 500, max(batch_id) FROM load_batches",
            (key, bucket, product, imageid, len(corrupt), hashlib.sha256(corrupt).hexdigest()))
    # A catalogued image whose object was replaced by other bytes since it was loaded.
    altered_product, altered_key = image_lake.rows(
        "SELECT productid, s3_key FROM images WHERE productid <> %s ORDER BY productid"
        " DESC LIMIT 1", product)[0]
    original = client.get_object(bucket, altered_key).read()
    with image_lake.connect() as conn:  # as if no run had described it yet
        conn.execute("DELETE FROM image_features WHERE sha256 = %s",
                     (hashlib.sha256(original).hexdigest(),))
    put_bytes(client, bucket, altered_key, jpeg_bytes(), "image/jpeg")
    try:
        products = [product, altered_product]
        counts = describe_images(settings, "test-corrupt", products, workers=1,
                                 client=counting_client(settings))
        reasons = dict(image_lake.rows(
            "SELECT productid, reason FROM dataset_image_features"
            " WHERE dataset_id = 'test-corrupt'"))
        assert reasons == {product: "undecodable_image", altered_product: "checksum_mismatch"}
        assert counts["failed"] == 2 and dataset_vectors(settings, "test-corrupt") == {}
        reason, detail = image_lake.rows(
            "SELECT failure_reason, failure_detail FROM image_features WHERE s3_key = %s",
            key)[0]
        assert reason == "undecodable_image" and detail
        # The undecodable content is not read again; the altered object is (the store
        # may be repaired), and is still refused.
        client_again = counting_client(settings)
        again = describe_images(settings, "test-corrupt", products, client=client_again)
        assert CountingClient.gets == 1 and again["failed"] == 2
    finally:
        put_bytes(client, bucket, altered_key, original, "image/jpeg")
        client.remove_object(bucket, key)
        with image_lake.connect() as conn:
            conn.execute("DELETE FROM images WHERE s3_key = %s", (key,))


@pytest.mark.stack
def test_the_stage_logs_its_counts_to_mlflow(image_lake, tmp_path):
    from rakuten_mlops.ml import registry
    from rakuten_mlops.ml.image_stage import experiment_name, log_to_mlflow
    from tests.support.ml import private_model

    with private_model(image_lake.settings, tmp_path, "test-image-features") as own:
        run_id = log_to_mlflow(own, "test-dataset", {"cache_hits": 3, "images_read": 5})
        client = registry.client(own)
        run = client.get_run(run_id)
        experiment = client.get_experiment(run.info.experiment_id)
        client.delete_experiment(experiment.experiment_id)
    assert experiment.name == experiment_name(own)  # not the trainings' experiment
    assert run.data.tags["dataset_id"] == "test-dataset"
    assert run.data.tags["extractor_version"] == EXTRACTOR_VERSION
    assert run.data.metrics == {"image_cache_hits": 3.0, "image_images_read": 5.0}


@pytest.mark.stack
def test_the_command_names_an_unknown_dataset_in_one_line(stack):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "image-features", "--dataset-id", "no-such"],
        cwd=lakehelpers.PROJECT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("image-features: unknown dataset 'no-such'"), last
