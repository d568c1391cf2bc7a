"""/docs works without internet: Swagger UI's assets come from the API itself.

The browser resolves no host but loopback (Chromium's --host-resolver-rules), so a page
that still needed a CDN would render blank."""

from __future__ import annotations

import pytest

from tests.support.browser import new_driver, save_screenshot, wait_until

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

CDN_ASSET = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"


@pytest.fixture(scope="module")
def offline_browser():
    chrome = new_driver(("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",))
    yield chrome
    chrome.quit()


def fetch_status(browser, url: str) -> str:
    """fetch() from the page: the HTTP status, or the network error's name."""
    return browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => done(String(r.status)), e => done(e.name));",
        url,
    )


def test_docs_render_every_operation_without_network(offline_browser, api):
    from selenium.webdriver.common.by import By

    browser = offline_browser
    browser.get(api.base_url + "/docs")
    # The network really is off: the CDN FastAPI's default page uses is unreachable.
    assert fetch_status(browser, CDN_ASSET) == "TypeError"
    operations = wait_until(
        browser, lambda driver: driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    paths = {operation.text.replace("\u200b", "") for operation in operations}
    assert {"/predict", "/health", "/ready"} <= paths, paths
    assets = [
        element.get_attribute("src") or element.get_attribute("href")
        for element in browser.find_elements(By.CSS_SELECTOR, "script[src], link[href]")
    ]
    assert assets and all(url.startswith(api.base_url) for url in assets), assets
    assert fetch_status(browser, assets[0]) == "200"
    save_screenshot(browser, "api-docs-offline")
