"""Helpers for the serving tests: real processes (uvicorn, PostgreSQL, Prometheus) on
free loopback ports, each stopped by the test that started it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = ROOT / "raw_data"  # the real sample shipped with the project

CLIENT_KEY = "test-client-key-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"
CLIENT = {"X-API-Key": CLIENT_KEY}
ADMIN = {"X-API-Key": ADMIN_KEY}


def project_pipeline(final, word_features: dict | None = None):
    """The training pipeline's own text steps (rakuten_mlops.ml.features: TextCleaner and
    TF-IDF, here word n-grams only, for speed) in front of `final`."""
    from rakuten_mlops.ml.features import build_pipeline
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    pipeline = build_pipeline(
        "linear_svc",
        features={"char": None, "word": word_features or {}},
        nltk_data_dir=str(settings.path(settings.nltk_data_dir)),
    )
    return pipeline.set_params(clf=final)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout}s (last: {last!r})")


class ApiServer:
    """`python -m rakuten_mlops serve` on a free port, with its own environment."""

    def __init__(self, log_path: Path, **env: str):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        from rakuten_mlops.ml.tracking import credentials
        from rakuten_mlops.settings import get_settings

        self.env = {
            **os.environ,
            # What the supervisor gives the API: MLflow's read-only user.
            **credentials(get_settings(), "reader"),
            "API_CLIENT_KEY": CLIENT_KEY,
            "API_ADMIN_KEY": ADMIN_KEY,
            "RAW_DATA_DIR": str(SAMPLE_DATA),  # category_names.csv when the lake has none
            **env,
        }
        self.process: subprocess.Popen | None = None

    def start(self, wait_ready: bool = True, timeout: float = 90) -> ApiServer:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rakuten_mlops", "serve", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        self.wait(lambda: self.get("/health").status_code == 200, timeout, "health")
        if wait_ready:
            self.wait(lambda: self.get("/ready").status_code == 200, timeout, "ready")
        return self

    def wait(self, predicate, timeout: float, what: str):
        def check():
            if self.process.poll() is not None:
                raise RuntimeError(f"the API exited ({self.process.returncode}):\n{self.tail()}")
            try:
                return predicate()
            except httpx.HTTPError:
                return False

        try:
            return wait_for(check, timeout, what=what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.tail()}") from exc

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=30, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:
        return httpx.post(self.base_url + path, timeout=30, **kwargs)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PrivatePostgres:
    """A throw-away PostgreSQL 15 cluster (trust auth, loopback) that a test can stop."""

    def __init__(self, root: Path, user: str, database: str):
        from rakuten_mlops.localstack.postgres import postgres_user

        self.root = root
        self.data = root / "data"
        self.sockets = root / "run"
        self.port = free_port()
        self.user = user
        self.database = database
        self.system_user = postgres_user()  # PostgreSQL refuses to run as root
        self.process: subprocess.Popen | None = None

    def _privileges(self) -> dict:
        from rakuten_mlops.localstack.service import drop_privileges

        return drop_privileges(self.system_user)

    def init(self) -> PrivatePostgres:
        from rakuten_mlops.localstack.postgres import postgres_bin

        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if self.system_user:
            for folder in [self.root, *self.root.parents]:
                mode = folder.stat().st_mode
                if not mode & 0o001:
                    folder.chmod(mode | 0o001)
            shutil.chown(self.root, self.system_user)
            shutil.chown(self.sockets, self.system_user)
        result = subprocess.run(
            [postgres_bin("initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust"]
            + ["-E", "UTF8", "--locale=C"],
            capture_output=True,
            text=True,
            check=False,
            **self._privileges(),
        )
        assert result.returncode == 0, result.stderr
        self.start()
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def migrate(self) -> PrivatePostgres:
        """The lake's schema in this cluster's database (as `rakuten-mlops migrate` does)."""
        from rakuten_mlops.schema import migrate

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            migrate(conn)
        return self

    def dsn(self, database: str | None = None) -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} "
            f"dbname={database or self.database} connect_timeout=3"
        )

    def start(self) -> None:
        from rakuten_mlops.localstack.postgres import postgres_bin

        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the server's lifetime
        self.process = subprocess.Popen(
            [postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sockets}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._privileges(),
        )

        def accepting() -> bool:
            try:
                with psycopg.connect(self.dsn("postgres")):
                    return True
            except psycopg.Error:
                return False

        wait_for(accepting, 30, what="private PostgreSQL accepting connections")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: backends are cut off
            self.process.wait(timeout=30)


class PrivatePrometheus:
    """A Prometheus process with its own config, storage and port."""

    def __init__(self, root: Path, config: dict):
        import yaml

        self.root = root
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        self.config_file = root / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivatePrometheus:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        log = open(self.root / "prometheus.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            try:
                return httpx.get(f"{self.base_url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 30, what="private Prometheus ready")
        return self

    def query(self, expr: str) -> list[dict]:
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
