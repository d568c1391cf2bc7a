"""Issue 12, items 1, 2 (argv part) and 6: local mode as an attacker and a fault see it.

- Item 1 (PostgreSQL superuser open to any local user): an unprivileged account
  (`nobody`) is refused on the socket and over TCP without a password; the superuser
  itself needs its password on the socket; no folder on the way is opened for others;
  a fresh cluster and one created with `trust` by an older version both end up asking
  for passwords, and initdb's password file does not survive.
- Secrets never on a command line: no `.env` secret appears in any stack process's
  `/proc/<pid>/cmdline`.
- Item 6 (nothing restarts a dead service): a `kill -9` of a service is followed by its
  restart and a restart count in `stack status`; PostgreSQL really stopped for 10 s
  leaves every service running or restarted, and healthy, afterwards.

The tests that stop parts of the running stack wait (bounded) until it is healthy
again before they end. Loopback only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest
from dotenv import dotenv_values

from rakuten_mlops.localstack.postgres import (
    PG_HBA,
    grant_traverse,
    postgres_bin,
    postgres_data_dir,
    postgres_service,
    postgres_socket_dir,
    postgres_superuser_kwargs,
)
from rakuten_mlops.localstack.service import state_dir
from rakuten_mlops.localstack.supervisor import Supervisor
from rakuten_mlops.settings import env_file, settings_environment

pytestmark = pytest.mark.stack

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"),
    reason="acting as another local account (runuser) needs root",
)
RECOVERY_TIMEOUT = 120.0


def quiet(line: str) -> None:
    print(f"[faults] {line}")


def psql(*args: str, user: str | None = None, password: str | None = None):
    """`psql` without any stored or prompted password, as `user` (default: us)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    prefix = ["runuser", "-u", user, "--"] if user else []
    command = [*prefix, postgres_bin("psql"), "-w", "-X", "-At", "-d", "postgres", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=20)


