"""No trace: the test session leaves the user's stack exactly as it found it.

`NoTrace.start` snapshots what a user sees of the stack (Airflow DAG runs, MLflow
experiments, deleted ones included, runs and registered model versions, S3 buckets, the
databases and the row counts of the user's lake) once the session's stack is up (the
first xdist worker that needs it takes it). `NoTrace.finish`, at the end of the session
in the main process (tests/support/workers.py), removes what the session created and
compares a new snapshot with the first:

- Airflow: the DAG runs `airflow dags test` created (run_type and triggered_by say so)
  that were not there before, deleted row by row (their task instances, XComs and notes
  go with them: ON DELETE CASCADE), never a whole DAG and never a time range;
- MLflow: registered models and experiments that were not there before, all of them the
  tests' own `test-*` names: models deleted, experiments soft-deleted and then removed for
  good as `mlflow gc` does (their runs, logged models and artifacts, and nothing else);
- MLflow entities left with `test-*` names by an earlier session that never reached its
  end (killed, interrupted) are removed by `NoTrace.start`, before its snapshot: they
  would otherwise count as the user's, and the runs this session adds to them as leaks;
- S3: the `test-*` buckets (only tests use the prefix), emptied and removed;
- PostgreSQL: the test databases (`rakuten_lake_test*`, every worker's) dropped.

Why at the session's end in the main process: every worker has finished, so every
fixture's own clean-up has run, and the stack is not yet stopped (a stack the session
started is still up to be looked at). A leak fails `make test` with the difference named.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

# Prefixes of what only tests create (tests/conftest.py TEST_OVERRIDES, test fixtures).
TEST_PREFIX = "test-"
# Runs a scheduler starts while tests run belong to the user's schedule, not to tests.
USER_RUN_TYPES = ("scheduled", "asset_triggered")


def user_settings(test_settings):
    """The user's own settings: the test session's, without tests/conftest.py overrides."""
    from dotenv import dotenv_values

    from rakuten_mlops.settings import Settings, env_file

    configured = dotenv_values(env_file())
    defaults = Settings.model_fields
    return test_settings.model_copy(update={
        "postgres_db": configured.get("POSTGRES_DB") or defaults["postgres_db"].default,
        "s3_bucket_images": configured.get("S3_BUCKET_IMAGES")
        or defaults["s3_bucket_images"].default,
        "s3_bucket_artifacts": configured.get("S3_BUCKET_ARTIFACTS")
        or defaults["s3_bucket_artifacts"].default,
    })


def _rows(settings, database: str, query: str, *args) -> list[tuple]:
    from rakuten_mlops.storage import connect

    with connect(settings, database=database) as conn:
        return conn.execute(query, args).fetchall()


@dataclass
class Snapshot:
    dag_runs: set[tuple[str, str]] = field(default_factory=set)
    experiments: set[tuple[str, str, str]] = field(default_factory=set)
    mlflow_runs: set[str] = field(default_factory=set)
    model_versions: set[tuple[str, str]] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    buckets: set[str] = field(default_factory=set)
    databases: set[str] = field(default_factory=set)
    lake_rows: dict[str, int] = field(default_factory=dict)

    @classmethod
    def take(cls, settings, test_settings) -> Snapshot:
        """What a user sees; the session's own test database and buckets left out."""
        from rakuten_mlops.storage import s3_client

        dag_runs = _rows(settings, settings.airflow_db,
                         "SELECT dag_id, run_id FROM dag_run WHERE run_type <> ALL(%s)",
                         list(USER_RUN_TYPES))
        mlflow = settings.mlflow_db
        return cls(
            dag_runs=set(dag_runs),
            experiments=set(_rows(settings, mlflow, "SELECT experiment_id::text, name,"
                                  " lifecycle_stage FROM experiments")),
            mlflow_runs={r[0] for r in _rows(settings, mlflow, "SELECT run_uuid FROM runs")},
            model_versions=set(_rows(settings, mlflow,
                                     "SELECT name, version::text FROM model_versions")),
            models={r[0] for r in _rows(settings, mlflow, "SELECT name FROM registered_models")},
            buckets={b.name for b in s3_client(settings).list_buckets()
                     if not b.name.startswith(TEST_PREFIX)},
            databases={r[0] for r in _rows(settings, "postgres",
                                           "SELECT datname FROM pg_database")
                       if not r[0].startswith(test_settings.postgres_db)},
            lake_rows=lake_row_counts(settings),
        )

    def differences(self, later: Snapshot) -> list[str]:
        found = []
        for name in self.__dataclass_fields__:
            before, after = getattr(self, name), getattr(later, name)
            if before == after:
                continue
            if isinstance(before, dict):
                changed = {k: (before.get(k), after.get(k))
                           for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
                found.append(f"{name}: (before, after) {sorted(changed.items())}")
            else:
                found.append(f"{name}: new {sorted(after - before)[:10]}, "
                             f"gone {sorted(before - after)[:10]}")
        return found


def lake_row_counts(settings) -> dict[str, int]:
    """Rows of every table of the user's lake (none when it does not exist yet: a stack
    that pytest started on a fresh clone has only the tests' database)."""
    from rakuten_mlops.storage import connect

    exists = _rows(settings, "postgres", "SELECT 1 FROM pg_database WHERE datname = %s",
                   settings.postgres_db)
    if not exists:
        return {}
    with connect(settings) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(t))).fetchone()[0] for t in tables}


