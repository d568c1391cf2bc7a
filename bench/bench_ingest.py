#!/usr/bin/env python3
"""Benchmark of the prepare_data load against the naive way and the ceiling.

Input, built in a temporary folder in the challenge layout:
* text: ../shared/data/translated (57,375 products with labels; no images exist for
  them), plus one row per real image of ../shared/data/rakuten/images (1,635 products,
  ids and labels from images_labels.csv; their designation from X_train_sample.csv when
  it has the product, else a placeholder; these rows are part of the text figures);
* images: the 1,635 real JPEGs of ../shared/data/rakuten/images/image_train.

Measured, each on a fresh database and bucket (the project's runs and the ceiling's
start with the lake's schema already created, untimed: a one-off of a new lake, not
part of loading rows):
* project: `rakuten_mlops.ingest.run_ingest` of everything as one batch; text = phase 1
  (read, validate, products and labels streamed by COPY, rejects, batch row; the split
  is timed apart), images = phase 2 (missing-image rejects, read, JPEG check, sha256,
  parallel put, catalogue rows); also phase 1 alone with INGEST_TEXT_WRITE=staging
  (COPY to a temporary table + INSERT ... ON CONFLICT DO NOTHING);
* naive: DataFrame.to_sql(append) of exactly the rows the project writes (products and
  labels) into the lake's own tables; a sequential put_object loop over the images;
* ceiling: a bare COPY of those same rows into the lake's own tables (same keys), no
  staging, validation or upsert; a bare parallel put loop (same number of threads) of
  the same objects under the same keys as the project's (`object_key`);
* floor (for reference): the raw X and Y files streamed to `COPY ... (FORMAT csv)` into
  tables without any key.

The naive and ceiling timings start from rows already in memory; the project's text
time starts from the raw files (reading, validating and rejecting included).
Targets: project text time within 1.5x of the ceiling; project images/s at least 0.8x
of the bare parallel loop. Writes to database `rakuten_bench` and buckets `bench-*`,
all removed at the end. Prints one JSON object. Needs the local stack (`make up`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAKUTEN_SHARED_DATA", ROOT.parent / "shared" / "data"))
TRANSLATED = SHARED / "translated"
RAKUTEN = SHARED / "rakuten"
BENCH_DB = "rakuten_bench"
BUCKETS = {"project": "bench-images", "naive": "bench-naive", "ceiling": "bench-ceiling"}
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
IMAGE_ROW_INDEX = 1_000_000  # challenge indices of the image-only rows, after the translated ones

# Before the package reads settings: the benchmark's own database and bucket.
os.environ.update({"POSTGRES_DB": BENCH_DB, "S3_BUCKET_IMAGES": BUCKETS["project"]})
sys.path.insert(0, str(ROOT / "src"))


def note(message: str) -> None:
    print(f"[bench_ingest] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- set-up


def build_raw_dir(target: Path) -> dict:
    """The benchmark input in the challenge layout; returns what it holds."""
    from rakuten_mlops.ingest import sources

    x_text = (TRANSLATED / "X_train_translated.csv").read_text(encoding="utf-8")
    y_text = (TRANSLATED / "Y_train_translated.csv").read_text(encoding="utf-8")
    translated_rows = sum(1 for _ in csv.reader(io.StringIO(x_text, newline=""))) - 1
    sample = {}
    with open(RAKUTEN / "X_train_sample.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            sample[row["productid"]] = row["designation"]
    with open(RAKUTEN / "images_labels.csv", newline="", encoding="utf-8") as handle:
        image_rows = list(csv.DictReader(handle))
    x_extra, y_extra = io.StringIO(), io.StringIO()
    x_writer = csv.writer(x_extra, lineterminator="\n")
    y_writer = csv.writer(y_extra, lineterminator="\n")
    for i, row in enumerate(image_rows):
        index = IMAGE_ROW_INDEX + i
        designation = (sample.get(row["productid"])
                       or f"image-only product {row['productid']} (benchmark placeholder)")
        x_writer.writerow([index, designation, "", row["productid"], row["imageid"]])
        y_writer.writerow([index, row["prdtypecode"]])
    target.mkdir(parents=True)
    x_text = x_text.rstrip("\n") + "\n" + x_extra.getvalue()
    y_text = y_text.rstrip("\n") + "\n" + y_extra.getvalue()
    (target / sources.X_TRAIN).write_text(x_text, encoding="utf-8")
    (target / sources.Y_TRAIN).write_text(y_text, encoding="utf-8")
    (target / sources.X_TEST).write_text(",designation,description,productid,imageid\n",
                                         encoding="utf-8")
    (target / sources.CATEGORIES).write_bytes((RAKUTEN / "category_names.csv").read_bytes())
    (target / "images").mkdir()
    (target / "images" / "image_train").symlink_to(RAKUTEN / "images" / "image_train")
    return {"rows": translated_rows + len(image_rows), "translated_rows": translated_rows,
            "image_rows": len(image_rows)}


def admin_connection(settings):
    """The local cluster's superuser over its socket (creating databases needs it)."""
    import psycopg

    from rakuten_mlops.localstack.postgres import postgres_superuser_kwargs

    return psycopg.connect(**postgres_superuser_kwargs(settings), autocommit=True)


