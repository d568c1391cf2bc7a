"""Local mode's control room: `python -m rakuten_mlops.control_room` (Streamlit serving
control_room/app.py) on BIND_HOST:CONTROL_ROOM_PORT. Its login comes from .env (the app
reads the settings like every other process), nothing on the command line."""

from __future__ import annotations

import sys

from rakuten_mlops.localstack.service import Service, http_ok
from rakuten_mlops.ml.tracking import client_env as tracking_client_env
from rakuten_mlops.settings import Settings, env_file, project_root


def streamlit_env(settings: Settings) -> dict[str, str]:
    """Streamlit's own options, as environment variables (STREAMLIT_<SECTION>_<OPTION>)."""
    return {
        "STREAMLIT_SERVER_ADDRESS": settings.bind_host,
        "STREAMLIT_SERVER_PORT": str(settings.control_room_port),
        "STREAMLIT_SERVER_HEADLESS": "true",
        # A service, not a development server: no file watcher, no reruns on save.
        "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none",
        "STREAMLIT_SERVER_RUN_ON_SAVE": "false",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
        "STREAMLIT_CLIENT_TOOLBAR_MODE": "viewer",
        # An error shows its message, never a traceback with the code around it.
        "STREAMLIT_CLIENT_SHOW_ERROR_DETAILS": "false",
    }


def control_room_service(settings: Settings) -> Service:
    base = f"http://{settings.bind_host}:{settings.control_room_port}"

    def preflight() -> None:
        password = settings.control_room_password
        if password is None or not password.get_secret_value():
            raise ValueError(
                "the control room needs CONTROL_ROOM_PASSWORD: run `make setup` "
                "(init-env adds it to .env)"
            )

    return Service(
        name="control-room",
        command=[sys.executable, "-m", "rakuten_mlops.control_room"],
        env={
            **streamlit_env(settings),
            "RAKUTEN_PROJECT_ROOT": str(project_root()),
            "RAKUTEN_ENV_FILE": str(env_file()),
            # It only reads MLflow (runs, the confusion matrix): MLflow's read-only user.
            **tracking_client_env(settings, "reader"),
        },
        url=f"{base} (login: CONTROL_ROOM_USER / CONTROL_ROOM_PASSWORD)",
        # Streamlit's health endpoint answers without a login; pages show only the form.
        healthy=lambda: http_ok(f"{base}/_stcore/health"),
        after=("postgres", "s3"),
        preflight=preflight,
        start_timeout=60,
        ports=(settings.control_room_port,),
    )
