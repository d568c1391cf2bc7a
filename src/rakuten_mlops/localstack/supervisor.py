"""Start, watch and stop local-mode services as plain background processes.

Each started process is recorded in `<stack>/run/<name>.pid` as "pid create_time", so
`down` stops exactly the processes `up` started (a recycled pid never matches) and
`up` restarts only what is not running. `up` also leaves a watchdog (`watchdog.py`)
that restarts a service that dies; every start or stop, by `up`, `down` or the
watchdog, happens under one lock file (`run/supervisor.lock`), so they never race.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from rakuten_mlops.localstack.service import Service, drop_privileges, state_dir, venv_bin
from rakuten_mlops.localstack.services import local_services
from rakuten_mlops.settings import Settings

POLL_SECONDS = 0.5
STOP_TIMEOUT = 30.0


class StackError(RuntimeError):
    """A service failed to start; the message names it and its log."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    healthy: bool
    url: str
    log: Path
    # Times the watchdog restarted it since `up` (reset by `down`).
    restarts: int = 0
    # The watchdog leaves it alone (`stack stop NAME`) until `stack start NAME` or `up`.
    held: bool = False

    @property
    def state(self) -> str:
        if self.pid is None:
            return "stopped"
        return "healthy" if self.healthy else "unhealthy"


