"""What a local-mode service is (`Service`) and the small helpers every service uses.

`services.py` and `postgres.py` describe the services; `supervisor.py` starts, watches
and stops them.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rakuten_mlops.settings import Settings

HTTP_TIMEOUT = 3.0


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    url: str
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    # Names of services that must be healthy before this one starts.
    after: tuple[str, ...] = ()
    # Runs before each start (idempotent: initdb, migrations, config files).
    prepare: Callable[[], None] | None = None
    # Runs once the service is healthy (idempotent: roles, databases, buckets).
    bootstrap: Callable[[], None] | None = None
    # Runs before `up` starts or checks anything: raises on settings it cannot do without.
    preflight: Callable[[], None] | None = None
    start_timeout: float = 120.0
    stop_signal: str = "SIGTERM"
    # Run as this system user (PostgreSQL refuses root).
    user: str | None = None
    ports: tuple[int, ...] = ()


def venv_bin() -> Path:
    return Path(sys.executable).parent


def state_dir(settings: Settings) -> Path:
    return settings.path(settings.stack_dir)


def http_ok(url: str, **kwargs) -> bool:
    try:
        return httpx.get(url, timeout=HTTP_TIMEOUT, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def drop_privileges(user: str | None) -> dict:
    """Popen arguments that run a child as `user` with only that user's own group.

    `user=` alone keeps root's group, whose permission bits then deny the child access
    to root-owned folders it could traverse as "other".
    """
    if not user:
        return {}
    import pwd

    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def replace_file(path: Path, text: str, owner: str | None) -> None:
    """Write a 0600 file atomically (a reader sees the old or the new content)."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    if owner:
        shutil.chown(temporary, owner)
    os.replace(temporary, path)
