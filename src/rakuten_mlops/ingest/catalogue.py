"""Phase 1 of a batch: products, labels and every reject, in one transaction.

Under a lake-wide advisory lock (so two runs never take the same slice) the batch row,
the categories, the slice's products and labels and all rejects commit together with
`text_loaded_at`. A run killed before that commit leaves nothing behind; a run of the
same run_id after it changes nothing.

Products are bulk loaded with COPY, never inserted row by row, and streamed: the
planner yields the slice's products while it reads, on a thread of its own, so reading
and validating in Python overlaps PostgreSQL's work, foreign-key checks included (see
`_copy_products` and INGEST_TEXT_WRITE for the two targets). All of it is one
transaction; a savepoint lets a slice with too many rejects record them, and the
failure, without loading any of its rows.

Phase 1b, `assign_split`, gives the new labelled products their subset.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import psycopg

from rakuten_mlops.ingest import split
from rakuten_mlops.ingest.lake import failure_recorded, lake_connect
from rakuten_mlops.ingest.plan import LakeState, Planner
from rakuten_mlops.ingest.sources import (
    X_FILES,
    IngestError,
    Reject,
    Source,
    printable,
    read_source,
)
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import copy_rows

log = logging.getLogger("rakuten_mlops.ingest")

INGEST_LOCK = 0x52414B56  # pg advisory lock: one text phase or split at a time, lake-wide
CRASH_POINT_ENV = "RAKUTEN_TEST_CRASH_POINT"  # tests only: die at a named point
STALL_POINT_ENV = "RAKUTEN_TEST_STALL_POINT"  # tests only: a long statement at a named point


def crash_point(name: str) -> None:
    """Tests only: end the process abruptly (no cleanup, like a kill) at a named point."""
    if os.environ.get(CRASH_POINT_ENV) == name:
        log.warning("%s=%s: exiting abruptly for a crash test", CRASH_POINT_ENV, name)
        os._exit(75)


def stall_point(conn: psycopg.Connection, name: str) -> None:
    """Tests only: keep the session busy in one long statement at a named point, as a
    slow set-based query would (a killed client's backend then holds its locks until it
    notices the client is gone: see ingest/lake.py)."""
    if os.environ.get(STALL_POINT_ENV) == name:
        log.warning("%s=%s: stalling in a long statement for a test", STALL_POINT_ENV, name)
        conn.execute("SELECT pg_sleep(3600)")


def normalize_slice(spec: str) -> str:
    """'all', or a fraction in (0, 1] written canonically ('20%' and '0.20' give '0.2')."""
    text = str(spec).strip().lower()
    if text in ("all", "1", "1.0", "100%"):
        return "all"
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise IngestError(
            f"slice {spec!r}: expected 'all' or a fraction in (0, 1], e.g. 0.2 or 20%"
        )
    return "all" if value == 1 else format(value, "g")


def slice_size(spec: str, total_records: int) -> int | None:
    """How many records a batch takes: ceil(fraction x all source records); None = all."""
    if spec == "all":
        return None
    return max(1, math.ceil(Fraction(spec) * total_records))


@contextmanager
def gc_paused() -> Iterator[None]:
    """Bulk parsing allocates ~10 objects per record and no cycles: skip the cyclic GC's
    repeated scans of a growing heap while it runs.

    Hold it over everything that keeps those objects alive, and release them before it
    ends (reference counting frees them, and the collector's count of young objects goes
    down with them): the first collection after it ends would otherwise traverse every
    record still alive, about half a second for the 59k-row benchmark input.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_ahead(chunks: Iterable, depth: int = 2) -> Iterator:
    """The items of `chunks`, each produced on a background thread up to `depth` ahead.

    While the caller waits on PostgreSQL (the GIL is free then), the next items are
    being computed. An exception of the producer is raised in the caller; closing the
    generator (a caller that stops early) stops the producer at its next item.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: tuple) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not hand_over((True, chunk)):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            hand_over((False, exc))
            return
        hand_over((False, None))

    thread = threading.Thread(target=produce, name="ingest-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = ready.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        stop.set()
        thread.join()


@dataclass
class TextResult:
    batch_id: int
    already_loaded: bool


def _read_state(conn: psycopg.Connection) -> LakeState:
    state = LakeState()
    for productid, source_split, source_row, imageid, batch_id in conn.execute(
        "SELECT productid, source_split, source_row, imageid, batch_id FROM products"
    ):
        state.loaded_rows[(source_split, source_row)] = (productid, batch_id)
        state.loaded_products[productid] = (source_split, source_row, imageid)
    x_files = set(X_FILES.values())
    for source_file, locator, source_row, reason in conn.execute(
        "SELECT r.source_file, r.locator, r.source_row, r.reason FROM rejects r"
        " JOIN load_batches b USING (batch_id) WHERE b.text_loaded_at IS NOT NULL"
    ):
        state.file_rejects.add((source_file, locator, reason))
        if source_file in x_files:
            if source_row is not None:
                state.rejected_rows.add((source_file, source_row))
            else:
                state.rejected_lines.add((source_file, locator))
    return state


def write_rejects(conn: psycopg.Connection, batch_id: int, rejects: list[Reject]) -> int:
    """Insert rejects (duplicates of existing ones are ignored); return how many are new."""
    if not rejects:
        return 0
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_rejects (source_file text, locator text,"
        " source_row bigint, reason text, detail text) ON COMMIT DELETE ROWS"
    )
    with conn.cursor() as cur:
        copy_rows(
            cur,
            "COPY stage_rejects (source_file, locator, source_row, reason, detail) FROM STDIN",
            # printable: a file name with undecodable bytes or a NUL in a detail must
            # not fail the COPY (PostgreSQL text holds neither surrogates nor NUL).
            ((printable(r.source_file), printable(r.locator), r.source_row, r.reason,
              printable(r.detail or "")) for r in rejects),
        )
        cur.execute(
            "INSERT INTO rejects (batch_id, source_file, locator, source_row, reason, detail)"
            " SELECT %s, source_file, locator, source_row, reason, detail FROM stage_rejects"
            " ON CONFLICT DO NOTHING",
            (batch_id,),
        )
        inserted = cur.rowcount
        cur.execute("TRUNCATE stage_rejects")
    return inserted


_PRODUCT_COLUMNS = ("productid, imageid, source_split, source_row, source_line, designation,"
                    " description")
ROWS_PER_COPY = 8192  # products per COPY statement in "copy" mode (then their labels')


def _row_chunks(planner: Planner, batch_id: int, size: int) -> Iterator[tuple[list, list]]:
    """The planner's products as (products rows, labels rows), `size` products at a time."""
    products: list[tuple] = []
    labels: list[tuple[int, int, int]] = []
    for p in planner.products():
        products.append((p.productid, p.imageid, p.split, p.index, p.line, p.designation,
                         p.description, batch_id))
        if p.prdtypecode is not None:
            labels.append((p.productid, p.prdtypecode, batch_id))
        if len(products) >= size:
            yield products, labels
            products, labels = [], []
    if products:
        yield products, labels


