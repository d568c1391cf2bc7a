"""Idempotent one-time set-up steps of local mode: roles, databases, migrations, users."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from rakuten_mlops.settings import Settings


def bootstrap_postgres(settings: Settings, socket_dir: Path) -> None:
    """The project role (its password kept in sync with .env) and its three databases."""
    password = settings.postgres_password.get_secret_value()
    with psycopg.connect(
        host=str(socket_dir),
        port=settings.postgres_port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
    ) as conn:
        role = sql.Identifier(settings.postgres_user)
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.postgres_user,)
        ).fetchone()
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, role, sql.Literal(password))
        )
        for database in (settings.postgres_db, settings.airflow_db, settings.mlflow_db):
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not found:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), role)
                )


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
