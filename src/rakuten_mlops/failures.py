"""Failures of the services a command depends on, said in one line.

A command that cannot reach PostgreSQL or S3 is an expected failure: it ends with one
line naming the service and why (`describe`), never a traceback, and never with the
memory addresses that library messages carry (`<...Connection object at 0x7f...>`).
"""

from __future__ import annotations

import re

_ADDRESS = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>:?\s*")


def scrub(text: str) -> str:
    """`text` on one line, without `<object at 0x...>` reprs (they say nothing to a reader)."""
    lines = [line.strip() for line in _ADDRESS.sub("", str(text)).splitlines()]
    return "; ".join(line for line in lines if line)


def service_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a store is unreachable or refused the work, not a bug."""
    # Inside: every CLI command imports this module; the clients load only when one
    # actually handles a service error.
    import psycopg
    import urllib3
    from minio.error import MinioException

    from rakuten_mlops.schema import SchemaMissing  # loads psycopg too: deferred with them

    # UndefinedTable: a lake never migrated (only `migrate` changes the schema).
    return (psycopg.OperationalError, psycopg.errors.UndefinedTable, SchemaMissing,
            urllib3.exceptions.HTTPError, MinioException, ConnectionError, TimeoutError)


def describe(exc: BaseException) -> str:
    """One readable line for `exc`: which service failed and why."""
    # Inside: every CLI command imports this module; the clients load only when one
    # actually handles a service error.
    import psycopg
    import urllib3

    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        reason = scrub(exc.reason or exc)
        reason = reason.rpartition("): ")[2] if "): " in reason else reason
        return f"S3 at {exc.pool.host}:{exc.pool.port} is unreachable ({reason})"
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return f"S3 request failed: {scrub(exc)}"
    if isinstance(exc, psycopg.errors.UndefinedTable):
        table = scrub(exc).partition("\n")[0]
        return f"PostgreSQL: the lake schema is missing ({table}): run `rakuten-mlops migrate`"
    if isinstance(exc, psycopg.OperationalError):
        return f"PostgreSQL: {scrub(exc)}"
    return f"{type(exc).__name__}: {scrub(exc)}"


_UNREACHABLE = (
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection refused",
)


def describe_mlflow(exc: BaseException, tracking_uri: str) -> str:
    """One line for an MLflow client error: an unreachable server says so and where,
    instead of the client's retry chain (`HTTPConnectionPool(...): Max retries ...`)."""
    text = scrub(exc)
    if any(marker in text for marker in _UNREACHABLE):
        return f"MLflow at {tracking_uri} is unreachable (connection refused or timed out)"
    return f"MLflow: {text}"