def _copy_products(conn: psycopg.Connection, batch_id: int, planner: Planner,
                   mode: str) -> tuple[int, int]:
    """Stream the planner's products into PostgreSQL as it decides them; (products, labels).

    mode "copy": straight into products and labels, a COPY of ROWS_PER_COPY products
    then one of their labels, while a background thread reads and validates the next
    ones (`read_ahead`): the Python work overlaps PostgreSQL's, including the labels'
    foreign-key checks, which it runs at the end of each COPY. The planner has already
    left out every row the lake holds (it read the lake under the batch lock, in this
    transaction), so nothing can conflict; if anything did, the COPY would fail and the
    whole batch roll back, never half-load.
    mode "staging": into a temporary table, then INSERT ... ON CONFLICT DO NOTHING into
    products and labels: the same result, about twice as slow (row-at-a-time inserts).
    """
    if mode == "copy":
        written = labelled = 0
        chunks = read_ahead(_row_chunks(planner, batch_id, ROWS_PER_COPY))
        with conn.cursor() as cur, closing(chunks):  # closing: stop the thread on errors
            for products, labels in chunks:
                copy_rows(cur, f"COPY products ({_PRODUCT_COLUMNS}, batch_id) FROM STDIN",
                          products)
                if labels:
                    copy_rows(cur, "COPY labels (productid, prdtypecode, batch_id) FROM STDIN",
                              labels)
                written += len(products)
                labelled += len(labels)
        return written, labelled
    labels: list[tuple[int, int, int]] = []
    written = 0
    conn.execute(
        "CREATE TEMP TABLE stage_products (productid bigint, imageid bigint,"
        " source_split text, source_row bigint, source_line integer, designation text,"
        " description text, batch_id bigint) ON COMMIT DROP"
    )
    with conn.cursor() as cur:
        with cur.copy(f"COPY stage_products ({_PRODUCT_COLUMNS}, batch_id) FROM STDIN") as copy:
            for p in planner.products():
                copy.write_row((p.productid, p.imageid, p.split, p.index, p.line,
                                p.designation, p.description, batch_id))
                written += 1
                if p.prdtypecode is not None:
                    labels.append((p.productid, p.prdtypecode, batch_id))
        cur.execute(
            f"INSERT INTO products ({_PRODUCT_COLUMNS}, batch_id)"
            f" SELECT {_PRODUCT_COLUMNS}, batch_id FROM stage_products ON CONFLICT DO NOTHING"
        )
        products = cur.rowcount
        conn.execute("CREATE TEMP TABLE stage_labels (productid bigint, prdtypecode integer,"
                     " batch_id bigint) ON COMMIT DROP")
        copy_rows(cur, "COPY stage_labels FROM STDIN", labels)
        cur.execute(
            "INSERT INTO labels (productid, prdtypecode, batch_id)"
            " SELECT s.productid, s.prdtypecode, s.batch_id FROM stage_labels s"
            " JOIN products p ON p.productid = s.productid AND p.batch_id = s.batch_id"
            " ON CONFLICT DO NOTHING"
        )
        return products, cur.rowcount


