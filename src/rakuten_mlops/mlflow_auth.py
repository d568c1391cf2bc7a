"""MLflow's built-in basic auth (`mlflow server --app-name basic-auth`), set up from env.

Before the server starts (local mode's `prepare`, compose's entrypoint), this writes the
auth app's ini (no secret in it: the admin's password reaches MLflow as
MLFLOW_AUTH_ADMIN_PASSWORD) and makes the users database hold exactly the configured
admin and read-only user with their current passwords, so rotating a password in `.env`
takes effect at the next start. Every other user gets `default_permission` READ, which
only the two configured users can use: anonymous requests get 401, the reader's writes
403.
"""

from __future__ import annotations

import os
from pathlib import Path

from rakuten_mlops.errors import ConfigurationError

DEFAULT_PERMISSION = "READ"
AUTH_CACHE_SECONDS = 300


def write_config(path: Path, database_uri: str) -> Path:
    """The auth app's ini at `path` (0600), users kept in `database_uri`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "[mlflow]\n"
        f"default_permission = {DEFAULT_PERMISSION}\n"
        f"database_uri = {database_uri}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # A password's hash check costs about 0.25 s of the server's CPU here, paid by
        # every request without this cache (half a second per MLflow call): MLflow's own
        # credential cache checks each (user, password) once per window instead. Only
        # this process's workers and our start-up (which rewrites the users) change them.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n"
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return path


def ensure_users(database_uri: str, admin: tuple[str, str], reader: tuple[str, str]) -> None:
    """Make the users DB hold exactly the admin (is_admin) and the reader (not admin)."""
    import warnings

    with warnings.catch_warnings():
        # Importing mlflow.server warns about a Starlette module MLflow uses: not ours.
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    if admin[0] == reader[0]:
        raise ConfigurationError("MLFLOW_ADMIN_USER and MLFLOW_READER_USER must differ")
    store = SqlAlchemyStore()
    store.init_db(database_uri)
    for (username, password), is_admin in ((admin, True), (reader, False)):
        if store.has_user(username, use_primary=True):
            store.update_user(username, password=password, is_admin=is_admin)
        else:
            store.create_user(username, password, is_admin=is_admin)
    # A user renamed in .env must not keep its old login (and powers) under the old name.
    for user in store.list_users():
        if user.username not in (admin[0], reader[0]):
            store.delete_user(user.username)


def sqlite_uri(path: Path) -> str:
    """A users DB file at `path`, created private to this account."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    return f"sqlite:///{path}"


def prepare_from_env(config_path: Path, environ=os.environ) -> None:
    """Compose's entrypoint: the ini and users from MLFLOW_AUTH_DATABASE_URI,
    MLFLOW_ADMIN_USER/PASSWORD and MLFLOW_READER_USER/PASSWORD (all required)."""
    names = (
        "MLFLOW_AUTH_DATABASE_URI",
        "MLFLOW_ADMIN_USER",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_READER_USER",
        "MLFLOW_READER_PASSWORD",
    )
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise ConfigurationError(f"MLflow auth needs {', '.join(missing)} in the environment")
    uri = environ["MLFLOW_AUTH_DATABASE_URI"]
    if uri.startswith("sqlite:///"):
        uri = sqlite_uri(Path(uri.removeprefix("sqlite:///")))
    write_config(config_path, uri)
    ensure_users(
        uri,
        (environ["MLFLOW_ADMIN_USER"], environ["MLFLOW_ADMIN_PASSWORD"]),
        (environ["MLFLOW_READER_USER"], environ["MLFLOW_READER_PASSWORD"]),
    )
