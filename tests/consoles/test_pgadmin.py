"""pgAdmin 4 in local mode: a login from .env, the lake pre-registered from servers.json,
nothing shown to an anonymous visitor."""

from __future__ import annotations

import httpx
import pytest

from tests.support.browser import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def pgadmin_url(stack, settings) -> str:
    return f"http://{settings.bind_host}:{settings.pgadmin_port}"


def test_anonymous_request_is_refused(pgadmin_url):
    # Pages send the visitor to the login; the JSON API answers 401.
    response = httpx.get(pgadmin_url + "/browser/", timeout=10)
    assert response.status_code == 302
    assert response.headers["location"].startswith("/login")
    for endpoint in ("/sqleditor/", "/misc/bgprocess/"):
        assert httpx.get(pgadmin_url + endpoint, timeout=10).status_code == 401, endpoint


def test_login_shows_the_lake_server_and_connects_to_it(
    browser, screenshot, pgadmin_url, settings
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    def by_text(text: str):
        return lambda driver: driver.find_elements(By.XPATH, f"//*[text()={text!r}]")

    browser.get(pgadmin_url + "/browser/")
    wait_until(browser, lambda driver: driver.find_elements(By.NAME, "email"))
    assert "/login" in browser.current_url
    browser.find_element(By.NAME, "email").send_keys(settings.pgadmin_email)
    browser.find_element(By.NAME, "password").send_keys(
        settings.pgadmin_password.get_secret_value()
    )
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    # The tree's "Servers" group, then the lake registered from servers.json.
    # The tree draws "Servers" before it answers clicks: open it until the lake shows.
    def lake_listed(driver):
        found = by_text("rakuten-mlops (local)")(driver)
        if not found:
            ActionChains(driver).double_click(by_text("Servers")(driver)[0]).perform()
        return found

    wait_until(browser, by_text("Servers"))
    wait_until(browser, lake_listed)
    # Expanding the group asks for the lake's password: pgAdmin really connects.
    def visible_password_field(driver):
        fields = driver.find_elements(By.CSS_SELECTOR, "input[type=password]")
        return next((field for field in fields if field.is_displayed()), None)

    wait_until(browser, visible_password_field).send_keys(
        settings.postgres_password.get_secret_value(), Keys.ENTER
    )
    wait_until(browser, by_text("Databases"))
    screenshot("pgadmin-lake-server")
