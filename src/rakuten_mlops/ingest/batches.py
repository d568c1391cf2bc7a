"""Phase 3 of a batch: count what it loaded and rejected, apply the image limits, record it.

Counts come from the lake itself (not from memory), so a batch resumed after a crash
reports the same figures as one that never crashed.
"""

from __future__ import annotations

import json
import logging

import psycopg

from rakuten_mlops.ingest.lake import failure_recorded
from rakuten_mlops.ingest.sources import IngestError
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.ingest")

# Image files that exist but are not a usable JPEG (the image reject ratio counts these).
BAD_IMAGE_REASONS = ("empty_image", "not_jpeg", "corrupt_image", "unreadable_image",
                     "decompression_bomb")


def _scalar(conn: psycopg.Connection, query: str, *args) -> int:
    return conn.execute(query, args).fetchone()[0]


def batch_summary(conn: psycopg.Connection, batch_id: int) -> dict:
    batch = conn.execute(
        "SELECT run_id, slice_spec, rows_read, remaining_rows, text_rejects, images_uploaded,"
        " images_skipped, text_seconds, image_seconds, status, error, summary"
        " FROM load_batches WHERE batch_id = %s", (batch_id,),
    ).fetchone()
    if batch is None:
        raise IngestError(f"batch {batch_id} does not exist")
    (run_id, spec, rows_read, remaining, text_rejects, uploaded, skipped, text_s, image_s,
     status, error, recorded) = batch
    already = (recorded or {}).get("already_loaded") or {}
    products = dict(conn.execute(
        "SELECT source_split, count(*) FROM products WHERE batch_id = %s GROUP BY 1", (batch_id,)
    ).fetchall())
    subsets = dict(conn.execute(
        "SELECT s.subset, count(*) FROM dataset_split s JOIN labels l USING (productid)"
        " WHERE l.batch_id = %s GROUP BY 1", (batch_id,),
    ).fetchall())
    by_reason = dict(conn.execute(
        "SELECT reason, count(*) FROM rejects WHERE batch_id = %s GROUP BY 1 ORDER BY 2 DESC",
        (batch_id,),
    ).fetchall())
    by_file = dict(conn.execute(
        "SELECT source_file, count(*) FROM rejects WHERE batch_id = %s GROUP BY 1 ORDER BY 1",
        (batch_id,),
    ).fetchall())
    images = _scalar(conn, "SELECT count(*) FROM images WHERE batch_id = %s", batch_id)
    labels = _scalar(conn, "SELECT count(*) FROM labels WHERE batch_id = %s", batch_id)
    bad_images = sum(by_reason.get(reason, 0) for reason in BAD_IMAGE_REASONS)
    missing = by_reason.get("missing_image", 0)
    products_loaded = sum(products.values())
    return {
        "batch_id": batch_id,
        "run_id": run_id,
        "status": status,
        "slice": spec,
        "rows_read": rows_read,
        "remaining_rows": remaining,
        "products_loaded": products_loaded,
        "products_by_source": products,
        "labels_loaded": labels,
        "split": subsets,
        "images_loaded": images,
        "images_uploaded": uploaded,
        "images_skipped": skipped,
        "missing_images": missing,
        "text_rejects": text_rejects,
        "image_rejects": bad_images,
        "rejects": sum(by_reason.values()),
        "rejects_by_reason": by_reason,
        "rejects_by_file": by_file,
        "text_reject_ratio": round(text_rejects / rows_read, 4) if rows_read else 0.0,
        "image_reject_ratio": (round(bad_images / (images + bad_images), 4)
                               if images + bad_images else 0.0),
        "missing_image_ratio": round(missing / products_loaded, 4) if products_loaded else 0.0,
        "text_seconds": round(text_s or 0.0, 3),
        "image_seconds": round(image_s or 0.0, 3),
        "error": error,
        "already_loaded": already,
        "note": _already_loaded_note(already, rows_read),
    }