def _upsert_categories(conn: psycopg.Connection, categories: dict[int, str]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO categories (prdtypecode, name) VALUES (%s, %s)"
            " ON CONFLICT (prdtypecode) DO UPDATE SET name = EXCLUDED.name"
            " WHERE categories.name IS DISTINCT FROM EXCLUDED.name",
            sorted(categories.items()),
        )


def _text_loaded(conn: psycopg.Connection, run_id: str) -> int | None:
    row = conn.execute(
        "SELECT batch_id FROM load_batches WHERE run_id = %s AND text_loaded_at IS NOT NULL",
        (run_id,),
    ).fetchone()
    return row[0] if row else None


class _TooManyRejects(Exception):
    pass


def _start_batch(conn: psycopg.Connection, run_id: str, spec: str, root: Path) -> tuple[int, str]:
    """The batch row of `run_id` (new, or a failed attempt reset); (batch_id, slice spec)."""
    row = conn.execute(
        "SELECT batch_id, slice_spec FROM load_batches WHERE run_id = %s FOR UPDATE", (run_id,)
    ).fetchone()
    if row is None:
        for other, other_run in conn.execute(
            "SELECT batch_id, run_id FROM load_batches WHERE status <> 'succeeded'"
            " AND text_loaded_at IS NOT NULL ORDER BY batch_id"
        ):
            log.warning("batch %d (run %s) never finished its images: run it again with the "
                        "same run id (CLI --run-id %s, or clear its Airflow task) to finish "
                        "it", other, other_run, other_run)
        batch_id = conn.execute(
            "INSERT INTO load_batches (run_id, source_dir, slice_spec, status)"
            " VALUES (%s, %s, %s, 'running') RETURNING batch_id",
            (run_id, str(root), spec),
        ).fetchone()[0]
        log.info("run %s: new batch %d (slice %s)", run_id, batch_id, spec)
        return batch_id, spec
    # An earlier attempt of this run failed before its text committed: start it again,
    # with the slice it asked for.
    batch_id, spec = row
    conn.execute("DELETE FROM rejects WHERE batch_id = %s", (batch_id,))
    conn.execute(
        "UPDATE load_batches SET status = 'running', error = NULL, finished_at = NULL,"
        " started_at = now() WHERE batch_id = %s", (batch_id,),
    )
    log.info("run %s: retrying batch %d (slice %s)", run_id, batch_id, spec)
    return batch_id, spec


