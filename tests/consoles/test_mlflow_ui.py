"""MLflow's UI opens the project's experiments in its training view (the runs table), not
the GenAI view (an empty Traces overview) MLflow 3.17 shows by default: through the links
the project hands out (rakuten_mlops.ml.tracking.experiment_ui_url), logged in as the
read-only user."""

from __future__ import annotations

import base64

import pytest

from rakuten_mlops.ml import tracking
from tests.support.browser import wait_until
from tests.support.ml import private_model

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

RUN_NAME = "test-classic-view-run"


@pytest.fixture(scope="module")
def experiment(stack, settings, tmp_path_factory):
    """An experiment of this module's own with one finished run, deleted afterwards."""
    import mlflow

    with private_model(settings, tmp_path_factory.mktemp("mlflow-ui"), "test-mlflow-ui") as own:
        experiment_id = tracking.experiment_id(own)
        with mlflow.start_run(experiment_id=experiment_id, run_name=RUN_NAME):
            mlflow.log_metric("test_f1_weighted", 0.5)
        yield experiment_id


def as_reader(browser, settings) -> None:
    """Every request of `browser` carries the MLflow reader's basic-auth header (Chromium
    has no prompt to type it in headless mode)."""
    login = f"{settings.mlflow_reader_user}:{settings.mlflow_reader_password.get_secret_value()}"
    header = "Basic " + base64.b64encode(login.encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": header}})


def test_an_experiment_link_opens_the_runs_table(browser, screenshot, settings, experiment):
    from selenium.webdriver.common.by import By

    as_reader(browser, settings)
    try:
        browser.get(tracking.experiment_ui_url(settings.tracking_uri, experiment))
        def page_text(driver) -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        wait_until(browser, lambda driver: RUN_NAME in page_text(driver))
        screenshot("mlflow-experiment-training-view")
        body = page_text(browser)
        assert f"/experiments/{experiment}/runs" in browser.current_url
        assert "workflowType=machine_learning" in browser.current_url
        assert "Run Name" in body  # the runs table's header
        # The sidebar of the training view, not the GenAI view's (Sessions, Judges, ...).
        assert "Model registry" in body
        assert "Sessions" not in body and "Judges" not in body
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
