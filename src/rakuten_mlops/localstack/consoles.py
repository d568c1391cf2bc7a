"""Local mode's operator consoles: pgAdmin 4 (server mode, its own virtualenv) and the
object-store console (SeaweedFS's admin UI, with the filer's open UI closed).

pgAdmin's pins clash with Airflow's, so `make setup` installs it into `.venv-pgadmin`
(requirements_pgadmin.txt). Its configuration lives under `.stack/pgadmin`, handed to
pgAdmin through CONFIG_DISTRO_FILE_PATH, so nothing is written into the installed
package. waitress serves `pgAdmin4.wsgi` (pgAdmin's documented WSGI entry point) instead
of the Werkzeug development server that `pgAdmin4.py` runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
from pathlib import Path

from rakuten_mlops.localstack.service import Service, http_ok, replace_file, state_dir
from rakuten_mlops.settings import Settings, project_root

PGADMIN_VENV = ".venv-pgadmin"
SETUP_TIMEOUT = 120  # seconds for pgAdmin's setup.py (creates its SQLite database)


def pgadmin_python() -> Path:
    return project_root() / PGADMIN_VENV / "bin" / "python"


def pgadmin_package() -> Path:
    """The installed `pgadmin4` folder (setup.py, pgAdmin4.wsgi) in pgAdmin's venv."""
    found = sorted((project_root() / PGADMIN_VENV).glob("lib/python3*/site-packages/pgadmin4"))
    if not found:
        raise RuntimeError(
            f"pgAdmin is not installed in {PGADMIN_VENV}/: run `make setup`"
        )
    return found[-1]


def pgadmin_config(settings: Settings, folder: Path) -> str:
    """config_distro.py: server mode, state under `folder`, nothing fetched from the web."""
    data = folder / "data"
    values = {
        "SERVER_MODE": True,
        "DEFAULT_SERVER": settings.bind_host,
        "DEFAULT_SERVER_PORT": settings.pgadmin_port,
        "DATA_DIR": str(data),
        "LOG_FILE": str(data / "pgadmin4.log"),
        "SQLITE_PATH": str(data / "pgadmin4.db"),
        "SESSION_DB_PATH": str(data / "sessions"),
        "STORAGE_DIR": str(data / "storage"),
        "UPGRADE_CHECK_ENABLED": False,
        # The lake's password is typed at connect time; no extra master-password prompt.
        "MASTER_PASSWORD_REQUIRED": False,
        # No avatar fetched from gravatar.com (offline here, and it would leak the email hash).
        "SHOW_GRAVATAR_IMAGE": False,
    }
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    header = "# Written by rakuten_mlops.localstack.consoles at each start."
    return "\n".join([header, *lines]) + "\n"


def local_servers_json(settings: Settings) -> dict:
    """The repo's servers.json (compose's), pointed at local mode's PostgreSQL.

    Its maintenance database is `postgres`, which every cluster has: the lake's database
    appears only with the first load (a stack that pytest started never has it)."""
    servers = json.loads((project_root() / "servers.json").read_text())
    for server in servers["Servers"].values():
        server.update(
            Name=server["Name"].replace("(compose)", "(local)"),
            Host=settings.bind_host,
            Port=settings.postgres_port,
            Username=settings.postgres_user,
            MaintenanceDB="postgres",
        )
    return servers


