"""Issue 12, item 5: the API cannot be slowed down or swollen without a key.

A real `rakuten-mlops serve` process on a free loopback port, with short limits so the
timeouts show within seconds (API_HEADER_TIMEOUT_SECONDS=2, ...). It needs no stack: /health
answers without a model, and the endpoints of MLflow and PostgreSQL point at closed ports,
so nothing in the user's stack is touched. Every attack is bounded in bytes and seconds.

* oversized header blocks (4 x 64 MB in parallel) and too many header fields are refused
  with 400/431 or a closed connection while /health answers in under 100 ms, and the
  server's memory stays flat;
* half-sent headers (slowloris), a body that stops half-way and idle keep-alive
  connections are closed after their timeouts;
* beyond API_MAX_CONNECTIONS open connections every new request gets an immediate 503
  (never a hang), and /health is back to 200 once the header timeout has cut the held
  connections off.

The same through the compose proxy: Debian's nginx with config/nginx/nginx.conf.template
(rendered as the image does) on loopback ports, TLS with a throw-away self-signed
certificate, in front of the same API process: oversized and slow headers are cut off
while /health stays fast, and requests beyond limit_conn get a 503; and (with the local
stack) it forwards to the real Airflow api-server and MLflow, which accept what it sends.

And item 11's serving part: a body that is not valid JSON is a 400 that says so, with
the line and column, instead of a 422 whose "field" is a character offset.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.serving import CLIENT_KEY, ApiServer, free_port

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEPALIVE_TIMEOUT = 1
MAX_CONNECTIONS = 64
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 100
HEALTH_BUDGET_SECONDS = 0.100
# The machine is shared (2 cores, other stacks): one probe in ten may miss the budget
# to a scheduling hiccup, none may take a second (before the fix: 12 s).
HEALTH_WORST_SECONDS = 1.0
RSS_GROWTH_BUDGET_MB = 40
# A connection the server holds costs ~12 KB until its header deadline (measured: +25 MB
# for 2,000); how many it can hold is bounded by the open-files limit and the deadline.
RSS_GROWTH_BUDGET_2000_CONNECTIONS_MB = 60

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    folder = tmp_path_factory.mktemp("http-faults")
    closed_port = str(free_port())  # nothing listens there: no stack is needed or touched
    server = ApiServer(
        folder / "api.log",
        MODELS_DIR=str(folder / "models"),
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed_port}",
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=closed_port,
        API_MODEL_POLL_SECONDS="0",
        API_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        API_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
        API_KEEPALIVE_TIMEOUT_SECONDS=str(KEEPALIVE_TIMEOUT),
        API_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        API_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        API_MAX_HEADERS=str(MAX_HEADERS),
    )
    server.start(wait_ready=False, timeout=60)
    yield server
    server.stop()


# ----------------------------------------------------------------- helpers


def health_latency(port: int, timeout: float = 5.0) -> tuple[int, float]:
    """(status, seconds) of one GET /health on a fresh connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        status = conn.getresponse().status
    finally:
        conn.close()
    return status, time.perf_counter() - started


