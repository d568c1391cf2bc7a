"""The object-store console of local mode (SeaweedFS's admin UI): a login from .env,
the buckets visible once logged in, nothing for an anonymous visitor; the filer's own
open UI is closed."""

from __future__ import annotations

import httpx
import pytest

from rakuten_mlops.localstack.consoles import s3_console_port
from tests.support.browser import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def console_url(stack, settings) -> str:
    return f"http://{settings.bind_host}:{s3_console_port(settings)}"


def test_anonymous_request_is_refused(console_url):
    for page in ("/", "/object-store/buckets", "/files"):
        response = httpx.get(console_url + page, timeout=10)
        assert response.status_code in (302, 303, 307), page
        assert response.headers["location"].endswith("/login"), page
    assert httpx.get(console_url + "/api/s3/buckets", timeout=10).status_code == 401


def test_filer_ui_is_closed(settings):
    """The filer's HTTP port (S3_PORT + 3) served a UI with Upload buttons to anyone."""
    filer = f"http://{settings.bind_host}:{settings.s3_port + 3}"
    assert httpx.get(f"{filer}/", timeout=10).status_code == 401
    assert httpx.get(f"{filer}/buckets/", timeout=10).status_code == 401
    upload = httpx.post(f"{filer}/buckets/anonymous/", files={"file": b"x"}, timeout=10)
    assert upload.status_code == 401


def log_in(browser, console_url, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(console_url + "/")
    wait_until(browser, lambda driver: driver.find_elements(By.NAME, "username"))
    browser.find_element(By.NAME, "username").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_a_wrong_password_stays_on_the_login_page(browser, console_url, settings):
    log_in(browser, console_url, settings.s3_console_user, "not-the-password")
    assert browser.current_url.startswith(console_url + "/login")
    assert httpx.get(console_url + "/api/s3/buckets", timeout=10).status_code == 401


def test_login_shows_the_image_bucket(browser, screenshot, console_url, settings):
    from selenium.webdriver.common.by import By

    log_in(
        browser,
        console_url,
        settings.s3_console_user,
        settings.s3_console_password.get_secret_value(),
    )
    wait_until(browser, lambda driver: driver.current_url == console_url + "/admin")
    browser.get(console_url + "/object-store/buckets")
    bucket = settings.s3_bucket_images  # the tests' own image bucket
    cell = wait_until(
        browser, lambda driver: driver.find_elements(By.XPATH, f"//td[contains(., {bucket!r})]")
    )[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    screenshot("object-store-console-buckets")
