"""Start, watch and stop local-mode services as plain background processes.

Each started process is recorded in `<stack>/run/<name>.pid` as "pid create_time", so
`down` stops exactly the processes `up` started (a recycled pid never matches) and
`up` restarts only what is not running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from rakuten_mlops.localstack.services import (
    Service,
    drop_privileges,
    local_services,
    state_dir,
    venv_bin,
)
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

    @property
    def state(self) -> str:
        if self.pid is None:
            return "stopped"
        return "healthy" if self.healthy else "unhealthy"


class Supervisor:
    def __init__(self, settings: Settings, services: list[Service] | None = None):
        self.settings = settings
        self.services = services if services is not None else local_services(settings)
        self.root = state_dir(settings)
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"

    # ----------------------------------------------------------------- bookkeeping

    def log_path(self, service: Service) -> Path:
        return self.log_dir / f"{service.name}.log"

    def _pid_file(self, service: Service) -> Path:
        return self.run_dir / f"{service.name}.pid"

    def process(self, service: Service) -> psutil.Process | None:
        """The live process `up` started for this service, or None."""
        try:
            pid, created = self._pid_file(service).read_text().split()
            proc = psutil.Process(int(pid))
            same_process = abs(proc.create_time() - float(created)) < 0.01
            if same_process and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def owned_pids(self) -> set[int]:
        """Every process of the project: the started ones and all their descendants."""
        pids = set()
        for service in self.services:
            if proc := self.process(service):
                pids.add(proc.pid)
                pids.update(child.pid for child in proc.children(recursive=True))
        return pids

    def status(self) -> list[ServiceStatus]:
        result = []
        for service in self.services:
            proc = self.process(service)
            result.append(
                ServiceStatus(
                    name=service.name,
                    pid=proc.pid if proc else None,
                    healthy=bool(proc) and service.healthy(),
                    url=service.url,
                    log=self.log_path(service),
                )
            )
        return result

    # ----------------------------------------------------------------- up

    def up(self, report=print) -> list[str]:
        """Start every service that is not running; wait until all are healthy.

        Returns the names of the services it started.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        by_name = {service.name: service for service in self.services}
        started: list[str] = []
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
        return started

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
            proc = subprocess.Popen(
                service.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root.parent,
                **drop_privileges(service.user),
                start_new_session=True,  # its own process group: `down` stops all of it
            )
        created = psutil.Process(proc.pid).create_time()
        self._pid_file(service).write_text(f"{proc.pid} {created}")

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
        """Stop, in reverse start order, exactly the processes `up` started."""
        stopped = []
        for service in reversed(self.services):
            proc = self.process(service)
            if proc:
                report(f"stopping {service.name} (pid {proc.pid})")
                stop_process_tree(proc, getattr(signal, service.stop_signal))
                stopped.append(service.name)
            self._pid_file(service).unlink(missing_ok=True)
        return stopped


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
