"""/metrics through a real Prometheus: a private prometheus process, configured by local
mode's own prometheus_config() (its `api` job pointed at the test server), scrapes the
running service; the series the dashboards need are queried back with PromQL."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from rakuten_mlops.localstack.services import prometheus_config
from tests.support.serving import CLIENT, PrivatePrometheus, wait_for

pytestmark = pytest.mark.stack


@pytest.fixture()
def prometheus(api, settings):
    if not (shutil.which("prometheus") or Path("/usr/bin/prometheus").exists()):
        pytest.skip("prometheus is not installed (`make setup` installs it)")
    port = int(api.base_url.rsplit(":", 1)[1])
    config = prometheus_config(settings.model_copy(update={"api_port": port}))
    config["global"]["scrape_interval"] = "1s"  # the test cannot wait 15 s per scrape
    # Only the api job: the shared MLflow is not this test's business.
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == "api"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
    folder = Path(tempfile.mkdtemp(prefix="rakuten-serving-prom-"))
    config["global"]["evaluation_interval"] = "1s"
    server = PrivatePrometheus(folder, config)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def value(prometheus: PrivatePrometheus, expr: str) -> float:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else float("nan")


def test_prometheus_scrapes_the_service_metrics(api, registered, prometheus):
    wait_for(lambda: value(prometheus, 'up{job="api"}') == 1, 20, what="api target up")
    for i in range(5):
        api.post("/predict", json={"designation": f"Piscine hors sol {i}"}, headers=CLIENT)
    api.post("/predict/batch", json={"items": [{"designation": "Jeu PS4"}] * 3}, headers=CLIENT)
    api.post("/predict", json={"designation": ""}, headers=CLIENT)  # a validation error
    api.post("/predict", json={"designation": "x"})  # no key
    api.get("/model", headers={"X-API-Key": "wrong"})
    wait_for(
        lambda: (
            value(prometheus, 'sum(rakuten_api_requests_total{route="/predict",status="200"})') >= 5
        ),
        20,
        what="predictions scraped",
    )
    checks = {
        # request count and latency by route and status
        'rakuten_api_requests_total{route="/predict/batch",method="POST",status="200"}': 1,
        'rakuten_api_requests_total{route="/predict",status="422"}': 1,
        'rakuten_api_requests_total{route="/predict",status="401"}': 1,
        'rakuten_api_requests_total{route="/model",status="401"}': 1,
        'sum(rakuten_api_request_duration_seconds_count{route="/predict",status="200"})': 5,
        'count(rakuten_api_request_duration_seconds_bucket{route="/predict",status="200"})': 15,
        # preprocessing and inference latency, input lengths, batch sizes
        'rakuten_api_preprocess_duration_seconds_count{endpoint="predict"}': 5,
        'rakuten_api_inference_duration_seconds_count{endpoint="predict_batch"}': 1,
        'rakuten_api_input_chars_count{field="designation"}': 8,
        'rakuten_api_input_chars_bucket{field="description",le="0.0"}': 8,
        "rakuten_api_batch_size_sum": 3,
        # predictions by class, confidence
        "sum(rakuten_api_predictions_total)": 8,
        "count(rakuten_api_predictions_total)": 1,
        "rakuten_api_prediction_confidence_count": 8,
        # errors by kind
        'rakuten_api_errors_total{kind="validation"}': 1,
        'rakuten_api_errors_total{kind="auth_missing"}': 1,
        'rakuten_api_errors_total{kind="auth_invalid"}': 1,
        # the inference log writer
        "rakuten_api_inference_log_written_rows_total": 1,
    }
    for expr, at_least in checks.items():  # the last requests may await the next scrape
        wait_for(lambda e=expr, n=at_least: value(prometheus, e) >= n, 10, what=expr)
    (info,) = prometheus.query(f'rakuten_api_model_info{{name="{registered["name"]}"}}')
    assert info["metric"]["alias"] == "champion" and info["metric"]["source"] == "registry"
    assert info["metric"]["version"] in {"1", "2"} and info["value"][1] == "1"
    # What a dashboard would plot: latency quantiles. A rate needs the series to grow
    # between two scrapes, so predict again now that the first ones were scraped.
    for i in range(5):
        api.post("/predict", json={"designation": f"Tapis de jeu {i}"}, headers=CLIENT)
    wait_for(
        lambda: (
            value(
                prometheus,
                "histogram_quantile(0.99, sum by (le) "
                '(rate(rakuten_api_request_duration_seconds_bucket{route="/predict"}[1m])))',
            )
            > 0
        ),
        20,
        what="a p99 latency",
    )
