"""The data lake schema, managed in one place: numbered SQL files applied in order.

`migrate()` applies the files not yet recorded in `schema_migrations`, all in one
transaction under an advisory lock, so concurrent callers (DAG tasks, CLI) never race
and a failing file leaves the schema as it was.
"""

from __future__ import annotations

from importlib import resources

import psycopg

from rakuten_mlops.storage import connect

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


# ------------------------------------------------------------------ least-privilege roles
# The API and Grafana connect as roles of their own. The tables each may touch are named
# here, next to the migrations that create them, and granted again at every migrate, so
# a table added by a later migration is covered the moment it exists.

# The API: writes its inference log, reads what it serves (the log for /admin, class
# names, the trusted artifact checksums). No DDL, no other table.
API_GRANTS: dict[str, tuple[str, ...]] = {
    "inference_log": ("SELECT", "INSERT"),
    "categories": ("SELECT",),
    "trusted_models": ("SELECT",),
    # Issue 17: /predict/batch reads the stored image vectors of the products it names.
    "images": ("SELECT",),
    "image_features": ("SELECT",),
}


class SchemaMissing(RuntimeError):
    """The lake has no (or an older) schema: `rakuten-mlops migrate` has not run."""


def pending(conn: psycopg.Connection) -> list[str]:
    """The migration versions not applied to this database yet (all of them on an empty one)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    done = (
        {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        if exists
        else set()
    )
    return [version for version, _ in migration_files() if version not in done]


def require_current(conn: psycopg.Connection) -> None:
    """Raise SchemaMissing (one line saying what to run) unless every migration is applied."""
    missing = pending(conn)
    if missing:
        raise SchemaMissing(
            f"the lake {conn.info.dbname!r} lacks migration(s) {', '.join(missing)}: run "
            "`rakuten-mlops migrate` (`stack up` and each DAG's first task run it)"
        )


def ensure_roles(conn: psycopg.Connection, roles: dict[str, str]) -> list[str]:
    """Create (or re-password) each LOGIN role {name: password}; needs CREATEROLE.

    The password is sent as a SCRAM verifier computed by libpq: neither the server nor
    its logs ever see it. Returns the roles created now.
    """
    from psycopg import sql

    created = []
    for name, password in roles.items():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
        verifier = conn.pgconn.encrypt_password(
            password.encode(), name.encode(), b"scram-sha-256"
        ).decode()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}")
            .format(sql.Identifier(name), sql.Literal(verifier))
        )
        if not exists:
            created.append(name)
    return created


def service_roles(settings) -> dict[str, str]:
    """{role: password} of the API and Grafana (those whose password is configured)."""
    return {
        user: password.get_secret_value()
        for user, password in (
            (settings.postgres_api_user, settings.postgres_api_password),
            (settings.postgres_grafana_user, settings.postgres_grafana_password),
        )
        if password is not None
    }


def grant_privileges(conn: psycopg.Connection, api_role: str, grafana_role: str) -> list[str]:
    """Grant the API and Grafana roles exactly their rights on this database's tables.

    Run by the tables' owner after the migrations (idempotent). A role that does not
    exist yet (created by the stack's bootstrap) is skipped; returns the roles granted.
    """
    from psycopg import sql

    existing = {
        row[0]
        for row in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", ([api_role, grafana_role],)
        )
    }
    database = conn.info.dbname
    granted = []
    with conn.transaction():
        conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        for role in (api_role, grafana_role):
            if role not in existing:
                continue
            ident = sql.Identifier(role)
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), ident))
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
            granted.append(role)
        if api_role in existing:
            for table, rights in API_GRANTS.items():
                conn.execute(sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(r) for r in rights),
                    sql.Identifier(table), sql.Identifier(api_role)))
        if grafana_role in existing:
            # Read-only: SELECT on every table and view, today's and (default privileges
            # of the owner) tomorrow's.
            ident = sql.Identifier(grafana_role)
            conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(ident))
            conn.execute(sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}"
            ).format(ident))
    return granted


def migrate_lake(settings, conn: psycopg.Connection | None = None) -> dict:
    """What `rakuten-mlops migrate`, the stack's start-up and the DAGs' first task run:
    pending migrations, then the service roles' grants. As the lake's owner role."""
    def apply(connection: psycopg.Connection) -> dict:
        applied = migrate(connection)
        # Compose: the owner is the cluster's superuser and creates the roles itself (in
        # local mode the stack's bootstrap does, as `postgres`).
        if connection.execute(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()[0]:
            ensure_roles(connection, service_roles(settings))
        granted = grant_privileges(
            connection, settings.postgres_api_user, settings.postgres_grafana_user
        )
        return {"applied": applied, "granted": granted}

    if conn is not None:
        return apply(conn)
    with connect(settings, autocommit=True) as connection:
        return apply(connection)
