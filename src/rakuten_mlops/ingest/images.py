"""Phase 2 of a batch: each loaded product's image, checked and stored once in S3.

For every product of the batch without a catalogue row yet: read its file, check it is
a whole JPEG (magic bytes, Pillow parses its header and size, an end-of-image marker
follows the last scan, so empty, non-JPEG, garbled and truncated files are rejected),
and put it under `image_<split>/<productid>/<imageid>.jpg` with its sha256 in the
object metadata. Workers run in parallel; the main thread commits catalogue rows and
rejects in chunks.

Exactly once: the key is a function of the ids, so an image can only ever be one
object. A resumed image phase (its batch's `images_started_at` is set: an earlier
attempt may have uploaded objects it never catalogued) skips products already
catalogued and, for the others, reads the stored object's sha256 first and skips the
upload when it matches. A first attempt puts directly: nothing of its batch can be in
the bucket yet, and a HEAD per image (or a listing of the whole bucket) would slow
every load for a case that cannot happen.

A file is the file's problem, never the batch's: anything Pillow raises on it, a
decompression bomb, a name no COPY or UTF-8 can take as it is, each becomes a reject
with a readable reason. A store's failure (S3 down) stops the phase, but only after
every upload that completed has its catalogue row; the error is recorded on the batch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from minio import Minio
from minio.error import S3Error
from PIL import Image, UnidentifiedImageError

from rakuten_mlops.failures import scrub
from rakuten_mlops.ingest.catalogue import stall_point, write_rejects
from rakuten_mlops.ingest.lake import LOCK_WAIT, BatchBusy, failure_recorded, lake_connect
from rakuten_mlops.ingest.progress import Progress
from rakuten_mlops.ingest.sources import (
    IMAGE_DIRS,
    IngestError,
    Reject,
    image_key,
    image_name,
    list_images,
    printable,
)
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import copy_rows, ensure_buckets, s3_client

log = logging.getLogger("rakuten_mlops.ingest")

IMAGE_LOCK = 0x52414B57  # pg advisory lock class: one image phase per batch
IMAGE_SHARD_LOCK = 0x52414B53  # ... and one per shard of a batch (hashtext of both ids)
WHOLE_BATCH = (-(2**63), 2**63 - 1)  # the product-id range of an unsharded phase
CONTENT_TYPE = "image/jpeg"
SHA256_META = "sha256"
_MAGIC = {
    b"\x89PNG": "PNG", b"GIF8": "GIF", b"RIFF": "RIFF/WebP", b"%PDF": "PDF",
    b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"<": "text/HTML",
}


class BadImage(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def check_jpeg(data: bytes, max_pixels: int = Image.MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of a whole JPEG; BadImage(reason, detail) otherwise.

    Only the header is parsed (nothing is decoded), so a file declaring a huge size (a
    decompression bomb) costs nothing here: it is refused above `max_pixels`.
    """
    if not data:
        raise BadImage("empty_image", "the file is empty (0 bytes)")
    if data[:3] != b"\xff\xd8\xff":
        kind = next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)
        raise BadImage("not_jpeg", f"no JPEG signature ({kind or 'unknown'} content, "
                                   f"starts with {data[:8].hex()})")
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            image_format, (width, height) = image.format, image.size
    except Image.DecompressionBombError as exc:  # above twice Pillow's own limit
        raise BadImage("decompression_bomb", f"refused by Pillow: {scrub(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("corrupt_image", "unreadable JPEG: Pillow cannot identify it") from exc
    except Exception as exc:  # noqa: BLE001 - a parser fed untrusted bytes: any error is the file's
        raise BadImage("corrupt_image",
                       f"unreadable JPEG: {type(exc).__name__}: {scrub(exc)}") from exc
    if image_format != "JPEG":
        raise BadImage("not_jpeg", f"Pillow reads it as {image_format}")
    if width <= 0 or height <= 0:
        raise BadImage("corrupt_image", f"invalid size {width}x{height}")
    if width * height > max_pixels:
        raise BadImage("decompression_bomb",
                       f"declares {width}x{height} = {width * height:,} pixels, above "
                       f"INGEST_MAX_IMAGE_PIXELS={max_pixels:,}")
    # Entropy-coded data never contains 0xFFD9/0xFFDA (0xFF is stuffed), so the last
    # scan header must be followed by an end-of-image marker in a complete file.
    if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise BadImage("corrupt_image", "truncated: no end-of-image marker after the last scan")
    return width, height


@dataclass(slots=True)
class Job:
    productid: int
    imageid: int
    split: str

    @property
    def name(self) -> str:
        return image_name(self.productid, self.imageid)

    @property
    def key(self) -> str:
        return image_key(self.split, self.productid, self.imageid)

    @property
    def folder(self) -> str:
        return IMAGE_DIRS[self.split]


@dataclass(slots=True)
class Outcome:
    job: Job
    row: tuple | None = None  # catalogue row, when the image is stored
    reject: Reject | None = None
    uploaded: bool = False


def _stored_sha256(client: Minio, bucket: str, key: str) -> str | None:
    try:
        return client.stat_object(bucket, key).metadata.get(f"x-amz-meta-{SHA256_META}")
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return None
        raise


def process(job: Job, root: Path, client: Minio, bucket: str, resume: bool,
            max_pixels: int = Image.MAX_IMAGE_PIXELS) -> Outcome:
    """Check one image file and store it (on a resume, unless the same bytes are stored)."""
    try:
        data = (root / job.folder / job.name).read_bytes()
    except FileNotFoundError:
        return Outcome(job, reject=Reject(job.folder, job.name, "missing_image",
                                          "the file disappeared during the load"))
    except OSError as exc:
        return Outcome(job, reject=Reject(job.folder, job.name, "unreadable_image",
                                          scrub(exc)))
    try:
        width, height = check_jpeg(data, max_pixels)
    except BadImage as bad:
        return Outcome(job, reject=Reject(job.folder, job.name, bad.reason, bad.detail))
    sha256 = hashlib.sha256(data).hexdigest()
    row = (job.key, bucket, job.productid, job.imageid, job.split, CONTENT_TYPE, len(data),
           sha256, width, height)
    if resume and _stored_sha256(client, bucket, job.key) == sha256:
        return Outcome(job, row=row)
    client.put_object(bucket, job.key, io.BytesIO(data), len(data), content_type=CONTENT_TYPE,
                      metadata={SHA256_META: sha256})
    return Outcome(job, row=row, uploaded=True)


class Workers:
    """fn(item) for every item on `count` threads; iterate to get results as they finish.

    Threads pull from one queue (no future per item). The first exception of `fn` stops
    the threads after their current item, but the iteration still yields every result
    that completed (each may be an object already stored, which must be catalogued);
    then the exception is in `error`, for the caller to raise once it has recorded them.
    Leaving the `with` block early also stops the threads after their current item.
    """

    _STOP = object()
    _DONE = object()

    def __init__(self, fn: Callable, items: list, count: int):
        self._fn = fn
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._cancel = threading.Event()
        self.error: BaseException | None = None
        for item in items:
            self._jobs.put(item)
        self._threads = [threading.Thread(target=self._work, name=f"image-{i}", daemon=True)
                         for i in range(min(count, max(len(items), 1)))]
        for _ in self._threads:
            self._jobs.put(self._STOP)

    def _work(self) -> None:
        try:
            while not self._cancel.is_set() and (item := self._jobs.get()) is not self._STOP:
                try:
                    self._results.put((True, self._fn(item)))
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    self._cancel.set()
                    self._results.put((False, exc))
        finally:
            self._results.put((True, self._DONE))

    def __enter__(self) -> Workers:
        for thread in self._threads:
            thread.start()
        return self

    def __iter__(self) -> Iterator:
        running = len(self._threads)
        while running:
            ok, value = self._results.get()
            if value is self._DONE:
                running -= 1
            elif ok:
                yield value
            elif self.error is None:
                self.error = value

    def __exit__(self, *exc) -> None:
        self._cancel.set()
        for thread in self._threads:
            thread.join()


def _commit(conn: psycopg.Connection, batch_id: int, outcomes: list[Outcome]) -> None:
    rows = [o.row for o in outcomes if o.row is not None]
    rejects = [o.reject for o in outcomes if o.reject is not None]
    uploaded = sum(o.uploaded for o in outcomes)
    with conn.transaction():
        if rows:
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS stage_images (s3_key text, bucket text,"
                " productid bigint, imageid bigint, source_split text, content_type text,"
                " size_bytes integer, sha256 text, width integer, height integer)"
                " ON COMMIT DELETE ROWS"
            )
            with conn.cursor() as cur:
                copy_rows(cur, "COPY stage_images FROM STDIN", rows)
                cur.execute(
                    "INSERT INTO images (s3_key, bucket, productid, imageid, source_split,"
                    " content_type, size_bytes, sha256, width, height, batch_id)"
                    " SELECT s3_key, bucket, productid, imageid, source_split, content_type,"
                    " size_bytes, sha256, width, height, %s FROM stage_images"
                    " ON CONFLICT DO NOTHING",
                    (batch_id,),
                )
        write_rejects(conn, batch_id, rejects)
        conn.execute(
            "UPDATE load_batches SET images_uploaded = images_uploaded + %s,"
            " images_skipped = images_skipped + %s WHERE batch_id = %s",
            (uploaded, len(rows) - uploaded, batch_id),
        )


# A product's image file name in SQL, as sources.image_name builds it in Python (the
# tests compare the two through the missing_image rejects' locators).
_NAME_SQL = "'image_' || p.imageid || '_product_' || p.productid || '.jpg'"
_TODO_SQL = f"""
FROM products p
WHERE p.batch_id = %(batch)s AND p.productid BETWEEN %(first)s AND %(last)s
  AND NOT EXISTS (SELECT 1 FROM images i WHERE i.productid = p.productid)
  AND NOT EXISTS (SELECT 1 FROM rejects r WHERE r.batch_id = p.batch_id
                  AND r.source_file = 'images/image_' || p.source_split
                  AND r.locator = {_NAME_SQL})
"""
_PRESENT = "EXISTS (SELECT 1 FROM image_files f WHERE f.source_split = p.source_split" \
           f" AND f.name = {_NAME_SQL})"


def _stage_file_names(conn: psycopg.Connection, files: dict[str, set[str]]) -> None:
    """The image folders' file names, for the set-based queries below."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS image_files (source_split text, name text)")
    conn.execute("TRUNCATE image_files")
    # write_row escapes tabs, newlines and backslashes; printable: a name that is not
    # UTF-8 is never a product's image name, but must not fail the COPY either.
    with conn.cursor() as cur:
        copy_rows(cur, "COPY image_files FROM STDIN",
                  ((split, printable(name)) for split, names in files.items()
                   for name in names))
    conn.execute("ANALYZE image_files")


def _record_missing(conn: psycopg.Connection, batch_id: int, product_range) -> int:
    """One `missing_image` reject per product of the batch without an image file.

    Set-based, on the server, while the workers upload: no per-product Python work.
    A plain INSERT: `_TODO_SQL` already leaves out every product with a reject of this
    batch for its file (whatever the reason, so a resumed phase inserts none twice),
    and the batch's image lock keeps any other writer of those rows out, so nothing
    can conflict. ON CONFLICT DO NOTHING would make each of the (57k, in the benchmark)
    rows a speculative insertion, about 1.5x the server's work, competing with the
    uploads for the CPU; an unexpected conflict now fails the phase instead.
    """
    return conn.execute(
        "INSERT INTO rejects (batch_id, source_file, locator, reason)"
        f" SELECT p.batch_id, 'images/image_' || p.source_split, {_NAME_SQL}, 'missing_image'"
        f" {_TODO_SQL} AND NOT {_PRESENT}",
        _params(batch_id, product_range),
    ).rowcount


def _params(batch_id: int, product_range) -> dict:
    first, last = product_range or WHOLE_BATCH
    return {"batch": batch_id, "first": first, "last": last}


def load_images(settings: Settings, batch_id: int, bar: bool | None = None,
                product_range: list[int] | None = None) -> dict[str, int]:
    """Store and catalogue the images of batch `batch_id`'s products (only those whose
    ids are in `product_range`, inclusive, for one shard); counts of this call.

    A failure (S3 down, say) is recorded on the batch and raised as an IngestError, after
    every object already stored has been catalogued.
    """
    with failure_recorded(settings, f"batch {batch_id}: image phase", batch_id=batch_id):
        return _load_images(settings, batch_id, bar, product_range)


def _lock_key(batch_id: int, product_range) -> tuple[str, tuple]:
    if product_range is None:
        return "%s, %s", (IMAGE_LOCK, batch_id)
    return "%s, hashtext(%s)", (IMAGE_SHARD_LOCK, f"{batch_id}:{product_range[0]}")


def _lock_batch(conn: psycopg.Connection, batch_id: int, product_range=None) -> None:
    """The batch's (or shard's) image lock, waiting LOCK_WAIT for a run that was just
    killed to lose its session (see ingest/lake.py); BatchBusy if a live run holds it."""
    conn.execute(f"SET lock_timeout = '{LOCK_WAIT}'")
    key, args = _lock_key(batch_id, product_range)
    try:
        conn.execute(f"SELECT pg_advisory_lock({key})", args)
    except psycopg.errors.LockNotAvailable as exc:
        raise BatchBusy(f"batch {batch_id}: its images are being loaded by another process "
                        f"(waited {LOCK_WAIT})") from exc
    finally:
        conn.execute("RESET lock_timeout")


def _refresh_statistics(conn: psycopg.Connection) -> None:
    """The planner's statistics of the tables the text phase just filled.

    Autovacuum analyses a table only some time after it changed: right after a large
    text phase, the statistics still describe the lake before it, and the set-based
    statements below are planned as if the batch had one product (nested loops, fine
    over an index, but one scan per product of any table whose statistics say it is
    empty): the likely cause of a 41.5k-product image phase once taking 7m26s.
    bench/bench_image_phase.py compares a fresh phase with its re-run.
    """
    conn.execute("ANALYZE products, rejects, images")


def _resumes_shard(conn: psycopg.Connection, batch_id: int, product_range,
                   batch_started: bool) -> bool:
    """Whether objects of this range may be stored already: an earlier attempt of this
    shard, or of the whole batch unsharded, started (its shard row is written first)."""
    if product_range is None:
        return batch_started
    other_shards = conn.execute(
        "SELECT count(*) FROM image_shards WHERE batch_id = %s", (batch_id,)).fetchone()[0]
    inserted = conn.execute(
        "INSERT INTO image_shards (batch_id, first_id, last_id) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING", (batch_id, *product_range)).rowcount
    return not inserted or (batch_started and not other_shards)


def _load_images(settings: Settings, batch_id: int, bar: bool | None,
                 product_range=None) -> dict[str, int]:
    started = time.perf_counter()
    root = Path(settings.path(settings.raw_data_dir))
    bucket = settings.s3_bucket_images
    counts = {"todo": 0, "uploaded": 0, "skipped": 0, "rejected": 0, "missing": 0}
    with lake_connect(settings, autocommit=True) as conn:
        _lock_batch(conn, batch_id, product_range)
        row = conn.execute(
            "SELECT status, text_loaded_at, images_started_at FROM load_batches"
            " WHERE batch_id = %s", (batch_id,),
        ).fetchone()
        if row is None or row[1] is None:
            raise IngestError(f"batch {batch_id}: no such batch with its text loaded")
        if row[0] == "succeeded":
            log.info("batch %d already succeeded; its images are loaded", batch_id)
            return counts
        resume = _resumes_shard(conn, batch_id, product_range, row[2] is not None)
        if resume:
            log.info("batch %d: resuming its images (stored objects are checked by sha256)",
                     batch_id)
        # A batch whose earlier attempt failed (its error recorded) is running again.
        conn.execute("UPDATE load_batches SET images_started_at = coalesce(images_started_at,"
                     " now()), status = 'running', error = NULL WHERE batch_id = %s",
                     (batch_id,))
        _refresh_statistics(conn)
        # Products of the batch with neither a catalogued image nor an image reject yet,
        # whose file is there; the others get a missing_image reject (below).
        files = {split: list_images(root / folder) for split, folder in IMAGE_DIRS.items()}
        _stage_file_names(conn, files)
        present = [Job(*row) for row in conn.execute(
            f"SELECT p.productid, p.imageid, p.source_split {_TODO_SQL} AND {_PRESENT}",
            _params(batch_id, product_range),
        )]
        log.info("batch %d: %d products have an image file to load", batch_id, len(present))
        counts["todo"] = len(present)
        client = s3_client(settings)
        if present:
            ensure_buckets(client, [bucket])
        max_pixels = settings.ingest_max_image_pixels

        def work(job: Job) -> Outcome:
            return process(job, root, client, bucket, resume, max_pixels)

        # check_jpeg refuses images above max_pixels itself: Pillow's warning for the
        # same (between its limit and twice it) would only be noise in the log.
        with warnings.catch_warnings(), Workers(work, present, settings.ingest_image_workers) \
                as results, Progress(f"batch {batch_id} images", len(present), "images",
                                     bar=bar) as progress:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            stall_point(conn, "images_before_missing")
            # While the workers upload:
            counts["missing"] = _record_missing(conn, batch_id, product_range)
            if counts["missing"]:
                log.info("batch %d: %d products have no image file (missing_image rejects)",
                         batch_id, counts["missing"])
            chunk: list[Outcome] = []
            last_commit = time.monotonic()
            for outcome in results:
                chunk.append(outcome)
                counts["uploaded"] += outcome.uploaded
                counts["skipped"] += outcome.row is not None and not outcome.uploaded
                counts["rejected"] += outcome.reject is not None
                progress.update()
                if (len(chunk) >= settings.ingest_image_chunk
                        or time.monotonic() - last_commit > 5):
                    _commit(conn, batch_id, chunk)
                    chunk, last_commit = [], time.monotonic()
            if chunk:  # also when a worker failed: what was stored gets its catalogue row
                _commit(conn, batch_id, chunk)
            if results.error is not None:
                raise results.error
        elapsed = time.perf_counter() - started
        conn.execute(
            "UPDATE load_batches SET image_seconds = coalesce(image_seconds, 0) + %s"
            " WHERE batch_id = %s", (elapsed, batch_id),
        )
        conn.execute("DROP TABLE IF EXISTS image_files")
        if product_range is not None:
            conn.execute("UPDATE image_shards SET finished_at = now()"
                         " WHERE batch_id = %s AND first_id = %s", (batch_id, product_range[0]))
        key, args = _lock_key(batch_id, product_range)
        conn.execute(f"SELECT pg_advisory_unlock({key})", args)
    log.info("batch %d: images uploaded %d, already stored %d, rejected %d, missing %d "
             "in %.2fs", batch_id, counts["uploaded"], counts["skipped"], counts["rejected"],
             counts["missing"], elapsed)
    return counts
