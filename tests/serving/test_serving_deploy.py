"""How the API is deployed: the local-mode service and scrape job, the compose service
and its Prometheus job (files only: no Docker engine here)."""

from __future__ import annotations

import yaml

from rakuten_mlops.localstack.services import local_services, prometheus_config
from tests.support.serving import ROOT


def test_local_mode_runs_the_api_on_loopback(settings):
    services = {service.name: service for service in local_services(settings)}
    api = services["api"]
    assert api.command[-2:] == ["rakuten_mlops", "serve"]
    assert api.ports == (settings.api_port,)
    assert api.url.startswith(f"http://127.0.0.1:{settings.api_port}")
    assert {"postgres", "mlflow"} <= set(api.after)
    assert api.env["MLFLOW_TRACKING_URI"] == settings.tracking_uri
    # MLflow logins: the API reads as the read-only user; Airflow's tasks promote as admin.
    assert api.env["MLFLOW_TRACKING_USERNAME"] == settings.mlflow_reader_user
    reader = settings.mlflow_reader_password.get_secret_value()
    assert api.env["MLFLOW_TRACKING_PASSWORD"] == reader
    scheduler = services["airflow-scheduler"]
    assert scheduler.env["MLFLOW_TRACKING_USERNAME"] == settings.mlflow_admin_user
    assert settings.mlflow_admin_user != settings.mlflow_reader_user
    jobs = {job["job_name"]: job for job in prometheus_config(settings)["scrape_configs"]}
    assert jobs["api"]["static_configs"][0]["targets"] == [f"127.0.0.1:{settings.api_port}"]


def test_compose_runs_the_api_and_prometheus_scrapes_it():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    api = compose["services"]["api"]
    assert api["build"]["target"] == "ml" and api["command"][0] == "serve"
    # Reached only through the TLS proxy, which forwards to api:8000.
    assert "ports" not in api
    assert compose["services"]["proxy"]["environment"]["PROXY_API_UPSTREAM"] == "api:8000"
    for key in ("API_CLIENT_KEY", "API_ADMIN_KEY"):
        assert api["environment"][key].startswith(f"${{{key}:?{key} is empty or unset")
    for key in ("API_MAX_HEADER_BYTES", "API_HEADER_TIMEOUT_SECONDS", "API_MAX_CONNECTIONS"):
        assert api["environment"][key].startswith(f"${{{key}:-")
    assert api["environment"]["RAKUTEN_MODE"] == "compose"
    assert api["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert "./models:/app/models:ro" in api["volumes"]
    prometheus = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:8000"]


def test_env_example_declares_the_api_settings():
    values = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    # Empty: `make setup` generates them, compose refuses to start without them.
    assert values["API_CLIENT_KEY"] == values["API_ADMIN_KEY"] == ""
    for name in (
        "API_PORT",
        "MODEL_NAME",
        "MODEL_ALIAS",
        "API_MAX_BATCH_SIZE",
        "API_MAX_HEADER_BYTES",
        "API_MAX_HEADERS",
        "API_HEADER_TIMEOUT_SECONDS",
        "API_BODY_TIMEOUT_SECONDS",
        "API_KEEPALIVE_TIMEOUT_SECONDS",
        "API_MAX_CONNECTIONS",
    ):
        assert values[name]