class Supervisor:
    def __init__(self, settings: Settings, services: list[Service] | None = None):
        self.settings = settings
        # The watchdog is a separate process that rebuilds the services from the
        # settings: only the full local stack can have one.
        self.watchable = services is None
        self.services = services if services is not None else local_services(settings)
        self.root = state_dir(settings)
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"
        self.watchdog_pid_file = self.run_dir / "watchdog.pid"
        self.restarts_file = self.run_dir / "restarts.json"
        self._lock_depth = 0
        self._lock_handle = None

    # ----------------------------------------------------------------- bookkeeping

    def log_path(self, service: Service) -> Path:
        return self.log_dir / f"{service.name}.log"

    def _pid_file(self, service: Service) -> Path:
        return self.run_dir / f"{service.name}.pid"

    def process(self, service: Service) -> psutil.Process | None:
        """The live process `up` started for this service, or None."""
        return live_process(self._pid_file(service))

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        names = ", ".join(service.name for service in self.services)
        raise StackError(f"no service named {name!r} (services: {names})")

    # ----------------------------------------------------------------- lock, holds, counts

    @contextlib.contextmanager
    def locked(self, wait: bool = True) -> Iterator[bool]:
        """Hold the stack's lock (re-entrant in this process); yields False when `wait`
        is off and another process holds it."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield True
            finally:
                self._lock_depth -= 1
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.run_dir / "supervisor.lock", "a")  # noqa: SIM115 - held below
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            self._lock_depth = 1
            try:
                yield True
            finally:
                self._lock_depth = 0
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    def _hold_file(self, service: Service) -> Path:
        return self.run_dir / f"{service.name}.held"

    def held(self, service: Service) -> bool:
        return self._hold_file(service).exists()

    def hold(self, name: str) -> None:
        """The watchdog leaves this service alone (stopped on purpose) until `release`."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._hold_file(self.service(name)).touch()

    def release(self, name: str) -> None:
        self._hold_file(self.service(name)).unlink(missing_ok=True)

    def restart_counts(self) -> dict[str, int]:
        try:
            return json.loads(self.restarts_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def count_restart(self, service: Service) -> int:
        counts = self.restart_counts()
        counts[service.name] = counts.get(service.name, 0) + 1
        temporary = self.restarts_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(counts))
        os.replace(temporary, self.restarts_file)  # a reader never sees half a file
        return counts[service.name]

    def owned_pids(self) -> set[int]:
        """Every process of the project: the started ones and all their descendants."""
        pids = set()
        leaders = [self.process(service) for service in self.services]
        for proc in [*leaders, self.watchdog_process()]:
            if proc:
                pids.add(proc.pid)
                pids.update(child.pid for child in proc.children(recursive=True))
        return pids

    def status(self) -> list[ServiceStatus]:
        result = []
        restarts = self.restart_counts()
        for service in self.services:
            proc = self.process(service)
            result.append(
                ServiceStatus(
                    name=service.name,
                    pid=proc.pid if proc else None,
                    healthy=bool(proc) and service.healthy(),
                    url=service.url,
                    log=self.log_path(service),
                    restarts=restarts.get(service.name, 0),
                    held=self.held(service),
                )
            )
        return result

    # ----------------------------------------------------------------- up

    def up(self, report=print, watch: bool = True) -> list[str]:
        """Start every service that is not running; wait until all are healthy; leave a
        watchdog running (`watch`, full stack only).

        Returns the names of the services it started.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        by_name = {service.name: service for service in self.services}
        started: list[str] = []
        for service in self.services:
            if service.preflight:
                self._run_step(service, service.preflight, "check")
        with self.locked():
            for service in self.services:
                # `up` means every service: one stopped on purpose is watched again.
                self._hold_file(service).unlink(missing_ok=True)
            for service in self.services:
                for dependency in service.after:
                    self._wait_healthy(by_name[dependency], report)
                if not self.process(service):
                    self._start(service, report)
                    started.append(service.name)
                # Later services need what bootstrap creates (roles, databases, buckets).
                if service.bootstrap:
                    self._wait_healthy(service, report)
                    self._run_step(service, service.bootstrap, "bootstrap")
            for service in self.services:
                self._wait_healthy(service, report)
            if watch and self.watchable:
                self.start_watchdog(report)
        return started

    def start_service(self, name: str, report=print) -> bool:
        """Watch the service again and start it now if it is not running; True if started."""
        service = self.service(name)
        with self.locked():
            self.release(name)
            if self.process(service):
                return False
            for dependency in service.after:
                self._wait_healthy(self.service(dependency), report)
            self.restart(service, report)
            self._wait_healthy(service, report)
            return True

    def stop_service(self, name: str, report=print) -> bool:
        """Stop one service and keep the watchdog off it until `start_service` or `up`."""
        service = self.service(name)
        with self.locked():
            self.hold(name)
            proc = self.process(service)
            if proc:
                report(f"stopping {service.name} (pid {proc.pid})")
                stop_process_tree(proc, getattr(signal, service.stop_signal))
            return proc is not None

    def restart(self, service: Service, report=print) -> None:
        """Start a service that died: what its last run left behind goes first (children
        still holding its port), then the same prepare steps and start as `up`."""
        reap_orphans(self._pid_file(service))
        self._start(service, report)

    # ----------------------------------------------------------------- watchdog

    def watchdog_process(self) -> psutil.Process | None:
        return live_process(self.watchdog_pid_file)

    def start_watchdog(self, report=print) -> None:
        if self.watchdog_process():
            return
        log = self.log_dir / "watchdog.log"
        report(f"starting the watchdog (log: {log})")
        with open(log, "ab") as handle:
            pid = spawn_detached(
                [sys.executable, "-m", "rakuten_mlops", "stack", "watch"],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                cwd=self.root.parent,
                start_new_session=True,  # outlives `up`, like the services
            )
        write_pid_file(self.watchdog_pid_file, pid)

    def stop_watchdog(self, report=print) -> bool:
        proc = self.watchdog_process()
        if proc:
            report(f"stopping the watchdog (pid {proc.pid})")
            # It finishes the restart it may be doing (under the lock), then exits. Only
            # the watchdog itself: the services it restarted are not its children (see
            # `spawn_detached`), and they keep running until `down` stops them in order.
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except psutil.TimeoutExpired:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
                psutil.wait_procs([proc], timeout=STOP_TIMEOUT)
        self.watchdog_pid_file.unlink(missing_ok=True)
        return proc is not None

    def _start(self, service: Service, report) -> None:
        for port in service.ports:
            if not port_is_free(self.settings.bind_host, port):
                raise StackError(
                    f"{service.name}: port {self.settings.bind_host}:{port} is already in use "
                    "by a process this project did not start; stop it or change the port in .env"
                )
        if service.prepare:
            self._run_step(service, service.prepare, "prepare")
        report(f"starting {service.name} (log: {self.log_path(service)})")
        env = {**os.environ, **service.env}
        env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
        with open(self.log_path(service), "ab") as log:
            log.write(
                f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service.name}\n".encode()
            )
            log.flush()
            try:
                pid = spawn_detached(
                    service.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.root.parent,
                    **drop_privileges(service.user),
                    start_new_session=True,  # its own process group: `down` stops all of it
                )
            except OSError as exc:
                raise StackError(f"{service.name} could not be started: {exc}") from exc
        write_pid_file(self._pid_file(service), pid)

    def _run_step(self, service: Service, step, what: str) -> None:
        try:
            step()
        except Exception as exc:
            raise StackError(
                f"{service.name}: {what} failed: {exc} (log: {self.log_path(service)})"
            ) from exc

    def _wait_healthy(self, service: Service, report) -> None:
        deadline = time.monotonic() + service.start_timeout
        while time.monotonic() < deadline:
            if not self.process(service):
                raise StackError(
                    f"{service.name} is not running: it exited or was never started. "
                    f"Last lines of {self.log_path(service)}:\n{self._tail(service)}"
                )
            if service.healthy():
                return
            time.sleep(POLL_SECONDS)
        raise StackError(
            f"{service.name} did not become healthy within {service.start_timeout:.0f}s. "
            f"Last lines of {self.log_path(service)}:\n{self._tail(service)}"
        )

    def _tail(self, service: Service, lines: int = 15) -> str:
        try:
            return "\n".join(
                self.log_path(service).read_text(errors="replace").splitlines()[-lines:]
            )
        except FileNotFoundError:
            return "(no log)"

    # ----------------------------------------------------------------- down

    def down(self, report=print) -> list[str]:
        """Stop, in reverse start order, exactly the processes `up` started.

        The watchdog goes first, so nothing is restarted behind `down`'s back.
        """
        self.stop_watchdog(report)
        stopped = []
        with self.locked():
            for service in reversed(self.services):
                proc = self.process(service)
                if proc:
                    report(f"stopping {service.name} (pid {proc.pid})")
                    stop_process_tree(proc, getattr(signal, service.stop_signal))
                    stopped.append(service.name)
                else:
                    reap_orphans(self._pid_file(service))
                self._pid_file(service).unlink(missing_ok=True)
                self._hold_file(service).unlink(missing_ok=True)
            self.restarts_file.unlink(missing_ok=True)
        return stopped


def spawn_detached(command: list[str], **popen_kwargs) -> int:
    """Start `command` as a grandchild whose parent exits at once; returns its pid.

    A service must not stay the child of whoever ran `up` or `restart` (the pytest
    session, the watchdog): killed, it would stay a zombie until that caller waits for
    it, and a zombie keeps its pid alive. PostgreSQL then refuses to start again, its
    lock file naming a postmaster that still "exists". Orphaned, it is reaped by init.
    """
    read_end, write_end = os.pipe()
    intermediate = os.fork()
    if intermediate == 0:
        status = 0
        try:
            os.close(read_end)
            proc = subprocess.Popen(command, **popen_kwargs)
            os.write(write_end, f"{proc.pid}".encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent through the pipe
            os.write(write_end, f"error {exc}".encode()[:4000])
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(intermediate, 0)
    if not answer.isdigit():
        raise OSError(answer.removeprefix("error ") or "the launcher exited without a pid")
    return int(answer)


def write_pid_file(path: Path, pid: int) -> None:
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0  # exited already: no live process will ever match this record
    path.write_text(f"{pid} {created}")


def live_process(pid_file: Path) -> psutil.Process | None:
    """The live process a pid file names ("pid create_time"), or None (a recycled pid
    has another start time)."""
    try:
        pid, created = pid_file.read_text().split()
        proc = psutil.Process(int(pid))
        same_process = abs(proc.create_time() - float(created)) < 0.01
        if same_process and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (FileNotFoundError, ValueError, psutil.Error):
        pass
    return None


def reap_orphans(pid_file: Path) -> None:
    """Stop what is left of a dead leader's process group (e.g. workers still holding
    its port after a `kill -9` of the leader).

    Each service leads its own group, whose id is the leader's pid. While no process has
    that pid, a process in that group can only be one the leader left behind: the
    kernel does not reuse a pid as long as a group with that id exists.
    """
    try:
        group = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    if psutil.pid_exists(group):
        return  # the leader itself, or a new process with its pid: not ours to touch
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == group:
                members.append(proc)
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(members, timeout=10)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_process_tree(proc: psutil.Process, sig: signal.Signals) -> None:
    """Signal the leader; then make sure it and every descendant are gone."""
    family = [proc, *proc.children(recursive=True)]
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        return
    _, alive = psutil.wait_procs([proc], timeout=STOP_TIMEOUT)
    # The leader is gone: anything of its process group or tree left behind goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=5)
    for leftover in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
