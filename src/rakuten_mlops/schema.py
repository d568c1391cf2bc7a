"""The data lake schema, managed in one place: numbered SQL files applied in order.

`migrate()` applies the files not yet recorded in `schema_migrations`, all in one
transaction under an advisory lock, so concurrent callers (DAG tasks, CLI) never race
and a failing file leaves the schema as it was.
"""

from __future__ import annotations

from importlib import resources

import psycopg

MIGRATIONS_PACKAGE = "rakuten_mlops.sql"
_LOCK_KEY = 0x52414B55  # arbitrary, project-wide


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) for every migration, in order."""
    folder = resources.files(MIGRATIONS_PACKAGE)
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations; return the versions applied now."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, statements in migration_files():
            if version in done:
                continue
            conn.execute(statements)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            applied_now.append(version)
    return applied_now
