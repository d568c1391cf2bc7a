"""The container engine of local mode: podman's Docker-compatible API as a stack service.

Where a Docker engine answers (DOCKER_HOST, or /var/run/docker.sock), containers run
there and local mode starts nothing. Otherwise `stack up` runs `podman system service`
on a socket under `.stack/podman/` (a 0700 folder: only this user may drive the engine).
Podman's images, containers and run state live in that folder too, so that the project,
its tests and other checkouts never share system-wide podman state by accident; its
engine configuration (runtime, limits) is the project's `config/containers/containers.conf`,
passed through CONTAINERS_CONF instead of written to /etc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from rakuten_mlops.localstack.service import Service, state_dir
from rakuten_mlops.settings import Settings, project_root

SYSTEM_DOCKER_SOCKET = Path("/var/run/docker.sock")


def podman_dir(settings: Settings) -> Path:
    return state_dir(settings) / "podman"


def podman_socket(settings: Settings) -> Path:
    return podman_dir(settings) / "docker-api.sock"


def engine_config() -> Path:
    return project_root() / "config" / "containers" / "containers.conf"


def podman_env(settings: Settings) -> dict[str, str]:
    """The engine's configuration, and its temporary folder: buildah keeps the builds'
    cache mounts (uv's download cache) under TMPDIR, /var/tmp otherwise."""
    return {"CONTAINERS_CONF": str(engine_config()), "TMPDIR": str(podman_dir(settings) / "tmp")}


def run_podman(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`podman` on local mode's storage, its output captured."""
    return subprocess.run(
        [*podman_command(settings), *args],
        env={**os.environ, **podman_env(settings)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def podman_command(settings: Settings) -> list[str]:
    """`podman` with local mode's own storage, run state and temporary folder."""
    folder = podman_dir(settings)
    return [
        shutil.which("podman") or "podman",
        "--root",
        str(folder / "storage"),
        "--runroot",
        str(folder / "run"),
        "--tmpdir",
        str(folder / "tmp"),
    ]


def prepare_podman_dir(settings: Settings) -> None:
    folder = podman_dir(settings)
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)


def docker_engine_elsewhere(settings: Settings) -> bool:
    """A Docker engine this machine already has: then local mode runs no podman."""
    if settings.docker_host:
        return True
    return SYSTEM_DOCKER_SOCKET.is_socket()


def docker_url(settings: Settings) -> str:
    """Where the ML containers run: DOCKER_HOST, else this machine's Docker engine, else
    local mode's podman socket (which exists only while the stack runs)."""
    if settings.docker_host:
        return settings.docker_host
    if SYSTEM_DOCKER_SOCKET.is_socket():
        return f"unix://{SYSTEM_DOCKER_SOCKET}"
    return f"unix://{podman_socket(settings)}"


def podman_service(settings: Settings) -> Service | None:
    """`podman system service` on the socket under .stack/podman, or None (see module doc)."""
    if docker_engine_elsewhere(settings) or not shutil.which("podman"):
        return None
    socket = podman_socket(settings)

    def prepare() -> None:
        prepare_podman_dir(settings)
        socket.unlink(missing_ok=True)  # left by a killed service: podman refuses to bind

    return Service(
        name="podman",
        # --time=0: the API never exits when idle (the stack supervisor watches it).
        command=[*podman_command(settings), "system", "service", "--time=0", f"unix://{socket}"],
        env=podman_env(settings),
        url=f"unix://{socket} (Docker-compatible API: DOCKER_HOST for the docker SDK)",
        healthy=lambda: socket_answers(socket),
        prepare=prepare,
        start_timeout=30,
    )


def socket_answers(socket: Path) -> bool:
    """The Docker API's /_ping on a unix socket answers OK."""
    if not socket.is_socket():
        return False
    try:
        transport = httpx.HTTPTransport(uds=str(socket))
        with httpx.Client(transport=transport, timeout=3) as client:
            return client.get("http://podman/_ping").text == "OK"
    except httpx.HTTPError:
        return False


# The python:3.11-slim stand-in scripts/make-base-image.sh makes when no registry answers.
LOCAL_BASE_IMAGE = "localhost/python:3.11-slim"


def build_command(settings: Settings, tag: str, *, no_cache: bool = False) -> list[str]:
    """The engine's build of the Dockerfile's `ml` target as `tag` (--network host: the
    RUN steps reach PyPI through the host's network)."""
    if docker_engine_elsewhere(settings):
        command = ["docker", "build"]
    else:
        command = [*podman_command(settings), "build", "--network", "host"]
        if local_base_exists(settings):
            command += ["--build-arg", f"PYTHON_IMAGE={LOCAL_BASE_IMAGE}"]
    if no_cache:
        command.append("--no-cache")
    return [*command, "--target", "ml", "--tag", tag, str(project_root())]


def local_base_exists(settings: Settings) -> bool:
    return run_podman(settings, "image", "exists", LOCAL_BASE_IMAGE).returncode == 0


def build_ml_image(settings: Settings, tag: str, *, no_cache: bool = False, timeout: float = 1800):
    """Build the ML image; the finished process (its output captured). In local mode's
    storage, the image the tag named before is removed once replaced (each holds a copy
    of the 1 GB environment layer only if its dependencies differ, but its own layers
    would otherwise pile up untagged)."""
    prepare_podman_dir(settings)
    if not docker_engine_elsewhere(settings) and not local_base_exists(settings):
        # Made on first use, not by `make setup`: a machine without a cached root file
        # system pays about a minute, which only container mode needs.
        made = subprocess.run([str(project_root() / "scripts" / "make-base-image.sh")],
                              capture_output=True, text=True, timeout=timeout, check=False)
        if made.returncode != 0:
            return made
    previous = None if docker_engine_elsewhere(settings) else podman_image_id(settings, tag)
    built = subprocess.run(
        build_command(settings, tag, no_cache=no_cache),
        env={**os.environ, **podman_env(settings)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if built.returncode == 0 and previous and previous != podman_image_id(settings, tag):
        run_podman(settings, "rmi", previous)
    return built


def podman_image_id(settings: Settings, tag: str) -> str | None:
    found = run_podman(settings, "image", "inspect", "--format", "{{.Id}}", tag)
    return found.stdout.strip() or None if found.returncode == 0 else None
