"""The browser harness itself: Debian's Chromium renders a loopback page and the
screenshot helper writes a PNG of it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.timeout(60)

PAGE = (
    b"<html><head><title>harness</title></head>"
    b"<body><h1 id='probe'>rendered by chromium</h1></body></html>"
)


class OnePage(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture()
def page_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), OnePage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def test_chromium_renders_a_loopback_page_and_screenshots_it(browser, screenshot, page_url):
    from selenium.webdriver.common.by import By

    browser.get(page_url)
    assert browser.title == "harness"
    assert browser.find_element(By.ID, "probe").text == "rendered by chromium"
    path = screenshot("harness-loopback-page")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