def recreate_database(settings) -> None:
    with admin_connection(settings) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}" OWNER "{settings.postgres_user}"')


def drop_database(settings) -> None:
    with admin_connection(settings) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')


def empty_bucket(client, bucket: str, remove: bool = False) -> None:
    """Delete the bucket with everything in it, then (unless `remove`) make it afresh."""
    from minio.deleteobjects import DeleteObject

    if client.bucket_exists(bucket):
        objects = (DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True))
        errors = list(client.remove_objects(bucket, objects))
        if errors:
            raise RuntimeError(f"could not empty {bucket}: {errors[:3]}")
        client.remove_bucket(bucket)
    if not remove:
        client.make_bucket(bucket)


# --------------------------------------------------------------------------- the three ways


def _empty_lake(settings) -> None:
    """A fresh database with the lake's schema and nothing in it (untimed set-up).

    The project's runs start here, as the ceiling's do from `_fresh_lake`: creating the
    schema is a one-off of a new lake (0.15-0.3 s here), not part of loading rows.
    """
    from rakuten_mlops import schema
    from rakuten_mlops.storage import connect

    recreate_database(settings)
    with connect(settings) as conn:
        schema.migrate(conn)
        conn.commit()


def run_project(settings, raw_dir: Path) -> dict:
    from rakuten_mlops.ingest import run_ingest

    _empty_lake(settings)
    empty_bucket(client_for(settings), BUCKETS["project"])
    started = time.perf_counter()
    summary = run_ingest(settings.model_copy(update={"raw_data_dir": raw_dir}), "bench", "all",
                         bar=False)
    total = time.perf_counter() - started
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        split_seconds = conn.execute("SELECT split_seconds FROM load_batches").fetchone()[0]
    return {"text_seconds": summary["text_seconds"], "split_seconds": split_seconds,
            "image_seconds": summary["image_seconds"], "total_seconds": total,
            "products": summary["products_loaded"], "labels": summary["labels_loaded"],
            "images": summary["images_loaded"], "rejects": summary["rejects_by_reason"]}


def _fresh_lake(settings) -> None:
    """An empty lake schema with the categories and batch 1's row (untimed set-up)."""
    from rakuten_mlops import schema
    from rakuten_mlops.ingest.sources import read_categories
    from rakuten_mlops.storage import connect

    recreate_database(settings)
    categories, _ = read_categories(RAKUTEN / "category_names.csv")
    with connect(settings) as conn:
        schema.migrate(conn)
        conn.execute("INSERT INTO load_batches (run_id, source_dir, slice_spec, status)"
                     " VALUES ('baseline', '', 'all', 'running')")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO categories VALUES (%s, %s)", sorted(categories.items()))
        conn.commit()


PRODUCT_COLUMNS = ["productid", "imageid", "source_split", "source_row", "source_line",
                   "designation", "description", "batch_id"]
LABEL_COLUMNS = ["productid", "prdtypecode", "batch_id"]


def run_project_staging_text(settings, raw_dir: Path) -> float:
    """Phase 1 only, in the staging + upsert write mode."""
    from rakuten_mlops.ingest import load_text

    _empty_lake(settings)
    staged = settings.model_copy(update={"raw_data_dir": raw_dir, "ingest_text_write": "staging"})
    started = time.perf_counter()
    load_text(staged, "bench-staging", "all")
    return time.perf_counter() - started


def run_naive_text(settings, products: list[tuple], labels: list[tuple]) -> float:
    """DataFrame.to_sql(append) of the same rows into the lake's own tables."""
    import pandas as pd
    from sqlalchemy import create_engine

    _fresh_lake(settings)
    product_frame = pd.DataFrame(products, columns=PRODUCT_COLUMNS)
    label_frame = pd.DataFrame(labels, columns=LABEL_COLUMNS)
    engine = create_engine(settings.postgres_dsn(driver="postgresql+psycopg2"))
    try:
        started = time.perf_counter()
        with engine.begin() as conn:
            product_frame.to_sql("products", conn, if_exists="append", index=False)
            label_frame.to_sql("labels", conn, if_exists="append", index=False)
        return time.perf_counter() - started
    finally:
        engine.dispose()