# ------------------------------------------------------------------------- removal


def delete_dag_runs(settings, keep: set[tuple[str, str]]) -> int:
    """The runs `airflow dags test` created since the snapshot (task rows cascade)."""
    from rakuten_mlops.storage import connect

    with connect(settings, database=settings.airflow_db) as conn:
        # `dag.test()` marks its runs (DagRunTriggeredByType.TEST, stored by name).
        runs = conn.execute(
            "SELECT id, dag_id, run_id FROM dag_run WHERE upper(triggered_by::text) = 'TEST'"
        ).fetchall()
        removed = [r for r in runs if (r[1], r[2]) not in keep]
        if removed:
            conn.execute("DELETE FROM dag_run WHERE id = ANY(%s)", ([r[0] for r in removed],))
    # ... and their task logs (runs through an executor write them, see `cli.tools.with_task_logs`).
    from rakuten_mlops.localstack.services import airflow_home

    for _, dag_id, run_id in removed:
        shutil.rmtree(
            airflow_home(settings) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}",
            ignore_errors=True,
        )
    return len(removed)


def remove_mlflow(settings, before: Snapshot, after: Snapshot) -> tuple[int, int]:
    """Delete the models and, for good, the experiments created since `before`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    models = after.models - before.models
    for name in models:
        with contextlib.suppress(Exception):  # gone already (a fixture's own cleanup)
            client.delete_registered_model(name)
    known = {e[0] for e in before.experiments}
    experiments = sorted({e[0] for e in after.experiments if e[0] not in known})
    for experiment_id in experiments:
        with contextlib.suppress(Exception):  # soft-deleted already
            client.delete_experiment(experiment_id)
    if experiments:
        hard_delete_experiments(settings, experiments)
    return len(models), len(experiments)


def remove_earlier_sessions_mlflow(settings) -> None:
    """The `test-*` models and experiments (deleted ones too) an aborted session left."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    pattern = TEST_PREFIX + "%"
    for (name,) in _rows(settings, settings.mlflow_db,
                         "SELECT name FROM registered_models WHERE name LIKE %s", pattern):
        client.delete_registered_model(name)
    experiments = _rows(settings, settings.mlflow_db, "SELECT experiment_id::text,"
                        " lifecycle_stage FROM experiments WHERE name LIKE %s", pattern)
    for experiment_id, stage in experiments:
        if stage == "active":
            client.delete_experiment(experiment_id)
    if experiments:
        hard_delete_experiments(settings, [e[0] for e in experiments])


