"""The control room `make up` runs: on loopback, healthy, and nothing but its login for an
anonymous visitor, on every page. (Its pages, with data, are tested in
tests/quality/test_control_room_pages.py on the drift scenario's lake.)"""

from __future__ import annotations

import httpx
import pytest

from rakuten_mlops.control_room.app import PAGES
from tests.support.control_room import anonymous_page_shows_only_the_login, health

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def control_room_url(stack, settings) -> str:
    return f"http://{settings.bind_host}:{settings.control_room_port}"


def test_the_stack_runs_it_on_loopback(stack, settings, control_room_url):
    assert settings.bind_host == "127.0.0.1"
    assert health(control_room_url) == 200
    status = {s.name: s for s in stack.status()}["control-room"]
    assert status.state == "healthy", status


def test_anonymous_visitors_see_only_the_login(browser, screenshot, control_room_url):
    for path, *_ in PAGES:
        anonymous_page_shows_only_the_login(browser, f"{control_room_url}/{path}")
    screenshot("control-room-anonymous")
    # Over plain HTTP, the page is Streamlit's empty shell: the data only ever travels
    # over the session's websocket, after the login.
    shell = httpx.get(f"{control_room_url}/lake", timeout=10)
    assert shell.status_code == 200 and "Load batches" not in shell.text