def lake_rows(raw_dir: Path) -> tuple[list[tuple], list[tuple]]:
    """Exactly the products and labels rows the project's load writes (batch 1)."""
    from rakuten_mlops.ingest.plan import LakeState, make_plan
    from rakuten_mlops.ingest.sources import read_source

    plan = make_plan(read_source(raw_dir), LakeState(), None)
    products = [(p.productid, p.imageid, p.split, p.index, p.line, p.designation,
                 p.description, 1) for p in plan.products]
    labels = [(p.productid, p.prdtypecode, 1) for p in plan.products if p.prdtypecode is not None]
    return products, labels


def run_ceiling_text(settings, products: list[tuple], labels: list[tuple]) -> float:
    """A bare COPY of the same rows into the lake's own tables (same keys), nothing else."""
    from rakuten_mlops.storage import connect

    _fresh_lake(settings)
    with connect(settings) as conn:
        started = time.perf_counter()
        with conn.cursor() as cur:
            with cur.copy(f"COPY products ({', '.join(PRODUCT_COLUMNS)}) FROM STDIN") as copy:
                for row in products:
                    copy.write_row(row)
            with cur.copy(f"COPY labels ({', '.join(LABEL_COLUMNS)}) FROM STDIN") as copy:
                for row in labels:
                    copy.write_row(row)
        conn.commit()
        return time.perf_counter() - started


def run_floor_text(settings, raw_dir: Path) -> float:
    """The raw files streamed to a bare COPY into tables without any key: the floor."""
    from rakuten_mlops.ingest import sources
    from rakuten_mlops.storage import connect

    recreate_database(settings)
    with connect(settings) as conn:
        conn.execute("CREATE TABLE bare_products (idx bigint, designation text,"
                     " description text, productid bigint, imageid bigint)")
        conn.execute("CREATE TABLE bare_labels (idx bigint, prdtypecode integer)")
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            for table, name in (("bare_products", sources.X_TRAIN),
                                ("bare_labels", sources.Y_TRAIN)):
                with cur.copy(f"COPY {table} FROM STDIN (FORMAT csv, HEADER true)") as copy, \
                        open(raw_dir / name, "rb") as handle:
                    while block := handle.read(1 << 20):
                        copy.write(block)
        conn.commit()
        return time.perf_counter() - started


def client_for(settings):
    from rakuten_mlops.storage import s3_client

    return s3_client(settings)


def image_files() -> list[Path]:
    return sorted((RAKUTEN / "images" / "image_train").glob("*.jpg"))


def object_key(path: Path) -> str:
    """The key the project stores this image under (image_train/<productid>/<imageid>.jpg):
    a filer-backed S3 server (SeaweedFS) does more work for a key in a new folder, so the
    naive and ceiling loops put the same objects under the same keys as the project."""
    from rakuten_mlops.ingest.sources import IMAGE_NAME, image_key

    match = IMAGE_NAME.fullmatch(path.name)
    return image_key("train", int(match[2]), int(match[1]))


def put_file(client, bucket: str, path: Path) -> None:
    data = path.read_bytes()
    client.put_object(bucket, object_key(path), io.BytesIO(data), len(data),
                      content_type="image/jpeg")


def run_naive_images(settings, files: list[Path]) -> float:
    client = client_for(settings)
    empty_bucket(client, BUCKETS["naive"])
    started = time.perf_counter()
    for path in files:
        put_file(client, BUCKETS["naive"], path)
    return time.perf_counter() - started


def run_ceiling_images(settings, files: list[Path]) -> float:
    client = client_for(settings)
    empty_bucket(client, BUCKETS["ceiling"])
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=settings.ingest_image_workers) as pool:
        list(pool.map(lambda path: put_file(client, BUCKETS["ceiling"], path), files))
    return time.perf_counter() - started


# --------------------------------------------------------------------------- main


