#!/usr/bin/env python3
"""Benchmark (issue 12, item 7): the image phase of a fresh large batch vs its re-run.

A large new batch's image phase once took 7m26s in one statement (`_record_missing`,
41.5k products) against 17 s for the same phase re-run: the planner's statistics still
described the lake before the batch. The phase now refreshes them first (ANALYZE).

Input: bench_ingest's (../shared/data/translated, 57,375 products without images, plus
one row per real image of ../shared/data/rakuten, 1,635 JPEGs). Its image folder also
gets a link to one of those JPEGs for each product of batch 1 (a lake whose catalogue
holds many images), and, after batch 1, 85,000 empty files of products in no row (the
challenge's folders hold 98.7k images; batch 2 records them as orphan_image rejects):
the cost of a badly planned statement grows with products x rejects or file names.
Loaded as two batches into a database and bucket of this benchmark's own (dropped at
the end):
* batch 1: the first 30% of the records (text, split, 17.7k images), then ANALYZE, as
  autovacuum does within a minute of such a batch (its statistics say batch_id = 1);
* batch 2: every remaining record (about 41.3k products, the 1,635 images among them):
  its text, then its image phase timed ("fresh");
* the same image phase again ("re-run"): batch 2's catalogue rows and image rejects
  deleted, its objects put again.
Prints one JSON object; target fresh <= 2x re-run. BENCH_STALE=1 also times the fresh
phase without the statistics refresh (the old behaviour). Stale, the new batch's
products are estimated at 1 row and `_record_missing` is planned as nested loops: cheap
where the inner side is an index (images.productid, the rejects key; EXPLAIN ANALYZE
here: 0.4 s), but a table whose statistics say it is empty (analysed before it filled)
is scanned once per product. This input did not reproduce the reported 26x (the stale
run takes about as long as the fresh one here); the target is checked on the fix.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest as base  # noqa: E402 - its input, database and bucket helpers

BENCH_DB = "rakuten_bench_images"
BUCKET = "bench-image-phase"
FIRST_SLICE = "0.3"
ORPHAN_FILES = int(os.environ.get("BENCH_ORPHAN_FILES", "85000"))
TARGET_RATIO = 2.0

base.BENCH_DB = BENCH_DB  # its recreate/drop helpers act on this benchmark's database
os.environ.update({"POSTGRES_DB": BENCH_DB, "S3_BUCKET_IMAGES": BUCKET})


def note(message: str) -> None:
    print(f"[bench_image_phase] {message}", file=sys.stderr, flush=True)


def fill_image_folder(raw_dir: Path, first_batch: int) -> None:
    """bench_ingest's image folder (a symlink to the shared, read-only one) made a real
    folder: a link per real image, one per product of the first batch (to a real JPEG),
    and ORPHAN_FILES empty files of no product."""
    import csv

    from rakuten_mlops.ingest.sources import X_TRAIN, image_name

    folder = raw_dir / "images" / "image_train"
    shared = folder.resolve()
    folder.unlink()
    folder.mkdir()
    jpegs = sorted(shared.glob("*.jpg"))
    for path in jpegs:
        (folder / path.name).symlink_to(path)
    with open(raw_dir / X_TRAIN, newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle)
        for n, row in zip(range(first_batch), rows, strict=False):
            name = image_name(int(row["productid"]), int(row["imageid"]))
            (folder / name).symlink_to(jpegs[n % len(jpegs)])


def add_orphan_files(raw_dir: Path) -> None:
    """ORPHAN_FILES empty image files of no product, arrived after batch 1: the next
    batch's text phase records them (orphan_image rejects of that batch)."""
    folder = raw_dir / "images" / "image_train"
    for n in range(ORPHAN_FILES):
        (folder / f"image_{8_000_000_000 + n}_product_{8_000_000_000 + n}.jpg").touch()


