"""Idempotent one-time set-up steps of local mode: roles, databases, migrations, users."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from rakuten_mlops.settings import Settings


def bootstrap_postgres(settings: Settings, hba_file: Path, owner: str | None) -> None:
    """Password authentication everywhere, the project role (its password kept in sync
    with .env) and its three databases."""
    from rakuten_mlops.localstack.services import postgres_superuser_kwargs

    with psycopg.connect(**postgres_superuser_kwargs(settings), autocommit=True) as conn:
        require_passwords(conn, settings, hba_file, owner)
        role = sql.Identifier(settings.postgres_user)
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.postgres_user,)
        ).fetchone()
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        verifier = scram_verifier(
            conn, settings.postgres_user, settings.postgres_password.get_secret_value()
        )
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, role, sql.Literal(verifier))
        )
        for database in (settings.postgres_db, settings.airflow_db, settings.mlflow_db):
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not found:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), role)
                )
        ensure_service_roles(conn, settings)
    bootstrap_lake(settings)


def ensure_service_roles(conn: psycopg.Connection, settings: Settings) -> None:
    """The API's and Grafana's least-privilege roles, passwords kept in sync with .env."""
    from rakuten_mlops.schema import ensure_roles, service_roles

    ensure_roles(conn, service_roles(settings))


def bootstrap_lake(settings: Settings) -> None:
    """The lake's migrations and grants, once per start-up (as the project role, which
    owns the tables): the services that come after never change the schema."""
    from rakuten_mlops.schema import migrate_lake

    migrate_lake(settings)


def scram_verifier(conn: psycopg.Connection, user: str, password: str) -> str:
    """The SCRAM verifier of a password, computed by libpq: the server (and its logs)
    never see the password itself."""
    return conn.pgconn.encrypt_password(
        password.encode(), user.encode(), b"scram-sha-256"
    ).decode()


def require_passwords(
    conn: psycopg.Connection, settings: Settings, hba_file: Path, owner: str | None
) -> None:
    """Give the superuser its password from .env, then make pg_hba.conf ask everyone for one.

    In this order, a cluster created by an older version with `trust` on the socket is
    migrated while trust still lets us in; its socket is already private meanwhile.
    """
    from rakuten_mlops.localstack.services import PG_HBA, postgres_superuser_password

    verifier = scram_verifier(conn, "postgres", postgres_superuser_password(settings))
    conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier)))
    if hba_file.read_text() == PG_HBA:
        return
    replace_file(hba_file, PG_HBA, owner)
    conn.execute("SELECT pg_reload_conf()")
    errors = conn.execute(
        "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
    ).fetchall()
    if errors:
        raise RuntimeError(f"PostgreSQL rejected {hba_file}: {errors}")


def replace_file(path: Path, text: str, owner: str | None) -> None:
    """Write a 0600 file atomically (a reader sees the old or the new content)."""
    import os
    import shutil

    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    if owner:
        shutil.chown(temporary, owner)
    os.replace(temporary, path)


def write_airflow_passwords(settings: Settings, path: Path) -> None:
    """SimpleAuthManager reads user passwords from this file; ours come from .env."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {settings.airflow_admin_user: settings.airflow_admin_password.get_secret_value()}
        )
    )
    path.chmod(0o600)


def migrate_airflow(settings: Settings, env: dict[str, str], airflow: str) -> None:
    """`airflow db migrate`, skipped when this Airflow version already migrated the database."""
    from importlib.metadata import version

    marker = (
        Path(env["AIRFLOW_HOME"])
        / f".migrated-{version('apache-airflow-core')}-{settings.airflow_db}"
    )
    if marker.is_file():
        return
    result = subprocess.run(
        [airflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` failed:\n{result.stderr[-3000:]}")
    marker.write_text("")
