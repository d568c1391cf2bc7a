"""Every query of every dashboard, run for real after the drift run (conftest.drift_run).

Grafana cannot run here, so each SQL panel query is expanded the way Grafana expands its
macros and run, as Grafana's read-only role (rakuten_grafana), against the PostgreSQL lake
the pipeline and the drift job wrote, and
must return rows (time-series panels: `time`, `metric`, `value` columns). Each PromQL
expression is evaluated on a real Prometheus scraping the real API after real traffic
(a private one at a 1 s scrape interval, configured by local mode's prometheus_config),
and must return series; on the stack's own Prometheus each must evaluate without error.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from rakuten_mlops.ops.dashboards import expand_promql, expand_sql, load_dashboards, panel_queries

pytestmark = pytest.mark.stack

QUERIES = [q for d in load_dashboards() for q in panel_queries(d)]
SQL = [q for q in QUERIES if q.datasource == "lake"]
PROMQL = [q for q in QUERIES if q.datasource == "prometheus"]


def _id(query) -> str:
    return f"{query.dashboard}:{query.panel}:{query.ref_id}"


def test_every_query_is_sql_or_promql():
    assert QUERIES and len(SQL) + len(PROMQL) == len(QUERIES)
    assert {q.dashboard for q in SQL} >= {"rakuten-data-quality", "rakuten-drift", "rakuten-model"}
    assert {q.dashboard for q in PROMQL} == {"rakuten-api"}


@pytest.mark.parametrize("query", SQL, ids=_id)
def test_sql_panel_returns_rows(drift_run, query):
    from rakuten_mlops.storage import connect

    assert drift_run.result.returncode == 0, drift_run.log[-3000:]
    start, end = drift_run.interval
    sql = expand_sql(query.query, start - timedelta(days=30), end + timedelta(days=1))
    # As Grafana's own read-only role, as compose's datasource connects.
    lake = drift_run.settings
    grafana = lake.model_copy(update={"postgres_user": lake.postgres_grafana_user,
                                      "postgres_password": lake.postgres_grafana_password})
    with connect(grafana) as conn, conn.cursor() as cur:
        cur.execute(sql)
        columns = [c.name for c in cur.description]
        found = cur.fetchall()
    assert found, f"no rows: {sql}"
    if query.format == "time_series":
        assert columns == ["time", "metric", "value"], columns
        times = [row[0] for row in found]
        assert times == sorted(times), "time series must be ordered by time"


@pytest.fixture(scope="module")
def fresh_traffic(drift_run):
    """A little traffic now, so rates over the last minute are not empty; scraped."""
    from tests.support.serving import CLIENT, wait_for

    if drift_run.prometheus is None:
        pytest.skip("prometheus is not installed (`make setup` installs it)")
    api = drift_run.api
    for text in ("Piscine tubulaire ronde", "Lot de 3 romans policiers", "Jeu de société"):
        assert api.post("/predict", headers=CLIENT, json={"designation": text}).status_code == 200
    assert api.post("/predict", json={"designation": "x"}).status_code == 401
    batch = {"items": [{"designation": "Console de jeux"}, {"designation": "Tapis"}]}
    assert api.post("/predict/batch", headers=CLIENT, json=batch).status_code == 200
    prometheus = drift_run.prometheus
    total = drift_run.predictions + 5
    wait_for(
        lambda: (
            prometheus.query("sum(rakuten_api_predictions_total)")
            and float(prometheus.query("sum(rakuten_api_predictions_total)")[0]["value"][1])
            >= total
        ),
        30,
        what="predictions scraped",
    )
    wait_for(
        lambda: prometheus.query(
            'count(count_over_time(rakuten_api_requests_total{route="/predict"}[1m]))'
        ),
        10,
    )
    return prometheus


@pytest.mark.parametrize("query", PROMQL, ids=_id)
def test_promql_returns_series_on_a_real_prometheus(fresh_traffic, query):
    expr = expand_promql(query.query, rate_interval="1m", range_="10m")
    result = fresh_traffic.query(expr)
    assert result, f"no series: {expr}"


@pytest.mark.parametrize("query", PROMQL, ids=_id)
def test_promql_evaluates_on_the_stack_prometheus(stack, settings, query):
    base = f"http://{settings.bind_host}:{settings.prometheus_port}"
    expr = expand_promql(query.query, rate_interval="1m", range_="10m")
    body = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body


def test_the_stack_prometheus_scrapes_the_api(stack, settings):
    base = f"http://{settings.bind_host}:{settings.prometheus_port}"
    body = httpx.get(f"{base}/api/v1/query", params={"query": 'up{job="api"}'}, timeout=10).json()
    assert [float(r["value"][1]) for r in body["data"]["result"]] == [1.0]