def reset_image_phase(settings, batch_id: int) -> None:
    """Batch `batch_id` as it was before its image phase (its text and split kept)."""
    from rakuten_mlops.ingest.batches import BAD_IMAGE_REASONS
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        conn.execute("DELETE FROM images WHERE batch_id = %s", (batch_id,))
        conn.execute("DELETE FROM rejects WHERE batch_id = %s AND reason = ANY(%s)",
                     (batch_id, ["missing_image", *BAD_IMAGE_REASONS]))
        conn.execute("UPDATE load_batches SET images_started_at = NULL, status = 'running',"
                     " images_uploaded = 0, images_skipped = 0 WHERE batch_id = %s",
                     (batch_id,))
        conn.commit()


def timed_image_phase(settings, batch_id: int) -> tuple[float, dict]:
    from rakuten_mlops.ingest import load_images

    started = time.perf_counter()
    counts = load_images(settings, batch_id, bar=False)
    return time.perf_counter() - started, counts


def run(settings, raw_dir: Path, stale: bool) -> dict:
    from rakuten_mlops.ingest import assign_split, finalize, images, load_text, run_ingest
    from rakuten_mlops.storage import connect

    base._empty_lake(settings)
    base.empty_bucket(base.client_for(settings), BUCKET)
    first = run_ingest(settings, "bench-first", FIRST_SLICE, bar=False)
    with connect(settings, autocommit=True) as conn:
        conn.execute("ANALYZE")  # what autovacuum does within a minute of batch 1
    add_orphan_files(raw_dir)
    text = load_text(settings, "bench-large", "all")
    assign_split(settings, text.batch_id)
    with connect(settings) as conn:
        products = conn.execute("SELECT count(*) FROM products WHERE batch_id = %s",
                                (text.batch_id,)).fetchone()[0]
    result = {"batch_1_products": first["products_loaded"],
              "batch_1_images": first["images_loaded"], "batch_2_products": products,
              "image_folder_files": len(os.listdir(raw_dir / "images" / "image_train"))}
    if stale:
        note(f"fresh image phase of {products} products WITHOUT the statistics refresh")
        refresh = images._refresh_statistics
        images._refresh_statistics = lambda conn: None
        try:
            result["stale_statistics_seconds"], _ = timed_image_phase(settings, text.batch_id)
        finally:
            images._refresh_statistics = refresh
        reset_image_phase(settings, text.batch_id)
    note(f"fresh image phase of {products} products")
    fresh, counts = timed_image_phase(settings, text.batch_id)
    reset_image_phase(settings, text.batch_id)
    note("the same image phase, re-run")
    rerun, again = timed_image_phase(settings, text.batch_id)
    assert counts == again, (counts, again)
    finalize(settings, text.batch_id)
    result.update(fresh_seconds=round(fresh, 3), rerun_seconds=round(rerun, 3),
                  ratio=round(fresh / rerun, 2), counts=counts)
    return result


def main() -> int:
    needed = [base.TRANSLATED / "X_train_translated.csv", base.RAKUTEN / "images_labels.csv",
              base.RAKUTEN / "images" / "image_train"]
    if missing := [str(path) for path in needed if not path.exists()]:
        note(f"skipped: benchmark data not found ({', '.join(missing)}); "
             "it lives in ../shared/data next to the checkout")
        print(json.dumps({"benchmark": "image_phase", "skipped": True, "missing": missing}))
        return 0

    import logging

    from rakuten_mlops.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-image-phase-") as tmp:
            raw_dir = Path(tmp) / "raw_data"
            shape = base.build_raw_dir(raw_dir)
            fill_image_folder(raw_dir, math.ceil(float(FIRST_SLICE) * shape["rows"]))
            result = run(settings.model_copy(update={"raw_data_dir": raw_dir}), raw_dir,
                         stale=os.environ.get("BENCH_STALE") == "1")
    finally:
        base.empty_bucket(base.client_for(settings), BUCKET, remove=True)
        base.drop_database(settings)
    print(json.dumps({
        "benchmark": "image_phase",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        **result,
        "target": f"fresh <= {TARGET_RATIO:g}x re-run (was 26x: 7m26s vs 17 s)",
        "meets_target": result["ratio"] <= TARGET_RATIO,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