def wait_until(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def all_healthy(supervisor: Supervisor) -> bool:
    return all(status.state == "healthy" for status in supervisor.status())


HEARTBEATS = {
    "airflow-scheduler": ("scheduler", "latest_scheduler_heartbeat"),
    "airflow-dag-processor": ("dag_processor", "latest_dag_processor_heartbeat"),
    "airflow-triggerer": ("triggerer", "latest_triggerer_heartbeat"),
}


def heartbeats_since(settings, since: datetime, names) -> bool:
    """Airflow calls a component healthy for a while after its last heartbeat: a new
    heartbeat is what shows that the restarted process works."""
    url = f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health"
    try:
        health = httpx.get(url, timeout=5).json()
        beats = [health[HEARTBEATS[name][0]][HEARTBEATS[name][1]] for name in names]
        return all(beat and datetime.fromisoformat(beat) > since for beat in beats)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return False


def status_restarts() -> dict[str, tuple[str, int]]:
    """What `stack status` (the CLI behind `make status`) prints: state and restarts."""
    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "stack", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = re.findall(r"^(\S+)\s+(healthy|unhealthy|stopped)\s+restarts (\d+)", result.stdout, re.M)
    return {name: (state, int(count)) for name, state, count in rows}


# ---------------------------------------------------------------- item 1: the socket


@needs_root
def test_an_unprivileged_user_cannot_use_the_socket(stack, settings):
    socket_dir = str(postgres_socket_dir(settings))
    for role in ("postgres", settings.postgres_user):
        result = psql(
            "-h",
            socket_dir,
            "-p",
            str(settings.postgres_port),
            "-U",
            role,
            "-c",
            "select current_user",
            user="nobody",
        )
        assert result.returncode != 0 and result.stdout == "", result
        assert "Permission denied" in result.stderr, result.stderr
    listing = subprocess.run(
        ["runuser", "-u", "nobody", "--", "ls", socket_dir],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert listing.returncode != 0, "nobody must not even list the socket folder"


@needs_root
def test_an_unprivileged_user_needs_a_password_over_tcp(stack, settings):
    for role in ("postgres", settings.postgres_user):
        result = psql(
            "-h",
            "127.0.0.1",
            "-p",
            str(settings.postgres_port),
            "-U",
            role,
            "-c",
            "select current_user",
            user="nobody",
        )
        assert result.returncode != 0 and result.stdout == "", result
        assert "no password supplied" in result.stderr, result.stderr


def test_the_superuser_needs_its_password_on_the_socket(stack, settings):
    # We (root, or the account running the stack) can open the socket: what refuses
    # is the authentication, not the folder.
    target = (
        "-h",
        str(postgres_socket_dir(settings)),
        "-p",
        str(settings.postgres_port),
        "-U",
        "postgres",
        "-c",
        "select current_user",
    )
    without = psql(*target)
    assert without.returncode != 0 and "no password supplied" in without.stderr, without
    wrong = psql(*target, password="not-the-password")
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr, wrong
    right = psql(*target, password=postgres_superuser_kwargs(settings)["password"])
    assert right.returncode == 0 and right.stdout.strip() == "postgres", right


def test_every_connection_rule_asks_for_a_password(stack, settings):
    with psycopg.connect(**postgres_superuser_kwargs(settings)) as conn:
        rules = conn.execute("SELECT type, auth_method, error FROM pg_hba_file_rules").fetchall()
    assert {rule[0] for rule in rules} >= {"local", "host"}
    assert {(rule[1], rule[2]) for rule in rules} == {("scram-sha-256", None)}, rules


def test_no_folder_of_the_stack_is_open_to_others(stack, settings):
    root = state_dir(settings)
    socket_dir = postgres_socket_dir(settings)
    for path in (
        root,
        socket_dir.parent,
        socket_dir,
        postgres_data_dir(settings),
        *socket_dir.glob(".s.PGSQL.*"),
    ):
        assert path.stat().st_mode & 0o007 == 0, f"{path} is open to others"
    if os.geteuid() == 0 and shutil.which("getfacl"):
        acl = subprocess.run(
            ["getfacl", "-p", "--omit-header", str(root)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        entries = [line.split("\t")[0] for line in acl.splitlines()]
        named = [entry for entry in entries if re.match(r"(user|group):\w", entry)]
        assert named == ["user:postgres:--x"], acl


# ---------------------------------------------------------------- item 1: fresh and old clusters


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def private_postgres(settings, tmp_path_factory):
    """A PostgreSQL-only stack in a private folder under /tmp (closed to others)."""
    private = settings.model_copy(
        update={"stack_dir": tmp_path_factory.mktemp("pg") / "stack", "postgres_port": free_port()}
    )
    supervisor = Supervisor(private, [postgres_service(private)])
    yield supervisor
    supervisor.down(report=quiet)


def others_bits(path: Path) -> dict[Path, int]:
    return {folder: folder.stat().st_mode & 0o007 for folder in [path, *path.parents]}


def assert_passwords_required(settings) -> None:
    socket_dir = str(postgres_socket_dir(settings))
    target = (
        "-h",
        socket_dir,
        "-p",
        str(settings.postgres_port),
        "-U",
        "postgres",
        "-c",
        "select current_user",
    )
    assert "no password supplied" in psql(*target).stderr
    with psycopg.connect(**postgres_superuser_kwargs(settings), connect_timeout=5) as conn:
        assert conn.execute("select current_user").fetchone() == ("postgres",)
    assert postgres_data_dir(settings).joinpath("pg_hba.conf").read_text() == PG_HBA


def test_a_new_cluster_asks_for_passwords_and_keeps_no_password_file(private_postgres):
    settings = private_postgres.settings
    parents = others_bits(state_dir(settings).parent)
    assert private_postgres.up(report=quiet) == ["postgres"]
    assert_passwords_required(settings)
    leftovers = [path for path in state_dir(settings).rglob("*") if "password" in path.name]
    assert leftovers == [], "initdb's password file must be removed"
    assert others_bits(state_dir(settings).parent) == parents, "no folder opened for others"


@needs_root
def test_a_trust_cluster_of_an_older_version_is_migrated(private_postgres):
    """What `stack up` did before issue 12: initdb with trust on the socket."""
    settings = private_postgres.settings
    data_dir = postgres_data_dir(settings)
    data_dir.parent.mkdir(parents=True)
    shutil.chown(data_dir.parent, "postgres")
    grant_traverse("postgres", state_dir(settings))
    old = subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            postgres_bin("initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert old.returncode == 0, old.stderr
    assert "trust" in (data_dir / "pg_hba.conf").read_text()
    assert private_postgres.up(report=quiet) == ["postgres"]
    assert_passwords_required(settings)


def test_init_env_gives_an_older_env_file_a_superuser_password(tmp_path):
    """A .env written before issue 12 lacks POSTGRES_SUPERUSER_PASSWORD: `make setup`
    (init-env) adds a fresh one, and `stack up` needs it."""
    old = tmp_path / ".env"
    kept = [
        line
        for line in env_file().read_text().splitlines()
        if not line.startswith("POSTGRES_SUPERUSER_PASSWORD=")
    ]
    old.write_text("\n".join(kept) + "\n")
    old.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "init-env"],
        env={**os.environ, "RAKUTEN_ENV_FILE": str(old)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    added = dotenv_values(old)["POSTGRES_SUPERUSER_PASSWORD"]
    assert added != "change-me" and len(added) >= 24
    assert old.stat().st_mode & 0o077 == 0


# ---------------------------------------------------------------- secrets never on a command line


def test_no_secret_on_any_command_line(stack, settings):
    _, secret_settings = settings_environment(
        {key: value for key, value in dotenv_values(env_file()).items() if value}
    )
    values = {value for value in secret_settings.values() if len(value) >= 8}
    values |= {quote(value, safe="") for value in values}
    assert {"POSTGRES_PASSWORD", "POSTGRES_SUPERUSER_PASSWORD"} <= set(secret_settings)
    pids = stack.owned_pids()
    assert len(pids) >= len(stack.services) + 1, "every service and the watchdog"
    exposed = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        exposed += [f"pid {pid}: {argv[:80]}" for value in values if value in argv]
    assert exposed == []


# ---------------------------------------------------------------- item 6: restarts


@pytest.mark.timeout(150)
# postgres: its orphaned backends must go before a new postmaster can start.
@pytest.mark.exclusive
@pytest.mark.parametrize("name", ["prometheus", "airflow-triggerer", "postgres"])
def test_a_killed_service_is_restarted_and_counted(stack, name):
    assert stack.watchdog_process(), "stack up leaves a watchdog"
    service = stack.service(name)
    before = status_restarts()[name][1]
    victim = stack.process(service)
    killed_at, killed_clock = time.monotonic(), datetime.now(UTC)
    victim.send_signal(signal.SIGKILL)
    wait_until(
        lambda: (proc := stack.process(service)) is not None and proc.pid != victim.pid,
        RECOVERY_TIMEOUT,
        f"{name} restarted",
    )
    wait_until(service.healthy, RECOVERY_TIMEOUT, f"{name} healthy")
    if name in HEARTBEATS:
        wait_until(
            lambda: heartbeats_since(stack.settings, killed_clock, [name]),
            RECOVERY_TIMEOUT,
            f"a heartbeat of the new {name}",
        )
    quiet(f"{name} restarted and healthy {time.monotonic() - killed_at:.1f}s after kill -9")
    state, restarts = status_restarts()[name]
    assert state == "healthy" and restarts >= max(1, before + 1)
    wait_until(lambda: all_healthy(stack), RECOVERY_TIMEOUT, "every service healthy")


@pytest.mark.exclusive
@pytest.mark.timeout(200)
def test_a_10s_postgres_outage_leaves_every_service_running(stack, settings):
    assert stack.watchdog_process(), "stack up leaves a watchdog"
    wait_until(lambda: all_healthy(stack), RECOVERY_TIMEOUT, "healthy before the outage")
    before = {status.name: status.pid for status in stack.status()}
    counts = stack.restart_counts()
    # A real stop (fast shutdown of the postmaster), held so the watchdog waits 10 s.
    assert stack.stop_service("postgres", report=quiet)
    try:
        assert stack.process(stack.service("postgres")) is None
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(**postgres_superuser_kwargs(settings), connect_timeout=3)
        time.sleep(10)
        died = [status.name for status in stack.status() if status.pid is None]
        quiet(f"not running after 10 s without PostgreSQL: {died}")
    finally:
        stack.release("postgres")  # the watchdog brings it back
        released = datetime.now(UTC)
    took = wait_until(
        lambda: all_healthy(stack) and heartbeats_since(settings, released, HEARTBEATS),
        RECOVERY_TIMEOUT,
        "every service healthy, each Airflow component with a new heartbeat",
    )
    after = {status.name: status.pid for status in stack.status()}
    restarted = sorted(name for name in after if after[name] != before[name])
    quiet(f"all healthy {took:.1f}s after PostgreSQL came back; restarted: {restarted}")
    assert all(after.values())
    now = stack.restart_counts()
    assert now.get("postgres", 0) == counts.get("postgres", 0) + 1, "the watchdog restarted it"
    for name in restarted:
        assert now.get(name, 0) > counts.get(name, 0), f"{name}: new pid, no counted restart"


def test_back_off_doubles_to_a_minute_and_resets_once_stable():
    from rakuten_mlops.localstack.watchdog import MAX_DELAY, STABLE_SECONDS, Backoff

    backoff, now, waits = Backoff(), 0.0, []
    for _ in range(9):  # dies right after every restart
        backoff.noticed_death(now)
        waits.append(backoff.next_try - now)
        now = backoff.next_try
        assert backoff.due(now)
        backoff.attempted(now, started=True)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60] and MAX_DELAY == 60
    backoff.running(now + STABLE_SECONDS)  # up for a minute: healthy again
    backoff.noticed_death(now + STABLE_SECONDS + 5)
    assert backoff.next_try - (now + STABLE_SECONDS + 5) == 1


@pytest.mark.exclusive
def test_stopping_the_watchdog_leaves_the_services_running(stack):
    """`down` stops the watchdog first; the services it restarted are its children and
    must not go down with it."""
    before = {status.name: status.pid for status in stack.status()}
    assert stack.stop_watchdog(report=quiet)
    try:
        time.sleep(2)
        assert {status.name: status.pid for status in stack.status()} == before
    finally:
        stack.start_watchdog(report=quiet)
    assert stack.watchdog_process()
