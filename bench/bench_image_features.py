#!/usr/bin/env python3
"""Benchmark (issue 17): the image_features stage against a naive loop, and its cached re-run.

Input: ../shared/data/rakuten's 1,635 real product images (images_labels.csv; the
designation from X_train_sample.csv where it has the product, a placeholder otherwise),
loaded by the project's own ingest into a database and bucket of this benchmark's own
(dropped at the end). Then, each on the same catalogue (every product with an image):

* naive: one thread, for each image in turn: S3 GET, full decode, the same descriptors
  (rakuten_mlops.ml.image_features), no cache;
* the stage on one core (this process pinned to one CPU; its IMAGE_FEATURE_WORKERS
  threads share it), from an empty cache;
* the stage on two cores (unpinned), from an empty cache;
* the stage's cached re-run: a new dataset version over the same images.

S3 and PostgreSQL are servers of the local stack (other processes, not pinned).
Prints one JSON object with images/s and ratios. Targets: >= 50 images/s on one core;
the cached re-run >= 20x faster than the first run.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest as base  # noqa: E402 - its database and bucket helpers

BENCH_DB = "rakuten_bench_image_features"
BUCKET = "bench-image-features"
TARGET_IMAGES_PER_SECOND = 50.0
TARGET_CACHED_SPEEDUP = 20.0

base.BENCH_DB = BENCH_DB  # its recreate/drop helpers act on this benchmark's database
os.environ.update({"POSTGRES_DB": BENCH_DB, "S3_BUCKET_IMAGES": BUCKET})


def note(message: str) -> None:
    print(f"[bench_image_features] {message}", file=sys.stderr, flush=True)


def build_raw_dir(target: Path) -> None:
    """One product per real image, in the challenge layout (images: a link to the shared,
    read-only folder)."""
    import csv

    from rakuten_mlops.ingest import sources

    with open(base.RAKUTEN / "X_train_sample.csv", newline="", encoding="utf-8") as handle:
        designations = {row["productid"]: row["designation"] for row in csv.DictReader(handle)}
    with open(base.RAKUTEN / "images_labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    target.mkdir(parents=True)
    with open(target / sources.X_TRAIN, "w", newline="", encoding="utf-8") as x_file, \
            open(target / sources.Y_TRAIN, "w", newline="", encoding="utf-8") as y_file:
        x_rows, y_rows = csv.writer(x_file), csv.writer(y_file)
        x_rows.writerow(["", "designation", "description", "productid", "imageid"])
        y_rows.writerow(["", "prdtypecode"])
        for index, row in enumerate(rows):
            designation = designations.get(row["productid"]) or f"product {row['productid']}"
            x_rows.writerow([index, designation, "", row["productid"], row["imageid"]])
            y_rows.writerow([index, row["prdtypecode"]])
    (target / sources.X_TEST).write_text(",designation,description,productid,imageid\n")
    (target / sources.CATEGORIES).symlink_to(base.RAKUTEN / "category_names.csv")
    (target / "images").mkdir()
    (target / "images" / "image_train").symlink_to(base.RAKUTEN / "images" / "image_train")


def naive_vector(data: bytes):
    """The same descriptors after a full decode (no draft mode)."""
    import numpy as np
    from PIL import Image

    from rakuten_mlops.ml import image_features as f

    image = Image.open(io.BytesIO(data))
    thumbnail = image.convert("RGB").resize((f.THUMBNAIL, f.THUMBNAIL))
    return np.concatenate([f.colour_histogram(thumbnail), f.shape_descriptor(thumbnail),
                           f.size_descriptor(*image.size)])


def run_naive(settings, images) -> float:
    from rakuten_mlops.storage import get_bytes, s3_client

    client = s3_client(settings)
    started = time.perf_counter()
    for image in images:
        naive_vector(get_bytes(client, image.bucket, image.s3_key))
    return time.perf_counter() - started


def empty_cache(settings) -> None:
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        conn.execute("TRUNCATE image_features, dataset_image_features")


def run_stage(settings, dataset_id: str, productids) -> dict:
    from rakuten_mlops.ml.image_stage import describe_images

    started = time.perf_counter()
    counts = describe_images(settings, dataset_id, productids)
    return {**counts, "wall_seconds": time.perf_counter() - started}


def pinned(cpus: set[int]):
    """Run the following in this process on `cpus` only (threads started later inherit)."""
    os.sched_setaffinity(0, cpus)


def measure(settings) -> dict:
    from rakuten_mlops.ingest import run_ingest
    from rakuten_mlops.ml.image_stage import stored_images
    from rakuten_mlops.storage import connect

    run_ingest(settings, "bench-image-features", bar=False)
    with connect(settings) as conn:
        productids = [row[0] for row in conn.execute("SELECT productid FROM products")]
        images = stored_images(conn, productids)
    note(f"{len(images)} images catalogued; naive loop...")
    all_cpus = os.sched_getaffinity(0)
    pinned({min(all_cpus)})
    naive = run_naive(settings, images)
    note("stage on one core...")
    empty_cache(settings)
    one = run_stage(settings, "bench-one-core", productids)
    pinned(all_cpus)
    note(f"stage on {len(all_cpus)} cores...")
    empty_cache(settings)
    two = run_stage(settings, "bench-two-cores", productids)
    cached = run_stage(settings, "bench-cached", productids)
    assert cached["images_read"] == 0, cached
    count = len(images)
    return {
        "images": count,
        "failed": two["failed"],
        "workers": settings.image_feature_workers,
        "naive_seconds": round(naive, 2),
        "naive_images_per_second": round(count / naive, 1),
        "one_core_seconds": round(one["wall_seconds"], 2),
        "one_core_images_per_second": round(count / one["wall_seconds"], 1),
        "cores": len(all_cpus),
        "all_cores_seconds": round(two["wall_seconds"], 2),
        "all_cores_images_per_second": round(count / two["wall_seconds"], 1),
        "cached_rerun_seconds": round(cached["wall_seconds"], 3),
        "ratio_one_core_vs_naive": round(naive / one["wall_seconds"], 2),
        "ratio_all_cores_vs_naive": round(naive / two["wall_seconds"], 2),
        "ratio_first_vs_cached_rerun": round(two["wall_seconds"] / cached["wall_seconds"], 1),
    }


def main() -> int:
    needed = [base.RAKUTEN / "X_train_sample.csv", base.RAKUTEN / "images_labels.csv",
              base.RAKUTEN / "images" / "image_train"]
    if missing := [str(path) for path in needed if not path.exists()]:
        note(f"skipped: benchmark data not found ({', '.join(missing)}); "
             "it lives in ../shared/data next to the checkout")
        print(json.dumps({"benchmark": "image_features", "skipped": True, "missing": missing}))
        return 0

    import logging

    from rakuten_mlops.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-image-features-") as tmp:
            raw_dir = Path(tmp) / "raw_data"
            build_raw_dir(raw_dir)
            base._empty_lake(settings)
            result = measure(settings.model_copy(update={"raw_data_dir": raw_dir}))
    finally:
        base.empty_bucket(base.client_for(settings), BUCKET, remove=True)
        base.drop_database(settings)
    print(json.dumps({
        "benchmark": "image_features",
        "load_average_1m": round(os.getloadavg()[0], 2),
        **result,
        "target": f">= {TARGET_IMAGES_PER_SECOND:g} images/s on one core; cached re-run "
                  f">= {TARGET_CACHED_SPEEDUP:g}x faster than the first",
        "meets_target": result["one_core_images_per_second"] >= TARGET_IMAGES_PER_SECOND
        and result["ratio_first_vs_cached_rerun"] >= TARGET_CACHED_SPEEDUP,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
