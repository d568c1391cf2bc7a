"""The load's PostgreSQL sessions and what a failed phase leaves on its batch.

Locks die with their session. The load's locks are advisory locks held by its
sessions (the image phase's for the whole phase), so a run killed with `kill -9` must
lose its session within seconds, or a re-run is refused (or waits) until it does. The
kernel closes a killed process's socket, but a backend busy in a statement (a
set-based INSERT over 40k products can take minutes) does not read its socket and
would hold the lock to the statement's end: `client_connection_check_interval` makes it
check every 2 s and abort. TCP keepalives and `tcp_user_timeout` (server side, and
libpq's on the client side) cover a peer that vanishes without closing the socket (a
dead host, a cut network): about 20 s. `idle_in_transaction_session_timeout` is not
set on purpose: a live load may legitimately sit idle between two chunks (waiting on
S3), and killing its session would fail a healthy run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from rakuten_mlops.failures import describe, service_errors
from rakuten_mlops.ingest.sources import IngestError
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.ingest")

DEAD_CLIENT_CHECK_MS = 2000
SESSION_LIVENESS = {
    # server side: notice a client gone mid-statement, or a silent peer
    "options": (f"-c client_connection_check_interval={DEAD_CLIENT_CHECK_MS}"
                " -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3"
                " -c tcp_keepalives_count=3 -c tcp_user_timeout=20000"),
    # client side (libpq): notice a server gone silent instead of hanging
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
    "tcp_user_timeout": 20000,
}
# A re-run started right after a kill waits this long for the dead run's session (and
# locks) to go, instead of being refused at once.
LOCK_WAIT = "15s"


class BatchBusy(IngestError):
    """Another live process holds the batch: not a failure of the batch itself."""


def lake_connect(settings: Settings, **kwargs) -> psycopg.Connection:
    """A connection to the lake whose locks die within seconds of its client."""
    return connect(settings, **{**SESSION_LIVENESS, **kwargs})


def record_failure(settings: Settings, error: str, *, batch_id: int | None = None,
                   run_id: str | None = None) -> None:
    """Mark the batch failed with `error` (best effort: the database may be the failure).

    Only an existing, unfinished batch is marked: a run that failed before its batch
    row committed has nothing to mark, and a re-run of it starts afresh anyway.
    """
    where, key = ("batch_id", batch_id) if batch_id is not None else ("run_id", run_id)
    try:
        with connect(settings, autocommit=True, connect_timeout=3) as conn:
            conn.execute(
                "UPDATE load_batches SET status = 'failed', error = %s, finished_at = now()"
                f" WHERE {where} = %s AND status <> 'succeeded'", (error, key))
    except psycopg.Error as exc:
        log.warning("could not record the failure on batch %s=%s: %s", where, key,
                    describe(exc))


@contextmanager
def failure_recorded(settings: Settings, phase: str, *, batch_id: int | None = None,
                     run_id: str | None = None) -> Iterator[None]:
    """Any failure of `phase` is recorded on its batch (status failed, error).

    A store that cannot be reached (or refuses) becomes an IngestError of one line;
    anything else is a bug: recorded too, and raised as it is (with its traceback).
    """
    where = {"batch_id": batch_id, "run_id": run_id}
    try:
        yield
    except BatchBusy:
        raise
    except IngestError as exc:
        record_failure(settings, str(exc), **where)
        raise
    except service_errors() as exc:
        message = f"{phase} failed: {describe(exc)}"
        record_failure(settings, message, **where)
        raise IngestError(message) from exc
    except Exception as exc:
        record_failure(settings, f"{phase} failed (unexpected): {describe(exc)}", **where)
        raise
