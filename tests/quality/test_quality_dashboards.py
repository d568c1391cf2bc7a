"""The Grafana dashboard files and `publish-dashboards`.

Grafana cannot run on these machines. The files are checked statically here (the
queries themselves run for real in test_quality_dashboard_queries.py). Publishing is
tested against a small stand-in HTTP server that records what a Grafana would receive
(Grafana's own behaviour is not what is under test: the requests the command sends
are), and against a port where nothing listens (a real connection failure).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from rakuten_mlops.ops.dashboards import (
    PublishError,
    dashboard_files,
    expand_promql,
    expand_sql,
    load_dashboards,
    panel_queries,
    publish,
    with_datasources,
)
from rakuten_mlops.settings import project_root

ROOT = project_root()
DASHBOARDS = load_dashboards()


def test_the_four_dashboards_exist_with_unique_uids():
    titles = {d["title"] for d in DASHBOARDS}
    assert titles == {"Data quality", "Drift", "Prediction API", "Model"}
    assert len({d["uid"] for d in DASHBOARDS}) == 4
    assert {p.name for p in dashboard_files()} == {
        "data-quality.json",
        "drift.json",
        "api.json",
        "model.json",
    }


def test_provisioning_points_at_the_dashboards_and_datasources():
    provider = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/dashboards/dashboards.yml").read_text()
    )["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./config/grafana/dashboards:/var/lib/grafana/dashboards:ro" in compose
    sources = yaml.safe_load(
        (ROOT / "config/grafana/provisioning/datasources/datasources.yml").read_text()
    )["datasources"]
    uids = {s["uid"]: s["type"] for s in sources}
    for dashboard in DASHBOARDS:
        for query in panel_queries(dashboard):
            assert query.datasource in uids, (dashboard["uid"], query.panel)


def test_every_panel_has_a_query_title_and_a_place():
    for dashboard in DASHBOARDS:
        ids = set()
        for panel in dashboard["panels"]:
            assert panel["id"] not in ids
            ids.add(panel["id"])
            assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}
            if panel["type"] != "row":
                assert panel["targets"], panel["title"]
        assert not dashboard["templating"]["list"]  # no variables: every query runs as written


def test_the_drift_panels_draw_the_configured_thresholds():
    config = yaml.safe_load((ROOT / "config/quality.yaml").read_text())["drift"]["thresholds"]
    (drift,) = [d for d in DASHBOARDS if d["uid"] == "rakuten-drift"]
    drawn = 0
    for panel in drift["panels"]:
        for metric, threshold in config.items():
            sql = panel.get("targets", [{}])[0].get("rawSql", "")
            if (
                panel["type"] == "timeseries"
                and "r.value AS value" in sql
                and f"r.metric = '{metric}'" in sql
            ):
                steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                assert steps[-1]["value"] == threshold, panel["title"]
                mode = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
                assert mode != "off"
                drawn += 1
    assert drawn == 2 * len(config)  # load batches and inference log, per statistic


def test_macros_and_variables_are_expanded_or_refused():
    from datetime import UTC, datetime

    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    sql = expand_sql("SELECT 1 WHERE $__timeFilter(w.window_time)", start, end)
    assert sql == (
        "SELECT 1 WHERE w.window_time BETWEEN '2026-01-01T00:00:00+00:00' AND "
        "'2026-01-02T00:00:00+00:00'"
    )
    with pytest.raises(ValueError, match="unexpanded"):
        expand_sql("SELECT '$model'", start, end)
    assert expand_promql("rate(x[$__rate_interval])") == "rate(x[1m])"


def test_datasource_uids_can_be_rewritten_for_another_grafana():
    (model,) = [d for d in DASHBOARDS if d["uid"] == "rakuten-model"]
    copied = with_datasources(model, {"lake": "pg-prod"})
    assert {q.datasource for q in panel_queries(copied)} == {"pg-prod"}
    assert {q.datasource for q in panel_queries(model)} == {"lake"}  # the original is untouched


# --------------------------------------------------------------------------- publishing


class FakeGrafana(BaseHTTPRequestHandler):
    """Records requests; answers like Grafana's folder and dashboard APIs."""

    calls: list = []
    folders: set = set()

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.calls.append(("GET", self.path, self.headers.get("Authorization"), None))
        uid = self.path.rsplit("/", 1)[1]
        if self.path.startswith("/api/folders/") and uid in self.folders:
            self._answer(200, {"uid": uid})
        else:
            self._answer(404, {"message": "folder not found"})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, self.headers.get("Authorization"), body))
        if self.headers.get("Authorization") != "Bearer good-token":
            self._answer(401, {"message": "Unauthorized"})
        elif self.path == "/api/folders":
            self.folders.add(body["uid"])
            self._answer(200, {"uid": body["uid"], "title": body["title"]})
        else:
            uid = body["dashboard"]["uid"]
            self._answer(200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x"})

    def log_message(self, *args):
        pass


@pytest.fixture()
def grafana():
    FakeGrafana.calls, FakeGrafana.folders = [], set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_publish_creates_the_folder_and_overwrites_every_dashboard(settings, grafana):
    from pydantic import SecretStr

    token = settings.model_copy(update={"grafana_token": SecretStr("good-token")})
    links = publish(
        token,
        url=grafana,
        datasources={"lake": "lake", "prometheus": "prom-2"},
        report=lambda line: None,
    )
    assert len(links) == 4 and all(link.startswith(grafana + "/d/") for link in links)
    posts = [c for c in FakeGrafana.calls if c[0] == "POST"]
    assert posts[0][1:] == (
        "/api/folders",
        "Bearer good-token",
        {"title": "Rakuten MLOps", "uid": "rakuten-mlops"},
    )
    uploads = [body for _, path, _, body in posts if path == "/api/dashboards/db"]
    assert {b["dashboard"]["uid"] for b in uploads} == {d["uid"] for d in DASHBOARDS}
    assert all(b["overwrite"] and b["folderUid"] == "rakuten-mlops" for b in uploads)
    (api,) = [b["dashboard"] for b in uploads if b["dashboard"]["uid"] == "rakuten-api"]
    assert {q.datasource for q in panel_queries(api)} == {"prom-2"}
    # Publishing again finds the folder and does not create it twice.
    publish(token, url=grafana, report=lambda line: None)
    assert sum(1 for c in FakeGrafana.calls if c[:2] == ("POST", "/api/folders")) == 1


def test_publish_reports_refused_credentials(settings, grafana):
    from pydantic import SecretStr

    wrong = settings.model_copy(update={"grafana_token": SecretStr("bad-token")})
    with pytest.raises(PublishError, match="refused"):
        publish(wrong, url=grafana, report=lambda line: None)


def test_publish_needs_credentials(settings):
    bare = settings.model_copy(update={"grafana_token": None, "grafana_admin_password": None})
    with pytest.raises(PublishError, match="GRAFANA_TOKEN"):
        publish(bare, url="http://127.0.0.1:1")


def test_the_command_fails_clearly_when_grafana_is_unreachable(tmp_path):
    import socket

    with socket.socket() as probe:  # a free port: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "GRAFANA_TOKEN": "some-token",
        "PATH": "/usr/bin:/bin",
        "RAKUTEN_PROJECT_ROOT": str(ROOT),
        "HOME": str(tmp_path),
    }
    import os

    env = {**os.environ, **env}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rakuten_mlops",
            "publish-dashboards",
            "--url",
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"Grafana at http://127.0.0.1:{port} is unreachable" in result.stderr
