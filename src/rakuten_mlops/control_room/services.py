"""Services: each service's health and URL (Airflow, MLflow, pgAdmin, the S3 console,
Prometheus, the API and its docs; Grafana where it runs), plus Prometheus's own view of
its scrape targets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import streamlit as st

from rakuten_mlops.control_room import queries, training
from rakuten_mlops.ml import tracking
from rakuten_mlops.settings import Mode, Settings

S3_CONSOLE_OFFSET = 4  # rakuten_mlops.localstack.consoles.s3_console_port


def endpoints(settings: Settings) -> list[tuple[str, str, str]]:
    """(service, URL a person opens, URL whose answer tells its health)."""
    host = settings.bind_host

    def local(port: int) -> str:
        return f"http://{host}:{port}"

    api = queries.api_url(settings)
    found = [
        ("Airflow", local(settings.airflow_port), f"{local(settings.airflow_port)}/api/v2/version"),
        ("MLflow", local(settings.mlflow_port), f"{local(settings.mlflow_port)}/health"),
        ("pgAdmin", local(settings.pgadmin_port), f"{local(settings.pgadmin_port)}/misc/ping"),
        ("Prometheus", queries.prometheus_url(settings),
         f"{queries.prometheus_url(settings)}/-/ready"),
        ("API", api, f"{api}/health"),
        ("API docs", f"{api}/docs", f"{api}/docs"),
    ]
    if settings.rakuten_mode is Mode.LOCAL:
        console = local(settings.s3_port + S3_CONSOLE_OFFSET)
        found.insert(3, ("S3 console", console, console))
    else:
        grafana = settings.grafana_base_url
        found.append(("Grafana", grafana, f"{grafana}/api/health"))
    return found


def mlflow_url(settings: Settings, base: str) -> str:
    """The experiment's runs in MLflow's training view (the UI's home until it exists)."""
    from mlflow.exceptions import MlflowException  # imported by the app at start

    try:
        experiment = training.cached_experiment_id(settings, settings.mlflow_experiment)
    except MlflowException:
        return base
    return base if experiment is None else tracking.experiment_ui_url(base, experiment)


def opened_url(settings: Settings, name: str, url: str, up: bool) -> str:
    return mlflow_url(settings, url) if name == "MLflow" and up else url


def render(settings: Settings) -> None:
    st.title("Services")
    listed = endpoints(settings)
    with ThreadPoolExecutor(max_workers=len(listed)) as pool:
        answers = list(pool.map(lambda entry: queries.probe(entry[2]), listed))
    table = pd.DataFrame(
        [
            {"service": name, "health": "up" if up else "down", "answer": answer,
             "url": opened_url(settings, name, url, up)}
            for (name, url, _), (up, answer) in zip(listed, answers, strict=True)
        ]
    )
    st.dataframe(table, hide_index=True, column_config={"url": st.column_config.LinkColumn()})
    st.subheader("Prometheus scrape targets")
    targets = queries.prometheus_vector(settings, "up")
    if not targets:
        st.info(f"Prometheus at {queries.prometheus_url(settings)} did not answer.")
        return
    st.dataframe(
        pd.DataFrame(
            {"job": t["metric"].get("job"), "instance": t["metric"].get("instance"),
             "up": t["value"][1] == "1"} for t in targets
        ),
        hide_index=True,
    )