def _already_loaded_note(already: dict[str, int], rows_read: int) -> str | None:
    """Why a batch read no record at all, in words (`already_loaded` has the counts)."""
    if not already or rows_read:
        return None
    where = ", ".join(f"{count} in batch {batch}" for batch, count in already.items())
    return (f"{sum(already.values())} records skipped: their indices were already loaded "
            f"({where}); nothing new to load")


def finalize(settings: Settings, batch_id: int) -> dict:
    """Check the image limits, mark the batch succeeded or failed, return its summary.

    Raises IngestError (after recording the failure) when a limit is exceeded.
    """
    with failure_recorded(settings, f"batch {batch_id}: finalize", batch_id=batch_id):
        return _finalize(settings, batch_id)


def _finalize(settings: Settings, batch_id: int) -> dict:
    with connect(settings) as conn, conn.transaction():
        status = _scalar(conn, "SELECT status FROM load_batches WHERE batch_id = %s FOR UPDATE",
                         batch_id)
        summary = batch_summary(conn, batch_id)
        if status == "succeeded":
            return summary
        problems = []
        if summary["image_reject_ratio"] > settings.ingest_max_image_reject_ratio:
            problems.append(
                f"{summary['image_rejects']} image files are not usable JPEGs "
                f"({summary['image_reject_ratio']:.1%}), above INGEST_MAX_IMAGE_REJECT_RATIO="
                f"{settings.ingest_max_image_reject_ratio:g}")
        if summary["missing_image_ratio"] > settings.ingest_max_missing_image_ratio:
            problems.append(
                f"{summary['missing_images']} loaded products have no image file "
                f"({summary['missing_image_ratio']:.1%}), above INGEST_MAX_MISSING_IMAGE_RATIO="
                f"{settings.ingest_max_missing_image_ratio:g}")
        error = f"batch {batch_id}: " + "; ".join(problems) if problems else None
        summary.update(status="failed" if problems else "succeeded", error=error)
        conn.execute(
            "UPDATE load_batches SET status = %s, error = %s, finished_at = now(),"
            " images_loaded = %s, image_rejects = %s, missing_images = %s, rejects = %s,"
            " summary = %s WHERE batch_id = %s",
            (summary["status"], error, summary["images_loaded"], summary["image_rejects"],
             summary["missing_images"], summary["rejects"], json.dumps(summary), batch_id),
        )
    log.info("batch %d %s: %s", batch_id, summary["status"], json.dumps(summary, sort_keys=True))
    if error:
        raise IngestError(error)
    return summary


def lake_summary(settings: Settings) -> dict:
    """What the whole lake holds: counts a person (or `make demo`) can check at a glance."""
    with connect(settings) as conn:
        if conn.execute("SELECT to_regclass('load_batches')").fetchone()[0] is None:
            return {"error": "the lake schema does not exist yet: run `rakuten-mlops migrate`"}
        count = lambda table: _scalar(conn, f"SELECT count(*) FROM {table}")  # noqa: E731
        return {
            "database": settings.postgres_db,
            "bucket": settings.s3_bucket_images,
            "products": dict(conn.execute(
                "SELECT source_split, count(*) FROM products GROUP BY 1 ORDER BY 1").fetchall()),
            "labels": count("labels"),
            "categories": count("categories"),
            "split": dict(conn.execute(
                "SELECT subset, count(*) FROM dataset_split GROUP BY 1 ORDER BY 1").fetchall()),
            "images": count("images"),
            "rejects": dict(conn.execute(
                "SELECT reason, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC").fetchall()),
            "batches": [
                {"batch_id": b, "run_id": r, "status": s, "slice": sl, "products": p,
                 "images": i, "rejects": rj}
                for b, r, s, sl, p, i, rj in conn.execute(
                    "SELECT batch_id, run_id, status, slice_spec, products_loaded,"
                    " images_loaded, rejects FROM load_batches ORDER BY batch_id")
            ],
        }