def load_text(settings: Settings, run_id: str, slice_spec: str | None = None,
              source: Source | None = None) -> TextResult:
    """Load the next slice's text as batch `run_id` (or nothing, if that batch has it)."""
    # The parsed source and the plan are gone when _load_text returns, before the
    # collector resumes (see gc_paused).
    with failure_recorded(settings, "text phase", run_id=run_id), gc_paused():
        return _load_text(settings, run_id, slice_spec, source)


def _load_text(settings: Settings, run_id: str, slice_spec: str | None,
               source: Source | None) -> TextResult:
    started = time.perf_counter()
    spec = normalize_slice(slice_spec or settings.ingest_slice)
    root = Path(settings.path(settings.raw_data_dir))
    limit = settings.ingest_max_text_reject_ratio
    # autocommit: each `conn.transaction()` below is a whole transaction, committed at
    # its end (not a savepoint of an implicit one that an exception would roll back).
    with lake_connect(settings, autocommit=True) as conn:
        if (batch_id := _text_loaded(conn, run_id)) is not None:
            log.info("run %s: batch %d already has its text; nothing to do", run_id, batch_id)
            return TextResult(batch_id, already_loaded=True)
        if source is None:
            log.info("reading %s", root)
            # for "all", the products are read while they are written
            source = read_source(root, lazy=spec == "all")
        for name in source.missing_optional:
            log.warning("optional input %s not found in %s: no products from it", name, root)
        failure = None
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
            if (batch_id := _text_loaded(conn, run_id)) is not None:
                return TextResult(batch_id, already_loaded=True)  # finished meanwhile
            batch_id, spec = _start_batch(conn, run_id, spec, root)
            _upsert_categories(conn, source.categories)
            size = None if spec == "all" else slice_size(spec, source.total_records)
            planner = Planner(source, _read_state(conn), size, settings.ingest_max_field_chars)
            try:
                with conn.transaction():  # savepoint: the slice's products and labels
                    products, labels = _copy_products(conn, batch_id, planner,
                                                      settings.ingest_text_write)
                    rejects = planner.rejects
                    ratio = len(rejects) / planner.slice_records if planner.slice_records else 0.0
                    if ratio > limit:
                        raise _TooManyRejects(
                            f"batch {batch_id}: {len(rejects)} of {planner.slice_records} "
                            f"product records rejected ({ratio:.1%}), above the limit "
                            f"INGEST_MAX_TEXT_REJECT_RATIO={limit:g}: {_top_reasons(rejects)}. "
                            f"Nothing of this slice was loaded; see: SELECT * FROM rejects "
                            f"WHERE batch_id = {batch_id}")
            except _TooManyRejects as exc:
                failure = str(exc)
            file_rejects, image_rejects = planner.finish()
            log.info("source %s: %d product records (%s), %d label records, %d categories, "
                     "%d image files", root, source.total_records,
                     ", ".join(f"{s} {len(r)}" for s, r in source.x_records.items()),
                     len(source.y_records), len(source.categories),
                     sum(len(f) for f in source.image_files.values()))
            all_rejects = [*planner.rejects, *file_rejects, *image_rejects]
            write_rejects(conn, batch_id, all_rejects)
            already = _report_already_loaded(batch_id, planner.already_loaded,
                                             planner.slice_records)
            common = (planner.slice_records, planner.remaining, len(planner.rejects),
                      len(all_rejects), time.perf_counter() - started,
                      json.dumps({"already_loaded": already}))
            if failure:
                conn.execute(
                    "UPDATE load_batches SET status = 'failed', error = %s, finished_at = now(),"
                    " rows_read = %s, remaining_rows = %s, text_rejects = %s, rejects = %s,"
                    " text_seconds = %s, summary = %s WHERE batch_id = %s",
                    (failure, *common, batch_id),
                )
            else:
                conn.execute(
                    "UPDATE load_batches SET text_loaded_at = now(), rows_read = %s,"
                    " remaining_rows = %s, text_rejects = %s, rejects = %s, text_seconds = %s,"
                    " summary = %s, products_loaded = %s, labels_loaded = %s"
                    " WHERE batch_id = %s",
                    (*common, products, labels, batch_id),
                )
                crash_point("text_before_commit")
                log.info("batch %d: slice of %d records: loaded %d products and %d labels, "
                         "rejected %d records; also %d label/category/image-folder rejects "
                         "and %d images of rejected products; %d records left for later "
                         "batches (%.2fs)", batch_id, planner.slice_records, products, labels,
                         len(planner.rejects), len(file_rejects), len(image_rejects),
                         planner.remaining, time.perf_counter() - started)
        if failure:
            raise IngestError(failure)
    return TextResult(batch_id, already_loaded=False)


