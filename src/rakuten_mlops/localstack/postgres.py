"""Local mode's PostgreSQL: the cluster, its private socket, password authentication
everywhere, the project role, its databases, the service roles and the lake's migrations.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
from psycopg import sql

from rakuten_mlops.localstack.service import (
    Service,
    drop_privileges,
    replace_file,
    state_dir,
)
from rakuten_mlops.schema import ensure_roles, migrate_lake, service_roles
from rakuten_mlops.settings import Settings

POSTGRES_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)


def postgres_bin(name: str) -> str:
    for folder in POSTGRES_BIN_CANDIDATES:
        if (candidate := Path(folder) / name).is_file():
            return str(candidate)
    if found := shutil.which(name):
        return found
    raise FileNotFoundError(f"PostgreSQL 15 `{name}` not found: run `make setup`")


def postgres_user() -> str | None:
    """PostgreSQL will not run as root; as root we run it as the `postgres` account."""
    return "postgres" if os.geteuid() == 0 else None


def postgres_socket_dir(settings: Settings) -> Path:
    return state_dir(settings) / "postgres" / "run"


def postgres_data_dir(settings: Settings) -> Path:
    return state_dir(settings) / "postgres" / "data"


# What `stack up` keeps in the cluster's pg_hba.conf: a password (SCRAM) on every
# connection. The socket is private too, but a password does not depend on folder modes.
PG_HBA = """\
# Written by rakuten-mlops local mode (`stack up` restores it): a password (SCRAM) on
# every connection, the local socket included.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


def postgres_superuser_password(settings: Settings) -> str:
    if not settings.postgres_superuser_password or not (
        settings.postgres_superuser_password.get_secret_value()
    ):
        raise RuntimeError(
            "POSTGRES_SUPERUSER_PASSWORD is not set: run `make setup` (it adds it to .env)"
        )
    return settings.postgres_superuser_password.get_secret_value()


def postgres_superuser_kwargs(settings: Settings) -> dict:
    """`psycopg.connect` keywords for the local cluster's superuser over its socket.

    The password goes as a keyword (libpq sends it over the socket), never in an argv.
    """
    return {
        "host": str(postgres_socket_dir(settings)),
        "port": settings.postgres_port,
        "user": "postgres",
        "password": postgres_superuser_password(settings),
        "dbname": "postgres",
    }