def pgadmin_setup(settings: Settings, folder: Path, env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [str(pgadmin_python()), str(pgadmin_package() / "setup.py"), *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgAdmin `setup.py {args[0]}` failed:\n{result.stderr[-2000:]}")


def pgadmin_service(settings: Settings) -> Service:
    folder = state_dir(settings) / "pgadmin"
    config_file = folder / "config_distro.py"
    base = f"http://{settings.bind_host}:{settings.pgadmin_port}"
    password = settings.pgadmin_password
    env = {"CONFIG_DISTRO_FILE_PATH": str(config_file), "PYTHONPATH": str(folder)}

    def preflight() -> None:
        if password is None or not password.get_secret_value():
            raise ValueError("pgAdmin needs PGADMIN_PASSWORD: run `make setup` (init-env adds it)")
        pgadmin_package()

    def prepare() -> None:
        (folder / "data").mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        replace_file(config_file, pgadmin_config(settings, folder), owner=None)
        replace_file(folder / "servers.json", json.dumps(local_servers_json(settings)), None)
        # waitress imports this module; pgAdmin4.wsgi itself is not importable by name.
        replace_file(
            folder / "pgadmin_wsgi.py",
            "import runpy\n"
            f"application = runpy.run_path({str(pgadmin_package() / 'pgAdmin4.wsgi')!r})"
            "['application']\n",
            owner=None,
        )
        # The login comes from the environment, never a command line; setup-db creates
        # it once and otherwise only upgrades the database.
        setup_env = {
            **env,
            "PGADMIN_SETUP_EMAIL": settings.pgadmin_email,
            "PGADMIN_SETUP_PASSWORD": password.get_secret_value() if password else "",
        }
        pgadmin_setup(settings, folder, setup_env, "setup-db")
        pgadmin_setup(
            settings, folder, setup_env, "load-servers", str(folder / "servers.json"),
            "--user", settings.pgadmin_email, "--replace",
        )

    return Service(
        name="pgadmin",
        command=[
            str(pgadmin_python()),
            "-m",
            "waitress",
            f"--listen={settings.bind_host}:{settings.pgadmin_port}",
            "--threads=4",
            "pgadmin_wsgi:application",
        ],
        env=env,
        url=f"{base} (login: PGADMIN_EMAIL / PGADMIN_PASSWORD)",
        # /misc/ping answers without a login; every other page redirects to /login.
        healthy=lambda: http_ok(f"{base}/misc/ping"),
        after=("postgres",),
        preflight=preflight,
        prepare=prepare,
        start_timeout=90,
        ports=(settings.pgadmin_port,),
    )


# --------------------------------------------------------------------------- object store


def s3_console_port(settings: Settings) -> int:
    """SeaweedFS's admin UI: the port `weed mini` already reserves for it (S3_PORT + 4)."""
    return settings.s3_port + 4


def s3_console_options(settings: Settings, options_file: Path) -> None:
    """`weed -options` file (0600): the admin UI's login stays off the command line."""
    password = settings.s3_console_password
    if password is None or not password.get_secret_value():
        raise ValueError(
            "the object-store console needs S3_CONSOLE_PASSWORD: run `make setup` "
            "(init-env adds it to .env)"
        )
    lines = [
        f"admin.user={settings.s3_console_user}",
        f"admin.password={password.get_secret_value()}",
    ]
    replace_file(options_file, "\n".join(lines) + "\n", owner=None)


def derived_key(settings: Settings, purpose: str) -> str:
    """A signing key of its own per purpose, derived from S3_SECRET_KEY (no new setting)."""
    secret = settings.s3_secret_key.get_secret_value().encode()
    return hmac.new(secret, purpose.encode(), hashlib.sha256).hexdigest()


def seaweedfs_security_env(settings: Settings) -> dict[str, str]:
    """SeaweedFS's security.toml as WEED_* variables (its documented way to pass secrets).

    Without them the filer's HTTP port serves an unauthenticated UI with upload buttons
    and the volume server accepts unsigned writes. With them the filer and volume
    servers accept only JWT-signed requests (the S3 gateway and the admin UI, in the same
    process, sign theirs) and the filer UI and directory listings are off.
    """
    return {
        "WEED_JWT_SIGNING_KEY": derived_key(settings, "seaweedfs-volume-write"),
        "WEED_JWT_FILER_SIGNING_KEY": derived_key(settings, "seaweedfs-filer-write"),
        "WEED_JWT_FILER_SIGNING_READ_KEY": derived_key(settings, "seaweedfs-filer-read"),
        "WEED_FILER_EXPOSE_DIRECTORY_METADATA_ENABLED": "false",
    }