def assign_split(settings: Settings, batch_id: int) -> dict[str, int]:
    """Phase 1b: the train/validation/test subset of every labelled product lacking one.

    Idempotent and self-healing: it assigns whatever a crashed run left unassigned, in
    batch order, exactly as that run would have (see rakuten_mlops.ingest.split).
    """
    with failure_recorded(settings, "split", batch_id=batch_id):
        return _assign_split(settings, batch_id)


def _assign_split(settings: Settings, batch_id: int) -> dict[str, int]:
    started = time.perf_counter()
    with lake_connect(settings) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (INGEST_LOCK,))
        subsets = split.assign_pending(conn, settings.split_seed,
                                      settings.split_validation_fraction,
                                      settings.split_test_fraction)
        if sum(subsets.values()):  # a re-run that assigns nothing changes nothing
            conn.execute(
                "UPDATE load_batches SET split_assigned = (SELECT count(*) FROM dataset_split s"
                " JOIN labels l USING (productid) WHERE l.batch_id = %s),"
                " split_seconds = coalesce(split_seconds, 0) + %s WHERE batch_id = %s",
                (batch_id, time.perf_counter() - started, batch_id),
            )
    log.info("batch %d: split assigned to %d labelled products %s (seed %d) in %.2fs",
             batch_id, sum(subsets.values()), subsets, settings.split_seed,
             time.perf_counter() - started)
    return subsets


def _report_already_loaded(batch_id: int, counts: dict[int, int],
                           slice_records: int) -> dict[str, int]:
    """Log the records skipped because earlier batches loaded them (a folder of rows the
    lake already holds otherwise "succeeds" with 0 rows read and no word of why): a
    warning when that leaves nothing to load, else the usual course of incremental
    slices."""
    if counts:
        log.log(logging.INFO if slice_records else logging.WARNING,
                "batch %d: %d records skipped: their indices were already loaded (%s)%s",
                batch_id, sum(counts.values()),
                ", ".join(f"{n} in batch {b}" for b, n in sorted(counts.items())),
                "" if slice_records else "; nothing new to load")
    return {str(batch): count for batch, count in sorted(counts.items())}


def _top_reasons(rejects: list[Reject], top: int = 5) -> str:
    counts: dict[str, int] = {}
    for reject in rejects:
        counts[reject.reason] = counts.get(reject.reason, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    return ", ".join(f"{reason} x{count}" for reason, count in ranked)
