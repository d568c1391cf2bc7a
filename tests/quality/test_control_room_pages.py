"""The control room on the drift scenario's lake (conftest.drift_run: two batches, the
second shifted, a champion, real predictions, a data_quality run): logged in through a
real Chromium, every page opens with its key elements and no exception; the drift values
it shows equal what the Drift dashboard's panel SQL returns on the same data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rakuten_mlops.control_room.app import PAGES
from tests.support.browser import wait_until
from tests.support.control_room import PAGE_TIMEOUT, ControlRoomServer, log_in

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

# What each page must show once its first run is over (texts of headings and captions).
KEY_TEXTS = {
    "lake": ["Load batches", "Products and images per split and class", "Rejects by reason",
             "Product images"],
    "training": ["Champion history and gate decisions", "Training runs per dataset version",
                 "Cross-validation per family"],
    "quality": ["Latest drift verdict per feature", "Statistics over time", "Breaches",
                "Retraining after a breach", "Windows and their reports"],
    "predictions": ["Playground", "Inference log, last 7 days", "Class mix"],
    "services": ["Prometheus scrape targets"],
}
TEST_USER, TEST_PASSWORD = "test-operator", "test-control-room-password-0123"


@pytest.fixture(scope="module")
def control_room(drift_run, tmp_path_factory):
    from tests.support.quality import env_of
    from tests.support.serving import CLIENT_KEY

    lake = drift_run.settings
    env = {
        **env_of(lake),
        "MLFLOW_EXPERIMENT": "test-quality",  # where train_champion logged its run
        "CONTROL_ROOM_API_URL": drift_run.api.base_url,
        "API_CLIENT_KEY": CLIENT_KEY,
        "CONTROL_ROOM_USER": TEST_USER,
        "CONTROL_ROOM_PASSWORD": TEST_PASSWORD,
    }
    if drift_run.prometheus is not None:
        env["CONTROL_ROOM_PROMETHEUS_URL"] = drift_run.prometheus.base_url
    folder = tmp_path_factory.mktemp("control_room")
    server = ControlRoomServer(lake, folder / "control-room.log", **env)
    try:
        yield server.start()
    finally:
        server.stop()


def page_done(driver, title: str, texts: list[str]):
    """The page's heading and key texts are there and its script has stopped running
    (an element Streamlit replaced while we read it: not yet)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return page_shown(driver, title, texts)
    except StaleElementReferenceException:
        return False


def click_when_stable(xpath: str):
    """A wait condition: click the element once it exists and is not being replaced."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def condition(driver):
        try:
            found = driver.find_elements(By.XPATH, xpath)
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False

    return condition


def page_shown(driver, title: str, texts: list[str]):
    from selenium.webdriver.common.by import By

    headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h1")]
    if title not in headings:
        return False
    body = driver.find_element(By.TAG_NAME, "body").text
    running = driver.find_elements(
        By.CSS_SELECTOR,
        "[data-testid=stStatusWidgetRunningIcon], [data-testid=stStatusWidgetRunningManIcon],"
        " [data-testid=stSkeleton]",
    )
    return all(text in body for text in texts) and not running


def test_wrong_password_is_refused(browser, control_room):
    from selenium.webdriver.common.by import By

    log_in(browser, control_room.base_url, TEST_USER, "not-the-password")
    wait_until(browser, lambda d: "Wrong user name or password" in d.page_source, PAGE_TIMEOUT)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stSidebarNav]")


def test_every_page_after_login(browser, screenshot, control_room):
    from selenium.webdriver.common.by import By

    # Tall enough that each screenshot shows the whole page, not the first screen.
    browser.set_window_size(1400, 3200)
    log_in(browser, control_room.base_url, TEST_USER, TEST_PASSWORD)
    for path, title, _, _ in PAGES:
        # The sidebar's link (the first page's is the root URL, so by its title).
        link = f"//a[@data-testid='stSidebarNavLink'][.//*[text()={title!r}]]"
        wait_until(browser, click_when_stable(link), PAGE_TIMEOUT)
        wait_until(browser, lambda d, t=title, p=path: page_done(d, t, KEY_TEXTS[p]), PAGE_TIMEOUT)
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stException]"), path
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid=stAlertContentError]"), (
            path
        )
        check_page(browser, path)
        screenshot(f"control-room-{path}")


def check_page(browser, path: str) -> None:
    """What only data can show: images, charts, the playground's answer."""
    from selenium.webdriver.common.by import By

    def present(selector: str):
        return lambda d: d.find_elements(By.CSS_SELECTOR, selector)

    if path == "lake":
        wait_until(browser, present("[data-testid=stImage] img"), PAGE_TIMEOUT)
    if path == "quality":
        wait_until(browser, present("[data-testid=stVegaLiteChart]"), PAGE_TIMEOUT)
        wait_until(browser, present("iframe"), PAGE_TIMEOUT)  # the window's HTML report
    if path == "predictions":
        wait_until(browser, click_when_stable("//button[.//p[text()='Predict']]"), PAGE_TIMEOUT)
        wait_until(browser, lambda d: "model test-quality-" in d.find_element(
            By.TAG_NAME, "body").text, PAGE_TIMEOUT)


def test_drift_values_equal_the_drift_panel(drift_run):
    """The verdict table the Quality page renders holds the Drift dashboard's numbers."""
    from streamlit.testing.v1 import AppTest

    from rakuten_mlops.control_room.queries import panel_sql
    from rakuten_mlops.ops.dashboards import expand_sql
    from rakuten_mlops.storage import connect

    def script(settings):
        from rakuten_mlops.control_room import quality

        quality.render(settings)

    lake = drift_run.settings
    app = AppTest.from_function(script, kwargs={"settings": lake}, default_timeout=60).run()
    assert not app.exception, app.exception
    shown = app.dataframe[0].value
    # The panel's SQL, expanded and run here as Grafana's role, as Grafana would.
    now = datetime.now(UTC)
    sql = expand_sql(panel_sql("rakuten-drift", "Latest drift verdict per feature"),
                     now - timedelta(days=30), now + timedelta(days=1))
    grafana = lake.model_copy(update={"postgres_user": lake.postgres_grafana_user,
                                      "postgres_password": lake.postgres_grafana_password})
    with connect(grafana) as conn, conn.cursor() as cur:
        cur.execute(sql)
        columns = [c.name for c in cur.description]
        expected = [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    assert expected, "the drift run computed no drift"
    assert list(shown.columns) == columns
    rows = shown.to_dict("records")
    assert len(rows) == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert (got["kind"], got["feature"], got["verdict"]) == (
            want["kind"], want["feature"], want["verdict"])
        for metric in ("psi", "js_distance", "kl_divergence"):
            if want[metric] is None:
                assert got[metric] is None or got[metric] != got[metric]
            else:
                assert float(got[metric]) == float(want[metric]), (want["feature"], metric)
    assert any(row["verdict"] == "drift" for row in expected), "the shifted batch must drift"
