"""The inference log: every prediction, written to PostgreSQL off the request path.

A request hands its entries to `InferenceLogWriter.submit()` (a queue put, nothing
else). A background thread turns them into rows of input *features* (lengths, word
counts, language, HTML, a hash of the text; never the text or the caller's key), buffers
them, and writes them in batches every API_LOG_FLUSH_SECONDS. When PostgreSQL is down
the rows wait in memory (up to API_LOG_BUFFER_ROWS; the oldest beyond that are dropped
and counted) and the writer reconnects with backoff: predictions never wait for, nor
fail because of, the database, and the log catches up when it returns. Rows are keyed
by (request_id, item) and inserted with ON CONFLICT DO NOTHING, so a batch retried after
an ambiguous failure is never written twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

import psycopg

from rakuten_mlops.ml.text import LanguageGuesser
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.serving.inference_log")

APPLICATION_NAME = "rakuten-api-inference-log"
MAX_ROWS_PER_WRITE = 5000
MAX_BACKOFF_SECONDS = 5.0
COLUMNS = (
    "request_id",
    "item",
    "predicted_at",
    "endpoint",
    "client_role",
    "model_name",
    "model_version",
    "model_source",
    "prdtypecode",
    "confidence",
    "top_k",
    "designation_chars",
    "description_chars",
    "designation_words",
    "description_words",
    "has_html",
    "language",
    "text_sha256",
    "batch_size",
    "latency_ms",
)
INSERT = (
    f"INSERT INTO inference_log ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT DO NOTHING"
)

_HTML = re.compile(r"<[a-zA-Z/!][^>]*>|&(?:[a-zA-Z]{2,8}|#\d{2,5}|#x[0-9a-fA-F]{2,4});")


@dataclass(slots=True)
class Entry:
    """One classified product, as the request path hands it over."""

    request_id: str
    item: int
    predicted_at: datetime
    endpoint: str
    client_role: str
    model_name: str
    model_version: str
    model_source: str
    top: list[tuple[int, float]]
    designation: str
    description: str | None
    batch_size: int
    latency_ms: float


def language_guesser(settings: Settings) -> LanguageGuesser:
    """The guesser with the project's stopwords; from letters alone if they cannot be read
    (the log must never stop the API)."""
    try:
        return LanguageGuesser(settings.path(settings.nltk_data_dir))
    except Exception as exc:  # noqa: BLE001 - the guess degrades to letters only
        log.warning("no stopwords for language guessing: %s", exc)
        return LanguageGuesser()


def features(entry: Entry, guesser: LanguageGuesser) -> tuple:
    """The row written for an entry, in COLUMNS order."""
    designation, description = entry.designation, entry.description or ""
    text = f"{designation}\n{description}"
    code, confidence = entry.top[0]
    return (
        entry.request_id,
        entry.item,
        entry.predicted_at,
        entry.endpoint,
        entry.client_role,
        entry.model_name,
        entry.model_version,
        entry.model_source,
        code,
        min(max(confidence, 0.0), 1.0),
        json.dumps([{"prdtypecode": c, "probability": round(p, 6)} for c, p in entry.top]),
        len(designation),
        len(description),
        len(designation.split()),  # whitespace-separated words (str.split: fast)
        len(description.split()),
        bool(_HTML.search(text)),
        guesser.guess(text),
        hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        entry.batch_size,
        entry.latency_ms,
    )


class InferenceLogWriter:
    """Buffers entries and writes them to `inference_log` from one background thread."""

    def __init__(self, settings: Settings, metrics=None):
        self.settings = settings
        self.metrics = metrics
        self.flush_seconds = settings.api_log_flush_seconds
        self._incoming: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._pending: deque[tuple] = deque()
        self._capacity = settings.api_log_buffer_rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self._retry_at = 0.0
        self._backoff = 0.5
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last_write_at: float | None = None

    # ---------------------------------------------------------------- request side

    def submit(self, entries: list[Entry]) -> None:
        self._incoming.put(entries)

    @property
    def pending(self) -> int:
        return len(self._pending) + self._incoming.qsize()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is buffered (for up to `timeout` seconds), then stop."""
        if self._thread is None:
            return
        self._stop.set()
        self._incoming.put(None)
        self._thread.join(timeout)
        if self._pending:
            log.warning("inference log: %d rows not written at shutdown", len(self._pending))
        self._close()

    def _run(self) -> None:
        guesser = language_guesser(self.settings)
        next_flush = time.monotonic() + self.flush_seconds
        while True:
            timeout = max(0.0, next_flush - time.monotonic())
            try:
                batch = self._incoming.get(timeout=timeout)
            except queue.Empty:
                batch = []
            self._take(batch, guesser)
            while True:  # drain without waiting
                try:
                    self._take(self._incoming.get_nowait(), guesser)
                except queue.Empty:
                    break
            stopping = self._stop.is_set()
            if time.monotonic() >= next_flush or stopping:
                self._flush(final=stopping)
                next_flush = time.monotonic() + self.flush_seconds
            if stopping:
                return

    def _take(self, batch: list[Entry] | None, guesser: LanguageGuesser) -> None:
        for entry in batch or ():
            try:
                row = features(entry, guesser)
            except Exception:  # noqa: BLE001 - one odd entry must not stop the log
                log.exception("inference log: could not build a row")
                continue
            if len(self._pending) >= self._capacity:
                self._pending.popleft()
                self.dropped += 1
                if self.metrics:
                    self.metrics.log_dropped.inc()
            self._pending.append(row)
        if self.metrics:
            self.metrics.log_pending.set(len(self._pending))

    # ---------------------------------------------------------------- database side

    def _flush(self, final: bool = False) -> None:
        deadline = time.monotonic() + (10.0 if final else 0)
        while self._pending:
            now = time.monotonic()
            if now < self._retry_at and not final:
                return
            try:
                conn = self._connection()
                count = min(len(self._pending), MAX_ROWS_PER_WRITE)
                rows = [self._pending[i] for i in range(count)]
                with conn.cursor() as cur:
                    cur.executemany(INSERT, rows)
                conn.commit()
            except Exception as exc:  # noqa: BLE001 - psycopg.Error, OSError, ...
                self._failed(exc)
                if not final or time.monotonic() > deadline:
                    return
                time.sleep(0.5)
                continue
            for _ in rows:
                self._pending.popleft()
            self.written += len(rows)
            self.last_write_at = time.time()
            self._backoff = 0.5
            if self.last_error:
                log.info("inference log: writing again (%d rows pending)", len(self._pending))
                self.last_error = None
            if self.metrics:
                self.metrics.log_written.inc(len(rows))
                self.metrics.log_pending.set(len(self._pending))

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close()
            self._conn = connect(
                self.settings, connect_timeout=3, application_name=APPLICATION_NAME
            )
        return self._conn

    def _failed(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        if isinstance(exc, psycopg.errors.UndefinedTable):  # the API never changes the schema
            message = "the inference_log table is missing: run `rakuten-mlops migrate`"
        if message != self.last_error:
            log.warning(
                "inference log: write failed, %d rows kept for later: %s",
                len(self._pending),
                message,
            )
        self.last_error = message
        if self.metrics:
            self.metrics.errors.labels("inference_log").inc()
        self._close()
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- reading

    def recent(self, limit: int) -> list[dict]:
        """The newest rows (own short connection; raises psycopg.Error when down)."""
        from psycopg.rows import dict_row

        with connect(self.settings, connect_timeout=3, row_factory=dict_row) as conn:
            rows = conn.execute(
                "SELECT * FROM inference_log ORDER BY predicted_at DESC, item LIMIT %s",
                (limit,),
            ).fetchall()
        for row in rows:
            row["request_id"] = str(row["request_id"])
            row["predicted_at"] = row["predicted_at"].isoformat()
        return rows
