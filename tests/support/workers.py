"""One stack, several pytest-xdist workers (`make test` runs `pytest -n 2`).

- Each worker has a database and buckets of its own (tests/conftest.py adds the worker id
  to TEST_OVERRIDES), so a test that counts rows never sees another worker's.
- The stack is started once: the first worker that needs it starts it and takes the
  no-trace snapshot under a file lock; the main process (the xdist controller, or pytest
  itself without `-n`) cleans up and checks at the very end, when every worker is done.
- Tests marked `exclusive` stop or kill the stack's services: they run alone. Every
  other test holds a shared lock from its setup to its teardown, an exclusive one holds
  the lock for itself, and a waiting exclusive test lets no new shared holder in first.
- The DAGs the stack schedules are paused for the session and restored at its end.
- Tests that share an expensive session fixture run on one worker (`GROUPS`); every
  other module is one unit of work, so module fixtures are built once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest import MonkeyPatch

from tests.support.paused_dags import SCHEDULED_DAGS, pause, restore

# Files whose tests share a session fixture too costly to build on two workers.
GROUPS = {
    "tests/ml/test_gate.py": "ml-runs",  # tiny_run, worse_run (tests/ml/conftest.py)
    "tests/ml/test_registry.py": "ml-runs",
    "tests/quality/test_control_room_pages.py": "drift-run",  # tests/quality/conftest.py
    "tests/quality/test_quality_dashboard_queries.py": "drift-run",
    "tests/quality/test_quality_end_to_end.py": "drift-run",
    # Container mode: the session's ML image (a clean-cache build) and its containers, on
    # one worker while the other runs the rest.
    "tests/dags/test_ml_pipeline_docker.py": "docker",
}
GROUP_FOLDERS = {"tests/serving/": "serving"}  # the session's API (tests/serving/conftest.py)

SHARED_KEY = "rakuten_shared_folder"
STATE_FILE = "stack-session.pickle"


def worker_id() -> str | None:
    """`gw0`, `gw1`... in an xdist worker; None in the main process."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def group_of(path: str) -> str:
    if path in GROUPS:
        return GROUPS[path]
    for folder, group in GROUP_FOLDERS.items():
        if path.startswith(folder):
            return group
    return path


# ---------------------------------------------------------------- the shared folder


_FOLDER = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        folder = config.workerinput[SHARED_KEY]
    else:
        folder = tempfile.mkdtemp(prefix="rakuten-tests-")
    config.stash[_FOLDER] = Path(folder)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    node.workerinput[SHARED_KEY] = str(node.config.stash[_FOLDER])


def shared_folder(config: pytest.Config) -> Path:
    return config.stash[_FOLDER]


# ---------------------------------------------------------------- scheduling and locks


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's load-by-scope, with `group_of` as the scope (its own `loadgroup` marks do
    not reach node ids under pytest 9)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid.split("::")[0])

    return GroupScheduling(config, log)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def stack_access(folder: Path, exclusive: bool) -> Iterator[None]:
    """A readers-writer lock over files: `gate` queues a writer ahead of new readers."""
    gate, room = folder / "gate.lock", folder / "room.lock"
    if exclusive:
        with _flock(gate, fcntl.LOCK_EX), _flock(room, fcntl.LOCK_EX):
            yield
    else:
        with _flock(gate, fcntl.LOCK_SH):
            pass
        with _flock(room, fcntl.LOCK_SH):
            yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    exclusive = item.get_closest_marker("exclusive") is not None
    with stack_access(shared_folder(item.config), exclusive):
        return (yield)


# ---------------------------------------------------------------- the stack and no-trace


def start_stack(config: pytest.Config, settings, test_overrides: dict, user_of_tests):
    """The running stack (started here unless it is up), with this worker's database and
    buckets; the first worker also snapshots the user's stack for the no-trace check.

    `user_of_tests`: the settings whose database name is every worker's prefix."""
    from rakuten_mlops.localstack.supervisor import Supervisor
    from tests.support.cleanup import NoTrace

    folder = shared_folder(config)
    # A stack started here leaves DAGs paused (rakuten_mlops.localstack.schedules).
    supervisor = Supervisor(settings.model_copy(update={"stack_schedule_dags": False}))
    with _flock(folder / "stack.lock", fcntl.LOCK_EX):
        state = folder / STATE_FILE
        first = not state.exists()
        was_down = first and all(status.pid is None for status in supervisor.status())
        # Services are the user's, not the tests': they must not inherit the test overrides.
        # `up` on a running stack starts nothing and runs the bootstrap steps, which create
        # this worker's database and buckets (from `settings`).
        with MonkeyPatch.context() as patch:
            for name in test_overrides:
                patch.delenv(name, raising=False)
            supervisor.up(report=lambda line: print(f"[stack] {line}"))
        if first:
            # The user's schedule waits while tests run: a scheduled data_quality run would
            # write to the lake the no-trace check compares, and the scheduler would take
            # the tasks of the tests' `dags test` runs with the user's settings.
            schedules = pause(settings, *SCHEDULED_DAGS)
            state.write_bytes(
                pickle.dumps((NoTrace.start(user_of_tests), was_down, schedules))
            )
    return supervisor


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """In the main process only, after every worker: no trace, then the stack down if the
    tests started it (tests/support/cleanup.py)."""
    if worker_id() is not None:
        return
    folder = shared_folder(session.config)
    state = folder / STATE_FILE
    if not state.exists():
        shutil.rmtree(folder, ignore_errors=True)
        return  # no test needed the stack
    from rakuten_mlops.ml.tracking import configure

    no_trace, was_down, schedules = pickle.loads(state.read_bytes())
    shutil.rmtree(folder, ignore_errors=True)
    configure(no_trace.test_settings, "admin")  # the clean-up deletes MLflow entities
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    report = reporter.write_line if reporter else print
    try:
        no_trace.finish(report=report)
    except AssertionError as error:  # a leak fails `make test`, the difference named
        report(f"[no-trace] FAILED: {error}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        restore(no_trace.test_settings, schedules)
        if was_down and os.environ.get("RAKUTEN_KEEP_STACK") != "1":
            from rakuten_mlops.localstack.supervisor import Supervisor

            Supervisor(no_trace.test_settings).down(report=lambda line: report(f"[stack] {line}"))
