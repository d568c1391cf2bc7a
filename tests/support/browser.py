"""A real headless browser for the console tests: Debian's `chromium`, driven by selenium
through Debian's `chromium-driver` (nothing is downloaded: selenium's own driver manager
is bypassed by naming the executables).

`browser` is one Chromium per test module (starting one costs about a second); each test
gets it with its cookies cleared. `screenshot(name)` writes test-output/screenshots/NAME.png
so a person can see what the assertions saw.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
PAGE_TIMEOUT = 30  # seconds a page load or an explicit wait may take


def chromium_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip: scripts/install-system-deps.sh installs both."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("chromium and chromium-driver are not installed (run `make setup`)")
    return browser, driver


def new_driver(extra_arguments: tuple[str, ...] = ()):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        # Root in a container has no user namespace for Chromium's sandbox.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        "--no-first-run",
        "--disable-background-networking",
        *extra_arguments,
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=DriverService(executable_path=driver))
    chrome.set_page_load_timeout(PAGE_TIMEOUT)
    return chrome


@pytest.fixture(scope="module")
def browser_session():
    chrome = new_driver()
    yield chrome
    chrome.quit()


@pytest.fixture()
def browser(browser_session):
    """The module's Chromium, logged out of everything (cookies cleared)."""
    browser_session.delete_all_cookies()
    return browser_session


def save_screenshot(driver, name: str) -> Path:
    """test-output/screenshots/NAME.png of what `driver` shows now."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"Chromium could not write the screenshot {path}")
    return path


@pytest.fixture()
def screenshot(browser) -> Callable[[str], Path]:
    """screenshot(name): the module's browser, saved as test-output/screenshots/NAME.png."""
    return lambda name: save_screenshot(browser, name)


def wait_until(browser, condition, timeout: float = PAGE_TIMEOUT):
    """selenium's explicit wait (polls, never sleeps longer than needed).

    A single-page app re-renders while it loads, so an element the condition just
    found can be replaced before it is read: that poll is retried, not failed.
    """
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(
            browser, timeout, ignored_exceptions=(StaleElementReferenceException,)
        ).until(condition)
    except TimeoutException as timeout_error:
        # What the page showed when the wait gave up, to look at after a failed run.
        shot = save_screenshot(browser, f"timed-out-{time.strftime('%H%M%S')}")
        raise TimeoutException(
            f"waited {timeout}s on {browser.current_url}; the page then: {shot}"
        ) from timeout_error