class HealthProbe(threading.Thread):
    """GET /health every `interval` seconds until stopped; keeps status and latency."""

    def __init__(self, port: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.results: list[tuple[int, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.results.append(health_latency(self.port))
            except OSError as exc:
                self.results.append((0, float("inf")))
                print(f"/health probe failed: {exc!r}")
            self.stopping.wait(self.interval)

    def stop(self) -> list[tuple[int, float]]:
        self.stopping.set()
        self.join(timeout=10)
        return self.results


def assert_health_stayed_fast(results: list[tuple[int, float]]) -> None:
    assert len(results) >= 10, results
    assert [status for status, _ in results] == [200] * len(results), results
    latencies = sorted(seconds for _, seconds in results)
    fast = sum(seconds < HEALTH_BUDGET_SECONDS for seconds in latencies)
    assert fast >= 0.9 * len(latencies), f"/health over 100 ms too often: {latencies}"
    assert latencies[-1] < HEALTH_WORST_SECONDS, latencies


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """What the server sends until it closes the connection (b'' if it only closes)."""
    received = b""
    try:
        while len(received) < limit:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    return received


def read_response(sock: socket.socket) -> bytes:
    """One whole /health response on a kept-alive connection."""
    sock.settimeout(5)
    received = b""
    while not received.endswith(b'{"status":"ok"}'):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {received!r}"
        received += chunk
    return received


def seconds_until_closed(sock: socket.socket, timeout: float) -> float:
    """How long until the server closes `sock` (it must send nothing before)."""
    started = time.monotonic()
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        data = b""
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for over {timeout}s")
    assert data == b"", f"expected a close, got {data[:80]!r}"
    return time.monotonic() - started


def wait_for_health(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if health_latency(port)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"/health not back to 200 within {timeout}s")


# ----------------------------------------------------------------- header size and count


def send_huge_header(port: int, total: int, outcome: dict) -> None:
    """Stream one request whose single header is `total` bytes; record how it ended."""
    chunk = b"a" * (1 << 20)
    sent = 0
    sock = connect(port)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on us mid-send: what we want
        outcome["sent"] = sent
        outcome["answer"] = read_until_closed(sock)
    except OSError as exc:
        outcome["error"] = repr(exc)
    finally:
        sock.close()


def parallel_attack(send, target, parallel: int = 4, rounds: int = 10) -> list[dict]:
    """`parallel` threads, each sending `rounds` 64 MB-header requests one after another
    (a sustained attack, not one burst); the outcome of each request."""
    outcomes = [[{} for _ in range(rounds)] for _ in range(parallel)]

    def attacker(mine: list[dict]) -> None:
        for outcome in mine:
            send(target, 64 << 20, outcome)

    threads = [threading.Thread(target=attacker, args=(mine,)) for mine in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not any(thread.is_alive() for thread in threads), "an attacker is still sending"
    return [outcome for mine in outcomes for outcome in mine]


def test_oversized_headers_are_cut_off_while_health_stays_fast(api):
    pid = api.process.pid
    rss_before = rss_mb(pid)
    probe = HealthProbe(api.port)
    probe.start()
    time.sleep(0.3)  # a few probes before the attack, as a reference
    outcomes = parallel_attack(send_huge_header, api.port, rounds=25)
    results = probe.stop()
    rss_after = rss_mb(pid)

    for outcome in outcomes:
        assert "error" not in outcome, outcome
        answer = outcome["answer"]
        # A 400 from h11's bound, or (if it was still sending) just the closed connection.
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
        assert outcome["sent"] < 64 << 20, "the whole 64 MB header was accepted"
    latencies = [seconds for status, seconds in results]
    print(
        f"/health during 4 x 25 x 64 MB headers: {len(results)} probes, median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert_health_stayed_fast(results)
    assert rss_after - rss_before < RSS_GROWTH_BUDGET_MB


def test_header_block_just_over_the_byte_limit_is_refused_and_under_it_served(api):
    for size, expected in (
        (MAX_HEADER_BYTES - 1024, b"HTTP/1.1 200"),
        (MAX_HEADER_BYTES * 2, b"HTTP/1.1 431"),
    ):
        with connect(api.port) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n")
            sock.sendall(b"X-Pad: " + b"p" * size + b"\r\n\r\n")
            answer = read_until_closed(sock)
        assert answer.startswith(expected), (size, answer[:200])


def test_too_many_header_fields_are_431(api):
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_HEADERS + 50))
    with connect(api.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"too many request header fields" in answer
    # Within the limit: served.
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(MAX_HEADERS - 10))
    with connect(api.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fields + b"\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200")


# ----------------------------------------------------------------- timeouts


def test_half_sent_headers_are_cut_off_after_the_timeout(api):
    """Slowloris: 40 connections that trickle header bytes, and one that sends nothing."""
    probe = HealthProbe(api.port)
    probe.start()
    silent = connect(api.port)
    trickling = [connect(api.port) for _ in range(40)]
    for sock in trickling:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    # One more header byte every 0.25 s on each: must not extend the deadline.
    while len(closed_at) < len(trickling) and time.monotonic() - started < HEADER_TIMEOUT + 5:
        for index, sock in enumerate(trickling):
            if index in closed_at:
                continue
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed_at[index] = time.monotonic() - started
        time.sleep(0.25)
    silent_after = seconds_until_closed(silent, timeout=HEADER_TIMEOUT + 5)
    results = probe.stop()
    for sock in [silent, *trickling]:
        sock.close()

    assert len(closed_at) == len(trickling), "some half-sent requests were never cut off"
    # Cut off after the timeout (a send may succeed once more before the close shows).
    assert min(closed_at.values()) >= HEADER_TIMEOUT * 0.9
    assert max(closed_at.values()) <= HEADER_TIMEOUT + 1.5
    assert silent_after <= HEADER_TIMEOUT + 1.5
    assert_health_stayed_fast(results)


def test_a_body_that_stops_half_way_is_cut_off(api):
    with connect(api.port) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + CLIENT_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n"
            b'{"designation": "Peluche'
        )
        # The server may answer 4xx/5xx when the app sees the disconnect; either way it
        # must close the connection within the body timeout.
        started = time.monotonic()
        sock.settimeout(BODY_TIMEOUT + 5)
        read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert BODY_TIMEOUT * 0.9 <= elapsed <= BODY_TIMEOUT + 1.5, elapsed


def test_idle_keep_alive_connections_are_closed(api):
    with connect(api.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        elapsed = seconds_until_closed(sock, timeout=KEEPALIVE_TIMEOUT + 5)
    assert elapsed <= KEEPALIVE_TIMEOUT + 1


def test_a_second_request_on_a_kept_alive_connection_has_its_own_header_deadline(api):
    with connect(api.port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # ... and never the rest
        elapsed = seconds_until_closed(sock, timeout=HEADER_TIMEOUT + 5)
    assert HEADER_TIMEOUT * 0.9 <= elapsed <= HEADER_TIMEOUT + 1.5


# ----------------------------------------------------------------- connection cap


def test_connections_beyond_the_cap_get_503_then_health_recovers(api):
    """2,000 half-open connections, as in the issue (the cap is 64): every request gets an
    immediate 503 instead of waiting, memory stays flat, the header timeout closes all of
    them, and /health is 200 again."""
    pid = api.process.pid
    wait_for_health(api.port, timeout=HEADER_TIMEOUT + 5)  # earlier tests' sockets gone
    rss_before = rss_mb(pid)
    held = []
    try:
        for _ in range(2000):
            sock = connect(api.port)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        opened = time.monotonic()
        time.sleep(0.3)  # let the server accept them
        status, seconds = health_latency(api.port)
        assert status == 503, status
        assert seconds < HEALTH_WORST_SECONDS, seconds
        rss_held = rss_mb(pid)
        for sock in held:  # each one closed by the server
            sock.settimeout(max(0.1, opened + HEADER_TIMEOUT + 5 - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b"", "the server answered a half-sent request"
        all_closed_after = time.monotonic() - opened
        wait_for_health(api.port, timeout=5)
        status, seconds = health_latency(api.port)
        assert status == 200 and seconds < HEALTH_WORST_SECONDS, (status, seconds)
    finally:
        for sock in held:
            sock.close()
    print(
        f"RSS {rss_before:.0f} MB, {rss_held:.0f} MB with 2,000 half-open connections, "
        f"all closed by the server after {all_closed_after:.1f} s"
    )
    assert all_closed_after <= HEADER_TIMEOUT + 5
    assert rss_held - rss_before < RSS_GROWTH_BUDGET_2000_CONNECTIONS_MB


# ----------------------------------------------------------------- item 11: malformed JSON


@pytest.mark.parametrize(
    "body,where",
    [
        (b'{"designation": "Peluche",\n "top_k": }', "line 2, column 11"),
        (b'{"designation": "x"', "line 1, column 20"),
        (b'{"designation": "x"} x', "line 1, column 22"),
    ],
    ids=["missing value", "truncated", "trailing garbage"],
)
def test_malformed_json_is_400_saying_where(api, body, where):
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    headers = {"X-API-Key": CLIENT_KEY, "Content-Type": "application/json"}
    conn.request("POST", "/predict", body=body, headers=headers)
    response = conn.getresponse()
    payload = response.read().decode()
    conn.close()
    assert response.status == 400, payload
    detail = json.loads(payload)["detail"]
    assert detail.startswith("the body is not valid JSON: "), detail
    assert detail.endswith(where), detail


# ----------------------------------------------------------------- through the nginx proxy

PROXY_HEADER_TIMEOUT = 10  # client_header_timeout in the template
PROXY_PER_CLIENT = 64  # limit_conn per_client


class LocalProxy:
    """Debian's nginx running the compose proxy's template on loopback ports."""

    def __init__(self, folder: Path, api_port: int, upstreams: dict[str, int] | None = None):
        from rakuten_mlops.proxy import SERVICES, render_nginx_config, write_self_signed_cert

        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            pytest.skip("Debian's nginx is not installed (`make setup` installs it)")
        self.cert, _ = write_self_signed_cert(folder / "certs", ["127.0.0.1"])
        self.ports = {service: free_port() for service in SERVICES}
        values = {"PROXY_RUN_DIR": str(folder), "PROXY_CERT_DIR": str(folder / "certs")}
        for service in SERVICES:
            values[f"PROXY_{service}_LISTEN"] = f"127.0.0.1:{self.ports[service]}"
            # The API; the others where given, else a closed port.
            upstream = api_port if service == "API" else (upstreams or {}).get(service)
            upstream = upstream or free_port()
            values[f"PROXY_{service}_UPSTREAM"] = f"127.0.0.1:{upstream}"
        config = folder / "nginx.conf"
        config.write_text(render_nginx_config(values))
        self.log = folder / "nginx.log"
        with open(self.log, "ab") as log:
            # As root, workers run as root too: they need the private temp folders.
            self.process = subprocess.Popen(
                [nginx, "-c", str(config), "-e", "stderr", "-g", "daemon off; user root;"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.port = self.ports["API"]
        self.context = ssl.create_default_context(cafile=str(self.cert))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.health()[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"nginx did not proxy /health within 20 s:\n{self.log.read_text()}")

    def connect(self, timeout: float = 15.0) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        return self.context.wrap_socket(raw, server_hostname="127.0.0.1")

    def health(self, timeout: float = 5.0) -> tuple[int, float]:
        started = time.perf_counter()
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=self.context
        )
        try:
            conn.request("GET", "/health")
            status = conn.getresponse().status
        finally:
            conn.close()
        return status, time.perf_counter() - started

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ProxyHealthProbe(HealthProbe):
    def __init__(self, proxy: LocalProxy, interval: float = 0.02):
        super().__init__(proxy.port, interval)
        self.proxy = proxy

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.results.append(self.proxy.health())
            except OSError as exc:
                self.results.append((0, float("inf")))
                print(f"/health probe through the proxy failed: {exc!r}")
            self.stopping.wait(self.interval)


@pytest.fixture(scope="module")
def proxy(api, tmp_path_factory):
    local = LocalProxy(tmp_path_factory.mktemp("proxy"), api.port)
    yield local
    local.stop()


def proxy_read_until_closed(sock: ssl.SSLSocket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return received


def test_proxy_serves_the_api_over_tls_only(proxy):
    assert proxy.health()[0] == 200
    with connect(proxy.port) as plain:  # plain HTTP on the TLS port: refused
        plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_until_closed(plain).startswith(b"HTTP/1.1 400")


def send_huge_header_over_tls(proxy: LocalProxy, total: int, outcome: dict) -> None:
    chunk = b"a" * (1 << 20)
    sent = 0
    try:
        with proxy.connect() as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            try:
                while sent < total:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass
            outcome["sent"] = sent
            outcome["answer"] = proxy_read_until_closed(sock)
    except OSError as exc:
        outcome["error"] = repr(exc)


def test_proxy_cuts_oversized_headers_while_health_stays_fast(proxy):
    probe = ProxyHealthProbe(proxy)
    probe.start()
    time.sleep(0.3)
    outcomes = parallel_attack(send_huge_header_over_tls, proxy, rounds=3)
    results = probe.stop()
    for outcome in outcomes:
        assert "error" not in outcome, outcome
        # nginx answers 400 as soon as its header buffers are full, then reads and drops
        # the rest (lingering close) so that the client gets to read that answer.
        answer = outcome["answer"]
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"Request Header Or Cookie Too Large" in answer
    latencies = [seconds for _, seconds in results]
    print(
        f"/health through the proxy during 4 x 3 x 64 MB headers: {len(results)} probes, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    assert_health_stayed_fast(results)


@pytest.mark.timeout(60)
def test_proxy_cuts_half_sent_headers_after_its_timeout(proxy):
    probe = ProxyHealthProbe(proxy, interval=0.2)
    probe.start()
    held = [proxy.connect(timeout=PROXY_HEADER_TIMEOUT + 10) for _ in range(20)]
    for sock in held:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    answers = [proxy_read_until_closed(sock) for sock in held]
    elapsed = time.monotonic() - started
    results = probe.stop()
    for sock in held:
        sock.close()
    assert all(answer in (b"",) or answer.startswith(b"HTTP/1.1 408") for answer in answers)
    assert PROXY_HEADER_TIMEOUT * 0.9 <= elapsed <= PROXY_HEADER_TIMEOUT + 3, elapsed
    assert_health_stayed_fast(results)


def test_proxy_answers_503_beyond_its_connection_limit(proxy, api):
    """64 requests in progress from one address (bodies still coming): the next is a 503
    from nginx at once; once they are gone, /health is 200 again."""
    held = []
    try:
        for _ in range(PROXY_PER_CLIENT):
            sock = proxy.connect()
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"X-API-Key: " + CLIENT_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
            )
            held.append(sock)
        time.sleep(0.3)
        status, seconds = proxy.health()
        assert status == 503, status
        assert seconds < 1.0, seconds
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while proxy.health()[0] != 200:
        assert time.monotonic() < deadline, "the proxy did not recover"
        time.sleep(0.1)


@pytest.mark.stack
def test_proxy_reaches_airflow_and_mlflow_of_the_local_stack(stack, settings, api, tmp_path):
    """The same config in front of the real Airflow api-server and MLflow of `make up`:
    what the proxy forwards (Host, X-Forwarded-*) is accepted by both."""
    local = LocalProxy(
        tmp_path, api.port, {"AIRFLOW": settings.airflow_port, "MLFLOW": settings.mlflow_port}
    )
    try:
        for service, path in (("AIRFLOW", "/api/v2/monitor/health"), ("MLFLOW", "/health")):
            conn = http.client.HTTPSConnection(
                "127.0.0.1", local.ports[service], timeout=30, context=local.context
            )
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
            assert response.status == 200, (service, response.status, body[:300])
    finally:
        local.stop()