def postgres_service(settings: Settings) -> Service:
    data_dir = postgres_data_dir(settings)
    socket_dir = postgres_socket_dir(settings)
    user = postgres_user()

    def preflight() -> None:
        postgres_superuser_password(settings)  # raises, naming the setting, when unset

    def secure_folders() -> None:
        make_private_folder(state_dir(settings))
        make_private_folder(data_dir.parent, user)
        make_private_folder(socket_dir, user)
        if user:  # after the chmods: a chmod resets the ACL mask
            grant_traverse(user, state_dir(settings))

    def prepare() -> None:
        password = postgres_superuser_password(settings)  # fail before touching anything
        secure_folders()
        if not (data_dir / "PG_VERSION").is_file():
            init_cluster(data_dir, user, password)

    def healthy() -> bool:
        try:
            with psycopg.connect(**postgres_superuser_kwargs(settings), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except (psycopg.Error, RuntimeError):  # RuntimeError: no password (preflight says so)
            return False

    def bootstrap() -> None:
        # A server started by an older version keeps its open socket until it restarts.
        secure_folders()
        bootstrap_postgres(settings, data_dir / "pg_hba.conf", user)

    return Service(
        name="postgres",
        command=[
            postgres_bin("postgres"),
            "-D",
            str(data_dir),
            "-p",
            str(settings.postgres_port),
            "-c",
            f"listen_addresses={settings.bind_host}",
            "-c",
            f"unix_socket_directories={socket_dir}",
            # Only the service account (and root) may even open the socket.
            "-c",
            "unix_socket_permissions=0700",
        ],
        url=f"postgresql://{settings.postgres_host}:{settings.postgres_port}/{settings.postgres_db}",
        healthy=healthy,
        prepare=prepare,
        bootstrap=bootstrap,
        preflight=preflight,
        start_timeout=60,
        stop_signal="SIGINT",  # PostgreSQL's "fast" shutdown
        user=user,
        ports=(settings.postgres_port,),
    )


def init_cluster(data_dir: Path, user: str | None, password: str) -> None:
    """initdb with SCRAM everywhere; the superuser password passes through a 0600 file
    owned by the service account (initdb reads `--pwfile`), removed right after."""
    import subprocess

    data_dir.mkdir(mode=0o700, exist_ok=True)
    if user:
        shutil.chown(data_dir, user)
    password_file = data_dir.parent / "initdb-password"
    password_file.unlink(missing_ok=True)
    descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(password + "\n")
        if user:
            shutil.chown(password_file, user)
        result = subprocess.run(
            [
                postgres_bin("initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
            ],
            **drop_privileges(user),
            check=False,
            capture_output=True,
            text=True,
        )
    finally:
        password_file.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed: {result.stderr.strip()}")


def make_private_folder(folder: Path, owner: str | None = None) -> None:
    """The folder exists, is 0700, and belongs to `owner` (default: whoever runs us)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    if owner:
        shutil.chown(folder, owner, owner_group(owner))


def owner_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def grant_traverse(user: str, folder: Path) -> None:
    """Let exactly `user` (the postgres account) reach the data dir under `folder`.

    A POSIX ACL entry `u:USER:x` on each folder on the way that others cannot traverse:
    the folders stay closed to every other account (no `o+x`).
    """
    import pwd
    import subprocess

    uid = pwd.getpwnam(user).pw_uid
    setfacl = shutil.which("setfacl") or "setfacl"
    for current in [folder, *folder.parents]:
        info = current.stat()
        if info.st_uid == uid or info.st_mode & 0o001:
            continue
        try:
            result = subprocess.run(
                [setfacl, "-m", f"u:{user}:x", str(current)],
                check=False,
                capture_output=True,
                text=True,
            )
            failure = result.stderr.strip() if result.returncode else ""
        except FileNotFoundError:
            failure = "setfacl not found"
        if failure:
            raise RuntimeError(
                f"cannot let the {user} account traverse {current} ({failure}); install "
                "Debian's `acl` (`make setup`) or keep the checkout on a file system with ACLs"
            )


def bootstrap_postgres(settings: Settings, hba_file: Path, owner: str | None) -> None:
    """Password authentication everywhere, the project role (its password kept in sync
    with .env) and its three databases."""
    with psycopg.connect(**postgres_superuser_kwargs(settings), autocommit=True) as conn:
        require_passwords(conn, settings, hba_file, owner)
        role = sql.Identifier(settings.postgres_user)
        exists = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.postgres_user,)
        ).fetchone()
        verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
        verifier = scram_verifier(
            conn, settings.postgres_user, settings.postgres_password.get_secret_value()
        )
        conn.execute(
            sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(verb, role, sql.Literal(verifier))
        )
        for database in (settings.postgres_db, settings.airflow_db, settings.mlflow_db):
            found = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not found:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), role)
                )
        ensure_service_roles(conn, settings)
    bootstrap_lake(settings)


def ensure_service_roles(conn: psycopg.Connection, settings: Settings) -> None:
    """The API's and Grafana's least-privilege roles, passwords kept in sync with .env."""
    ensure_roles(conn, service_roles(settings))


def bootstrap_lake(settings: Settings) -> None:
    """The lake's migrations and grants, once per start-up (as the project role, which
    owns the tables): the services that come after never change the schema."""
    migrate_lake(settings)


def scram_verifier(conn: psycopg.Connection, user: str, password: str) -> str:
    """The SCRAM verifier of a password, computed by libpq: the server (and its logs)
    never see the password itself."""
    return conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()


def require_passwords(
    conn: psycopg.Connection, settings: Settings, hba_file: Path, owner: str | None
) -> None:
    """Give the superuser its password from .env, then make pg_hba.conf ask everyone for one.

    In this order, a cluster created by an older version with `trust` on the socket is
    migrated while trust still lets us in; its socket is already private meanwhile.
    """
    verifier = scram_verifier(conn, "postgres", postgres_superuser_password(settings))
    conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier)))
    if hba_file.read_text() == PG_HBA:
        return
    replace_file(hba_file, PG_HBA, owner)
    conn.execute("SELECT pg_reload_conf()")
    errors = conn.execute(
        "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
    ).fetchall()
    if errors:
        raise RuntimeError(f"PostgreSQL rejected {hba_file}: {errors}")
