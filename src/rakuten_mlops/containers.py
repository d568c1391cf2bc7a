"""The ML stages as containers of the ML image (`ml_pipeline_docker`).

`StageContainer` is Airflow's DockerOperator with the project's settings: at run time it
resolves the engine (`localstack.podman.docker_url`), the network (`Settings.docker_network`)
and the container's configuration from the worker's environment and `.env`. Plain
settings become the container's environment. Secrets never do: an environment variable
shows in `docker inspect`, so they go into a private file, mounted read-only as the
container's `.env` (RAKUTEN_ENV_FILE) and deleted when the container ends. In local mode
the engine runs on the worker's host: the file (0400, the container user's) is
bind-mounted from `.stack/podman/secrets`. In compose the worker is itself a container,
whose files the Docker host does not have: the file goes into a named volume both mount
(STAGE_ENV_VOLUME, at STAGE_ENV_DIR in the worker), readable by the worker's
group only, which the stage container joins. A container that exits non-zero fails its
task with its exit code and its last log lines (every line also reaches the task log as
it is written).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from airflow.sdk.exceptions import AirflowException
from docker.types import Mount
from dotenv import dotenv_values  # python-dotenv: pydantic-settings' own .env reader

from rakuten_mlops.localstack.podman import docker_url, podman_dir
from rakuten_mlops.settings import Settings, env_file, get_settings, settings_environment

# The image's non-root user (Dockerfile: `useradd --uid 10001 app`).
CONTAINER_UID = 10001
CONTAINER_ENV_FILE = "/run/rakuten/secrets.env"
CONTAINER_ENV_DIR = "/run/rakuten/stage-env"  # the shared volume's mount (compose)
LAST_LINES = 20


def container_environment(
    settings_files: Mapping[str, str],
) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) settings for a container; host paths are left out (the image has
    its own project root, /app)."""
    plain, secret = settings_environment(settings_files)
    plain = {key: value for key, value in plain.items() if not os.path.isabs(value)}
    return plain, secret


def write_secrets_file(folder: Path, secrets: Mapping[str, str], *, shared: bool = False) -> Path:
    """A private .env of `secrets`: readable only by the container's user, or `shared`
    with the worker's group (a volume's file, which the worker cannot give away)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o750 if shared else 0o700)
    descriptor, name = tempfile.mkstemp(prefix="stage-", suffix=".env", dir=folder)
    with os.fdopen(descriptor, "w") as handle:
        handle.writelines(f"{key}={quote(value)}\n" for key, value in secrets.items())
    path = Path(name)
    path.chmod(0o440 if shared else 0o400)
    if not shared and os.geteuid() == 0:  # as root: hand it to the container's user
        os.chown(path, CONTAINER_UID, -1)
    return path


def secrets_mount(settings: Settings, secrets: Mapping[str, str]) -> tuple[Path, Mount, str]:
    """(the file written, how the container mounts it, the file's path in the container)."""
    if settings.stage_env_volume:
        folder = settings.path(settings.stage_env_dir)
        path = write_secrets_file(folder, secrets, shared=True)
        mount = Mount(CONTAINER_ENV_DIR, settings.stage_env_volume, type="volume",
                      read_only=True)
        return path, mount, f"{CONTAINER_ENV_DIR}/{path.name}"
    path = write_secrets_file(podman_dir(settings) / "secrets", secrets)
    mount = Mount(CONTAINER_ENV_FILE, str(path), type="bind", read_only=True)
    return path, mount, CONTAINER_ENV_FILE


def quote(value: str) -> str:
    """A dotenv value, single-quoted so that nothing in it is expanded."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def failure_message(error: DockerContainerFailedException, task_id: str) -> str:
    lines = list(error.logs or [])[-LAST_LINES:]
    status = str(error).removeprefix("Docker container failed: ")
    return f"the {task_id} container failed ({status}); its last {len(lines)} lines:\n" + "\n".join(
        lines
    )


class StageContainer(DockerOperator):
    """One ML stage (`python -m rakuten_mlops <command>`) in a container of the ML image."""

    def __init__(self, *, settings_source: Mapping[str, str] | None = None, **kwargs) -> None:
        kwargs.setdefault("mount_tmp_dir", False)
        kwargs.setdefault("do_xcom_push", True)
        # Removed by execute() once its stdout is read (the task log keeps every line).
        kwargs["auto_remove"] = "never"
        super().__init__(**kwargs)
        # Tests run the operator with an environment of their own; a DAG, the worker's.
        self.settings_source = settings_source

    def execute(self, context):
        settings = get_settings()
        self.docker_url = docker_url(settings)
        self.network_mode = settings.docker_network
        plain, secrets = container_environment(settings_files(self.settings_source or os.environ))
        secrets_file, mount, in_container = secrets_mount(settings, secrets)
        if settings.stage_env_volume:  # the file is the worker group's: join it
            self.user = f"{CONTAINER_UID}:{os.getgid()}"
        self.environment = {**plain, **self.environment, "RAKUTEN_ENV_FILE": in_container}
        self._private_environment = {}
        self.mounts = [*self.mounts, mount]
        self.container = None
        try:
            super().execute(context)
            return self.last_stdout_line() if self.do_xcom_push else None
        except DockerContainerFailedException as error:
            raise AirflowException(failure_message(error, self.task_id)) from error
        finally:
            secrets_file.unlink(missing_ok=True)
            if self.container:
                self.cli.remove_container(self.container["Id"], force=True)

    def last_stdout_line(self) -> str | None:
        """The reference the command printed last on stdout. The attached stream mixes
        stdout and stderr, and the engine does not keep their order between them."""
        output = self.cli.logs(self.container["Id"], stdout=True, stderr=False)
        lines = output.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else None


def settings_files(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings a worker with `environ` runs with: `.env`, then `environ` (which wins)."""
    values = {key: value for key, value in dotenv_values(env_file()).items() if value is not None}
    return {**values, **environ}