def hard_delete_experiments(settings, experiment_ids: list[str]) -> None:
    """What `mlflow gc` does, for these experiments only, in this process (the store URI
    holds a password: never on a command line).

    The gc command given experiment ids alone also removes every other deleted run and
    logged model of the server (the user's own included), so the runs and logged models
    are named explicitly: exactly those of these experiments.
    """
    from mlflow.cli import _gc_tracking_resources, _get_store

    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri)
    deleted = " WHERE experiment_id = ANY(%s) AND lifecycle_stage = 'deleted'"
    ids = [int(e) for e in experiment_ids]
    runs = [r[0] for r in _rows(settings, settings.mlflow_db,
                                "SELECT run_uuid FROM runs" + deleted, ids)]
    models = [r[0] for r in _rows(settings, settings.mlflow_db,
                                  "SELECT model_id FROM logged_models" + deleted, ids)]
    _gc_tracking_resources(
        backend_store=_get_store(settings.postgres_dsn(settings.mlflow_db), None),
        run_ids=runs,
        experiment_ids=list(experiment_ids),
        logged_model_ids=models,
        older_than=None,
        time_delta=0,
        skip_experiments=False,
        skip_logged_models=False,
    )


def owned_buckets(settings) -> set[str]:
    """Buckets only tests create (TEST_OVERRIDES and the suites' `-ingest`, `-quality`...)."""
    from rakuten_mlops.storage import s3_client

    return {b.name for b in s3_client(settings).list_buckets() if b.name.startswith(TEST_PREFIX)}


def owned_databases(settings, test_settings) -> set[str]:
    """The session's database and the suites' own (`<it>_ingest`, `<it>_quality`...)."""
    return {r[0] for r in _rows(settings, "postgres", "SELECT datname FROM pg_database")
            if r[0].startswith(test_settings.postgres_db)}


def remove_buckets(settings, names: set[str]) -> None:
    from minio.deleteobjects import DeleteObject

    from rakuten_mlops.storage import s3_client

    client = s3_client(settings)
    for bucket in names:
        if not client.bucket_exists(bucket):
            continue
        objects = (DeleteObject(o.object_name, o.version_id) for o in client.list_objects(
            bucket, recursive=True, include_version=True))
        errors = list(client.remove_objects(bucket, objects))
        assert not errors, f"could not empty {bucket}: {errors[:3]}"
        client.remove_bucket(bucket)


def drop_databases(settings, names: set[str]) -> None:
    from rakuten_mlops.localstack.postgres import postgres_superuser_kwargs

    with psycopg.connect(**postgres_superuser_kwargs(settings), autocommit=True) as conn:
        for name in sorted(names):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@dataclass
class NoTrace:
    settings: Any  # the user's
    test_settings: Any
    before: Snapshot
    removed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, test_settings) -> NoTrace:
        settings = user_settings(test_settings)
        remove_earlier_sessions_mlflow(settings)
        return cls(settings, test_settings, Snapshot.take(settings, test_settings))

    def clean(self) -> Snapshot:
        """Remove what the session created; return the snapshot taken before removal.

        Test databases and buckets go by name (an older session's leftovers too); Airflow
        runs and MLflow entities by difference with the first snapshot."""
        during = Snapshot.take(self.settings, self.test_settings)
        self.removed["dag_runs"] = delete_dag_runs(self.settings, self.before.dag_runs)
        models, experiments = remove_mlflow(self.settings, self.before, during)
        self.removed["models"], self.removed["experiments"] = models, experiments
        created = owned_buckets(self.settings)
        remove_buckets(self.settings, created)
        self.removed["buckets"] = len(created)
        databases = owned_databases(self.settings, self.test_settings)
        drop_databases(self.settings, databases)
        self.removed["databases"] = len(databases)
        return during

    def finish(self, report=print) -> None:
        """Clean up, then fail (naming each difference) if the user's stack changed."""
        import time

        started = time.perf_counter()
        self.clean()
        left = self.before.differences(Snapshot.take(self.settings, self.test_settings))
        report(f"[no-trace] removed {self.removed} in {time.perf_counter() - started:.1f}s")
        assert not left, "the tests left a trace in the user's stack:\n" + "\n".join(left)
