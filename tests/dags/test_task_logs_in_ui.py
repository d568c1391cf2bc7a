"""Task logs of an `airflow dags test` run are in the Airflow UI.

`rakuten-mlops airflow dags test` runs the tasks through the LocalExecutor (Airflow's
`--use-executor`), so each task writes its log file where the api-server reads logs;
the browser logs in, opens the run's last task and finds the last line its log holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.browser import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

DAG = "prepare_data"
TASK = "finalize"


def run_folders(settings) -> set[Path]:
    from rakuten_mlops.localstack.services import airflow_home

    return set((airflow_home(settings) / "logs" / f"dag_id={DAG}").glob("run_id=*"))


def last_top_level_line(log_file: Path) -> str:
    """The last message of the task's log outside the UI's folded groups (::group::)."""
    depth, last = 0, None
    for line in log_file.read_text().splitlines():
        event = json.loads(line).get("event", "")
        if event.startswith("::group::"):
            depth += 1
        elif event == "::endgroup::":
            depth -= 1
        elif depth == 0:
            last = event
    assert last, f"no message outside groups in {log_file}"
    return last


def test_dags_test_task_log_is_shown_in_the_ui(lake, settings, browser, screenshot):
    from selenium.webdriver.common.by import By

    before = run_folders(settings)
    result = lake.cli("airflow", "dags", "test", DAG, timeout=240)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (folder,) = run_folders(settings) - before
    run_id = folder.name.removeprefix("run_id=")
    last_line = last_top_level_line(folder / f"task_id={TASK}" / "attempt=1.log")

    base = f"http://{settings.bind_host}:{settings.airflow_port}"
    browser.get(f"{base}/dags/{DAG}/runs/{quote(run_id, safe='')}/tasks/{TASK}")
    wait_until(browser, lambda driver: driver.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys(settings.airflow_admin_user)
    browser.find_element(By.NAME, "password").send_keys(
        settings.airflow_admin_password.get_secret_value()
    )
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    expected = last_line[:80]

    def body_text(driver) -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    wait_until(browser, lambda driver: expected in body_text(driver))
    assert "Could not read served logs" not in body_text(browser)
    screenshot("airflow-task-log-dags-test")
