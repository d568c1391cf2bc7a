"""Shared fixtures: the real local stack, and settings isolated from the user's own data.

The session reuses a stack that is already up (and leaves it up), or starts one and stops
it at the end. Tests write to their own database and buckets, never to the data lake a
user has loaded with `make demo`.
"""

from __future__ import annotations

import os

import pytest

from tests.support.workers import worker_id

# Shared helpers and fixtures (tests/support), registered once for every folder.
pytest_plugins = [
    "tests.support.workers",
    "tests.support.lake",
    "tests.support.serving",
    "tests.support.browser",
]

# Before anything reads settings: tests get a database and buckets of their own, one set
# per xdist worker (tests/support/workers.py). Everything named from this database or
# these buckets (`<db>_ingest`, `<bucket>-quality`...) is removed at the end.
TEST_DATABASE = "rakuten_lake_test"
_WORKER = worker_id()  # gw0, gw1... under xdist; None in a plain pytest run
TEST_OVERRIDES = {
    "POSTGRES_DB": "_".join(filter(None, [TEST_DATABASE, _WORKER])),
    "S3_BUCKET_IMAGES": "-".join(filter(None, ["test-rakuten-images", _WORKER])),
    "S3_BUCKET_ARTIFACTS": "-".join(filter(None, ["test-rakuten-artifacts", _WORKER])),
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
def stack(request, settings):
    """The running local stack, started by the first worker that needs it unless it
    already was up; checked for traces and stopped (if started here) at the very end
    (tests/support/workers.py)."""
    from tests.support.workers import start_stack

    every_worker = settings.model_copy(update={"postgres_db": TEST_DATABASE})
    return start_stack(request.config, settings, TEST_OVERRIDES, every_worker)


@pytest.fixture()
def db(stack, settings):
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        yield conn


@pytest.fixture()
def s3(stack, settings):
    from rakuten_mlops.storage import s3_client

    return s3_client(settings)
