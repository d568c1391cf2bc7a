"""The watchdog `stack up` leaves running: it restarts a local service that died.

Why a watchdog in our own supervisor rather than supervisord: the supervisor already
owns each service's whole life (the `prepare` steps before every start, running
PostgreSQL as the `postgres` account, `after` dependencies, pid files that let `down`
stop exactly what `up` started, the port checks). supervisord would replace all of that
with a generated config plus wrapper scripts for the prepare steps, has no notion of
"start only once PostgreSQL answers", and would make `up`/`down` talk to a second
daemon. The watchdog is one small loop over the same `Supervisor.restart`, so a
restart is exactly an `up` of one service, and it shares `up`/`down`'s lock file.

What it does, every TICK_SECONDS:
- a service whose process is gone (and that was not stopped on purpose with
  `stack stop NAME`) is restarted after a back-off: 1 s after its first death, then
  2, 4, ... up to 60 s between attempts; a service that stays up STABLE_SECONDS starts
  again at 1 s;
- it waits for the service's `after` dependencies to be healthy first (no point
  restarting the Airflow scheduler while PostgreSQL is down; that costs no back-off);
- each restart is counted in `run/restarts.json`, which `stack status` shows.

`stack down` stops the watchdog before any service, and every restart happens under the
supervisor's lock, so the two never fight.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

from rakuten_mlops.localstack.service import Service
from rakuten_mlops.localstack.supervisor import StackError, Supervisor

TICK_SECONDS = 1.0
FIRST_DELAY = 1.0
MAX_DELAY = 60.0
STABLE_SECONDS = 60.0


@dataclass
class Backoff:
    """When a dead service may next be restarted."""

    delay: float = FIRST_DELAY
    next_try: float | None = None  # set when its death is noticed
    restarted_at: float | None = None

    def noticed_death(self, now: float) -> None:
        if self.next_try is None:
            self.next_try = now + self.delay

    def due(self, now: float) -> bool:
        return self.next_try is not None and now >= self.next_try

    def attempted(self, now: float, started: bool) -> None:
        self.restarted_at = now
        self.delay = min(self.delay * 2, MAX_DELAY)
        # A start that failed outright is retried after the longer delay; a started
        # process is watched again and waits that delay only if it dies.
        self.next_try = None if started else now + self.delay

    def running(self, now: float) -> None:
        if self.restarted_at is not None and now - self.restarted_at >= STABLE_SECONDS:
            self.delay, self.restarted_at = FIRST_DELAY, None
        self.next_try = None


class Watchdog:
    def __init__(self, supervisor: Supervisor, log=print):
        self.supervisor = supervisor
        self.log = log
        self.backoff = {service.name: Backoff() for service in supervisor.services}
        self.stopping = threading.Event()

    def run(self) -> None:
        """Watch until SIGTERM/SIGINT (`stack down`)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self.log(f"watching {len(self.supervisor.services)} services")
        while not self.stopping.is_set():
            self.tick(time.monotonic())
            self.stopping.wait(TICK_SECONDS)
        self.log("stopped")

    def tick(self, now: float) -> None:
        for service in self.supervisor.services:
            if self.stopping.is_set():
                return
            self.check(service, now)

    def check(self, service: Service, now: float) -> None:
        backoff = self.backoff[service.name]
        if self.supervisor.process(service):
            backoff.running(now)
            return
        if self.supervisor.held(service):
            return
        if backoff.next_try is None:
            backoff.noticed_death(now)
            self.log(f"{service.name} is not running; restart in {backoff.delay:.0f}s")
            return
        if not backoff.due(now) or not self.dependencies_healthy(service):
            return
        with self.supervisor.locked(wait=False) as got_lock:
            # `up`, `down` or `stack stop` is at work: look again next tick.
            if not got_lock or self.supervisor.process(service) or self.supervisor.held(service):
                return
            backoff.attempted(now, self.restart(service))

    def dependencies_healthy(self, service: Service) -> bool:
        for name in service.after:
            dependency = self.supervisor.service(name)
            if not (self.supervisor.process(dependency) and dependency.healthy()):
                return False
        return True

    def restart(self, service: Service) -> bool:
        try:
            self.supervisor.restart(service, report=self.log)
        except StackError as exc:
            self.log(f"{service.name}: restart failed: {exc}")
            return False
        count = self.supervisor.count_restart(service)
        self.log(f"restarted {service.name} (restart #{count})")
        return True


def timestamped(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)
