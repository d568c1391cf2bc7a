"""The control room in tests: a Streamlit server of its own (`ControlRoomServer`, on a free
loopback port, reading the lake and services of the settings it is given, started the
way local mode starts it) and the browser steps every control-room test shares."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from tests.support.browser import wait_until
from tests.support.serving import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60  # seconds for Streamlit to answer its health check
PAGE_TIMEOUT = 60  # seconds a page may take to finish its first run (MLflow included)


class ControlRoomServer:
    def __init__(self, settings, log_path: Path, **env: str):
        from rakuten_mlops.localstack.control_room import control_room_service

        self.settings = settings.model_copy(update={"control_room_port": free_port()})
        self.service = control_room_service(self.settings)
        self.base_url = f"http://127.0.0.1:{self.settings.control_room_port}"
        self.log_path = log_path
        self.env = {**os.environ, **self.service.env, **env}
        self.process: subprocess.Popen | None = None

    def start(self) -> ControlRoomServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.service.command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )

        def healthy() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the control room exited:\n{self.log_path.read_text()[-3000:]}")
            return self.service.healthy()

        wait_for(healthy, START_TIMEOUT, what="control room health")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def login_form(driver):
    from selenium.webdriver.common.by import By

    fields = driver.find_elements(By.CSS_SELECTOR, "input[type=password]")
    return fields[0] if fields and fields[0].is_displayed() else None


def log_in(browser, url: str, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait_until(browser, login_form, PAGE_TIMEOUT)
    browser.find_element(By.CSS_SELECTOR, "input[aria-label=Username]").send_keys(user)
    login_form(browser).send_keys(password)
    browser.find_element(By.XPATH, "//button[.//p[text()='Login']]").click()


def anonymous_page_shows_only_the_login(browser, url: str) -> None:
    """A fresh visitor's view of `url`: the login form and none of the app's content."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(url)
    wait_until(browser, login_form, PAGE_TIMEOUT)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stDataFrame]"), url
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stSidebarNav]"), url
    assert not browser.find_elements(By.TAG_NAME, "h1") or all(
        h1.text == "" for h1 in browser.find_elements(By.TAG_NAME, "h1")
    ), url


def health(url: str) -> int:
    return httpx.get(f"{url}/_stcore/health", timeout=10).status_code
