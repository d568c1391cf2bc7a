"""Least privilege in PostgreSQL: the API and Grafana connect as roles of their own.

`rakuten-mlops migrate` (and the stack's start-up, and each DAG's first task) grants the
API's role INSERT into its inference log and SELECT on what it serves, and Grafana's role
SELECT only. Here, on the test database migrated like the user's lake, each role tries
what it must not do, for real, and what it must do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from rakuten_mlops.schema import API_GRANTS, migrate_lake
from tests.support.lake import PROJECT

pytestmark = pytest.mark.stack


def as_role(settings, user: str, password) -> psycopg.Connection:
    from rakuten_mlops.storage import connect

    assert password is not None, "POSTGRES_*_PASSWORD missing from .env (`make setup`)"
    # autocommit: a role's open transaction would hold locks the owner then waits for.
    return connect(settings.model_copy(update={"postgres_user": user,
                                                "postgres_password": password}),
                   autocommit=True)


@pytest.fixture(scope="module")
def lake(stack, settings):
    migrate_lake(settings)  # idempotent: what the stack's start-up already ran
    return settings


@pytest.fixture()
def api(lake):
    with as_role(lake, lake.postgres_api_user, lake.postgres_api_password) as conn:
        yield conn


@pytest.fixture()
def grafana(lake):
    with as_role(lake, lake.postgres_grafana_user, lake.postgres_grafana_password) as conn:
        yield conn


def tables(settings) -> list[str]:
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        return [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


def refused(conn: psycopg.Connection, statement: str) -> bool:
    """True when PostgreSQL refuses `statement` for lack of privilege (nothing changes)."""
    try:
        with conn.transaction():
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


INFERENCE_ROW = """
INSERT INTO inference_log (request_id, item, predicted_at, endpoint, client_role,
    model_name, model_version, model_source, prdtypecode, confidence, top_k,
    designation_chars, description_chars, designation_words, description_words, has_html,
    language, text_sha256, batch_size, latency_ms)
VALUES (%s, 0, now(), 'predict', 'client', 'test-roles', '1', 'registry', 10, 0.5, '[]',
    5, 0, 1, 0, false, 'fr', repeat('a', 64), 1, 1.0)"""


@pytest.mark.parametrize("statement", [
    "CREATE TABLE api_scratch (x int)",
    "DROP TABLE inference_log",
    "ALTER TABLE inference_log ADD COLUMN x int",
    "CREATE INDEX api_idx ON inference_log (client_role)",
    "TRUNCATE inference_log",
    "DELETE FROM inference_log",
    "UPDATE inference_log SET latency_ms = 0",
    "INSERT INTO trusted_models VALUES ('m', '1', 'r', repeat('a', 64), 1, 1)",
    "SELECT count(*) FROM products",
    "SELECT count(*) FROM model_promotions",
])
def test_the_api_role_changes_no_schema_and_touches_only_its_tables(api, statement):
    assert refused(api, statement), statement


def test_the_api_role_logs_predictions_and_reads_what_it_serves(api):
    request_id = uuid.uuid4()
    with api.transaction(force_rollback=True):  # proves the right, leaves no row
        api.execute(INFERENCE_ROW, (request_id,))
        assert api.execute("SELECT count(*) FROM inference_log WHERE request_id = %s",
                           (request_id,)).fetchone()[0] == 1
    for table in API_GRANTS:
        api.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()


def test_the_grafana_role_reads_every_table_and_writes_none(grafana, lake):
    every = tables(lake)
    assert {"inference_log", "quality_windows", "model_promotions", "products"} <= set(every)
    for table in every:
        grafana.execute(f"SELECT * FROM {table} LIMIT 1").fetchall()
        assert refused(grafana, f"DELETE FROM {table}"), table
        assert refused(grafana, f"UPDATE {table} SET {first_column(grafana, table)} = NULL")
        assert refused(grafana, f"INSERT INTO {table} DEFAULT VALUES"), table
    assert refused(grafana, "CREATE TABLE grafana_scratch (x int)")


def first_column(conn, table: str) -> str:
    return conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s"
        " ORDER BY ordinal_position LIMIT 1", (table,)).fetchone()[0]


def test_a_table_created_by_a_later_migration_is_readable_by_grafana(lake, grafana):
    """Default privileges: the owner's next table is Grafana's to read, no re-grant needed."""
    from rakuten_mlops.storage import connect

    name = f"later_{uuid.uuid4().hex[:8]}"
    with connect(lake, autocommit=True) as owner:
        owner.execute(f"CREATE TABLE {name} (x int)")
        try:
            assert grafana.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 0
        finally:
            owner.execute(f"DROP TABLE {name}")


def test_migrate_command_is_idempotent_and_says_what_it_did(lake):
    result = subprocess.run([sys.executable, "-m", "rakuten_mlops", "migrate"],
                            env={**os.environ, "POSTGRES_DB": lake.postgres_db}, cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "migrations applied now: none (schema up to date)" in result.stdout
    assert lake.postgres_api_user in result.stdout and lake.postgres_grafana_user in result.stdout


def test_a_lake_never_migrated_says_to_run_migrate_in_one_line(lake):
    """Only `migrate` changes the schema: a path on an empty lake says what to run."""
    from rakuten_mlops.failures import describe, service_errors
    from rakuten_mlops.localstack.postgres import postgres_superuser_kwargs
    from rakuten_mlops.storage import connect

    empty = f"{lake.postgres_db}_empty"
    with psycopg.connect(**postgres_superuser_kwargs(lake), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{empty}" OWNER "{lake.postgres_user}"')
    try:
        summary = subprocess.run(
            [sys.executable, "-m", "rakuten_mlops", "lake-summary"],
            env={**os.environ, "POSTGRES_DB": empty},
            cwd=PROJECT, capture_output=True, text=True, timeout=300)
        with connect(lake, database=empty) as conn, pytest.raises(service_errors()) as error:
            conn.execute("SELECT count(*) FROM inference_log")
    finally:
        with psycopg.connect(**postgres_superuser_kwargs(lake), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{empty}" WITH (FORCE)')
    assert "run `rakuten-mlops migrate`" in summary.stdout, summary.stdout + summary.stderr
    line = describe(error.value)
    assert "\n" not in line and line.endswith("run `rakuten-mlops migrate`"), line
    assert "inference_log" in line
