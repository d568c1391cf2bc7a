"""Why the served model's sources may be unreachable: MLflow's health, PostgreSQL's.

One-line reasons for the API's fallback and errors (rakuten_mlops.serving.model).
"""

from __future__ import annotations

import httpx

from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

REGISTRY_PROBE_TIMEOUT = 3.0


def registry_reachable(settings: Settings) -> str | None:
    """None when MLflow answers its health check, else why not."""
    url = f"{settings.tracking_uri.rstrip('/')}/health"
    try:
        response = httpx.get(url, timeout=REGISTRY_PROBE_TIMEOUT)
    except httpx.HTTPError as exc:
        return f"MLflow at {settings.tracking_uri} is unreachable ({type(exc).__name__})"
    if response.status_code != 200:
        return f"MLflow at {settings.tracking_uri} answered {response.status_code} on /health"
    return None


def database_problem(settings: Settings) -> str | None:
    """None when PostgreSQL answers, else why not (MLflow's store and the lake share it)."""
    import psycopg

    try:
        with connect(settings, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (
            f"PostgreSQL at {settings.postgres_host}:{settings.postgres_port} is unreachable "
            f"({type(exc).__name__}: {_first_line(str(exc))})"
        )
    return None


def _first_line(text: str, limit: int = 200) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line[:limit]
