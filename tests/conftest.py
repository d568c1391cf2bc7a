"""Shared fixtures: the real local stack, and settings isolated from the user's own data.

The session fixture reuses a stack that is already up (and leaves it up), or starts one
and stops it at the end. Tests write to their own database and buckets, never to the
data lake a user has loaded with `make demo`.
"""

from __future__ import annotations

import os

import pytest
from pytest import MonkeyPatch

monkeypatch_context = MonkeyPatch.context

# Shared helpers and fixtures (tests/support), registered once for every folder.
pytest_plugins = [
    "tests.support.lake",
    "tests.support.serving",
    "tests.support.browser",
]

# Before anything reads settings: tests get a database and buckets of their own.
TEST_OVERRIDES = {
    "POSTGRES_DB": "rakuten_lake_test",
    "S3_BUCKET_IMAGES": "test-rakuten-images",
    "S3_BUCKET_ARTIFACTS": "test-rakuten-artifacts",
}
os.environ.update(TEST_OVERRIDES)


@pytest.fixture(scope="session")
def settings():
    from rakuten_mlops.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    # MLflow requires a login: tests train and register as its admin user.
    from rakuten_mlops.ml.tracking import configure

    configure(settings, "admin")
    return settings


@pytest.fixture(scope="session")
def stack(settings):
    """The running local stack (started here unless it already was)."""
    from rakuten_mlops.localstack.supervisor import Supervisor

    # A stack started here leaves DAGs paused: data_quality's schedule would write to the
    # user's lake while the no-trace check compares it (rakuten_mlops.localstack.schedules).
    supervisor = Supervisor(settings.model_copy(update={"stack_schedule_dags": False}))
    was_down = all(status.pid is None for status in supervisor.status())
    # Services are the user's, not the tests': they must not inherit the test overrides
    # (bootstrap still creates the test database and buckets from `settings`).
    with monkeypatch_context() as patch:
        for name in TEST_OVERRIDES:
            patch.delenv(name)
        supervisor.up(report=lambda line: print(f"[stack] {line}"))
    # No trace (tests/support/cleanup.py): the user's stack as found, checked here, after
    # every other fixture's teardown and before the stack stops.
    from tests.support.cleanup import NoTrace

    no_trace = NoTrace.start(settings)
    yield supervisor
    try:
        no_trace.finish()
    finally:
        if was_down and os.environ.get("RAKUTEN_KEEP_STACK") != "1":
            supervisor.down(report=lambda line: print(f"[stack] {line}"))


@pytest.fixture()
def db(stack, settings):
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        yield conn


@pytest.fixture()
def s3(stack, settings):
    from rakuten_mlops.storage import s3_client

    return s3_client(settings)