def main() -> int:
    needed = [TRANSLATED / "X_train_translated.csv", TRANSLATED / "Y_train_translated.csv",
              RAKUTEN / "images" / "image_train", RAKUTEN / "images_labels.csv"]
    if missing := [str(path) for path in needed if not path.exists()]:
        note(f"skipped: benchmark data not found ({', '.join(missing)}); "
             "it lives in ../shared/data next to the checkout")
        print(json.dumps({"benchmark": "ingest", "skipped": True, "missing": missing}))
        return 0

    import logging

    from rakuten_mlops.settings import get_settings

    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    files = image_files()
    for path in files:  # same page cache for every variant
        path.read_bytes()
    runs: dict[str, list] = {name: [] for name in (
        "project", "ceiling_text", "floor_text", "ceiling_images", "naive_text", "naive_images",
        "staging_text")}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        raw_dir = Path(tmp) / "raw_data"
        shape = build_raw_dir(raw_dir)
        products, labels = lake_rows(raw_dir)
        note(f"input: {shape['rows']} rows ({shape['translated_rows']} translated + "
             f"{shape['image_rows']} with real images), {len(files)} images; "
             f"{REPEATS} interleaved repeats, medians reported")
        try:
            for attempt in range(REPEATS):
                # Each project phase next to its ceiling (text just before the project's
                # run, which starts with its text; images just after, as it ends with
                # them): on a shared machine the load drifts within seconds.
                runs["floor_text"].append(run_floor_text(settings, raw_dir))
                runs["staging_text"].append(run_project_staging_text(settings, raw_dir))
                runs["ceiling_text"].append(run_ceiling_text(settings, products, labels))
                runs["project"].append(run_project(settings, raw_dir))
                runs["ceiling_images"].append(run_ceiling_images(settings, files))
                last = runs["project"][-1]
                note(f"repeat {attempt + 1}: text: ceiling {runs['ceiling_text'][-1]:.2f}s, "
                     f"project {last['text_seconds']:.2f}s; images: ceiling "
                     f"{runs['ceiling_images'][-1]:.2f}s, project {last['image_seconds']:.2f}s")
            note("naive: DataFrame.to_sql and a sequential put_object loop (once; slow)")
            runs["naive_text"].append(run_naive_text(settings, products, labels))
            runs["naive_images"].append(run_naive_images(settings, files))
        finally:
            client = client_for(settings)
            for bucket in BUCKETS.values():
                empty_bucket(client, bucket, remove=True)
            drop_database(settings)

    def med(values) -> float:
        return statistics.median(values)

    rows, images = shape["rows"], len(files)
    project = runs["project"]
    text_s = med(r["text_seconds"] for r in project)
    image_s = med(r["image_seconds"] for r in project)
    ceiling_text, floor_text = med(runs["ceiling_text"]), med(runs["floor_text"])
    naive_text, naive_images = med(runs["naive_text"]), med(runs["naive_images"])
    ceiling_images = med(runs["ceiling_images"])
    text = {
        "rows": rows,
        "project_rows_per_s": round(rows / text_s),
        "naive_to_sql_rows_per_s": round(rows / naive_text),
        "ceiling_copy_rows_per_s": round(rows / ceiling_text),
        "floor_raw_copy_rows_per_s": round(rows / floor_text),
        "project_seconds": round(text_s, 3),
        "naive_seconds": round(naive_text, 3),
        "ceiling_seconds": round(ceiling_text, 3),
        "floor_seconds": round(floor_text, 3),
        "project_time_vs_ceiling": round(text_s / ceiling_text, 2),
        "project_time_vs_floor": round(text_s / floor_text, 2),
        "project_speedup_vs_naive": round(naive_text / text_s, 1),
        "ceiling_is": "bare COPY of the same products+labels rows into the lake's tables "
                      "(same keys and foreign keys), from rows already in memory",
        "floor_is": "the raw CSV files streamed to COPY (FORMAT csv) into tables without keys",
        "target": "project time <= 1.5x ceiling",
        "meets_target": text_s / ceiling_text <= 1.5,
        "split_seconds_not_in_text": round(med(r["split_seconds"] for r in project), 3),
        "staging_mode_seconds": round(med(runs["staging_text"]), 3),
        "staging_mode_time_vs_ceiling": round(med(runs["staging_text"]) / ceiling_text, 2),
    }
    image = {
        "images": images,
        "workers": settings.ingest_image_workers,
        "project_images_per_s": round(images / image_s),
        "naive_sequential_images_per_s": round(images / naive_images),
        "ceiling_parallel_images_per_s": round(images / ceiling_images),
        "project_seconds": round(image_s, 3),
        "naive_seconds": round(naive_images, 3),
        "ceiling_seconds": round(ceiling_images, 3),
        "project_rate_vs_ceiling": round(ceiling_images / image_s, 2),
        "project_speedup_vs_naive": round(naive_images / image_s, 1),
        "project_includes": "the whole image phase: missing-image rejects for the "
                            f"{shape['translated_rows']} text-only rows, "
                            "JPEG check, sha256, put, catalogue rows",
        "target": "project images/s >= 0.8x ceiling",
        "meets_target": ceiling_images / image_s >= 0.8,
    }
    print(json.dumps({
        "benchmark": "ingest",
        "repeats": REPEATS,
        "statistic": "median",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "text": text,
        "images": image,
        "project_loaded": {k: project[-1][k] for k in ("products", "labels", "images", "rejects")},
        "runs_seconds": {
            "project_text": [round(r["text_seconds"], 3) for r in project],
            "staging_text": [round(v, 3) for v in runs["staging_text"]],
            "ceiling_text": [round(v, 3) for v in runs["ceiling_text"]],
            "floor_text": [round(v, 3) for v in runs["floor_text"]],
            "project_images": [round(r["image_seconds"], 3) for r in project],
            "ceiling_images": [round(v, 3) for v in runs["ceiling_images"]],
        },
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
