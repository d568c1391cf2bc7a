"""Prometheus metrics of the prediction API, served on GET /metrics.

Each app owns a registry (several apps in one process never collide). Requests are
counted and timed by route template (never the raw path: unknown paths share the label
`<unmatched>`), method and status, by a plain ASGI middleware.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
CHAR_BUCKETS = (0, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000)
ERROR_KINDS = (
    "validation",  # 422: the request body or query failed validation
    "auth_missing",  # 401: no API key
    "auth_invalid",  # 401: unknown API key
    "forbidden",  # 403: the key's role may not use the route
    "not_found",  # 404/405: no such route or method
    "model_not_ready",  # 503: no model loaded
    "model_error",  # 500: the model raised while predicting
    "internal",  # 500: anything else
    "reload_failed",  # a refresh (admin or periodic) could not load the champion
    "inference_log",  # a write of the inference log failed (the database was down, ...)
)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        route = ("route", "method", "status")
        self.requests = Counter(
            "rakuten_api_requests", "HTTP requests by route, method and status", route, registry=r
        )
        self.latency = Histogram(
            "rakuten_api_request_duration_seconds",
            "HTTP request latency by route, method and status",
            route,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess = Histogram(
            "rakuten_api_preprocess_duration_seconds",
            "Text cleaning and feature extraction, per call into the model",
            ["endpoint"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "rakuten_api_inference_duration_seconds",
            "The estimator's scoring, per call into the model",
            ["endpoint"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.input_chars = Histogram(
            "rakuten_api_input_chars",
            "Length in characters of each input text (0: no description)",
            ["field"],
            buckets=CHAR_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rakuten_api_batch_size",
            "Products per /predict/batch request",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.predictions = Counter(
            "rakuten_api_predictions",
            "Top-1 predictions by product type",
            ["prdtypecode"],
            registry=r,
        )
        self.confidence = Histogram(
            "rakuten_api_prediction_confidence",
            "Probability of the top-1 product type",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=r,
        )
        self.model_info = Gauge(
            "rakuten_api_model_info",
            "The model being served (value 1)",
            ["name", "version", "alias", "source"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "rakuten_api_model_loaded_timestamp_seconds",
            "When the served model was swapped in",
            registry=r,
        )
        self.model_reloads = Counter(
            "rakuten_api_model_reloads",
            "Model refreshes by outcome (swapped, unchanged, failed) and trigger",
            ["outcome", "trigger"],
            registry=r,
        )
        self.errors = Counter("rakuten_api_errors", "Errors by kind", ["kind"], registry=r)
        self.log_pending = Gauge(
            "rakuten_api_inference_log_pending_rows",
            "Inference log rows not yet written to PostgreSQL",
            registry=r,
        )
        self.log_written = Counter(
            "rakuten_api_inference_log_written_rows", "Inference log rows written", registry=r
        )
        self.log_dropped = Counter(
            "rakuten_api_inference_log_dropped_rows",
            "Inference log rows dropped because the buffer was full",
            registry=r,
        )
        for kind in ERROR_KINDS:  # every series exists from the start, at 0
            self.errors.labels(kind)

    def swapped(self, previous, current) -> None:
        if previous is not None:
            self.model_info.remove(previous.name, previous.version, previous.alias, previous.source)
        self.model_info.labels(current.name, current.version, current.alias, current.source).set(1)
        self.model_loaded.set(time.time())


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: no per-request task or copy)."""

    def __init__(self, app, metrics: ServingMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # For handlers that report the whole request's latency (the inference log).
        scope.setdefault("state", {})["started"] = started
        status = 500

        async def send_and_record_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record_status)
        except Exception:
            status = 500
            self.metrics.errors.labels("internal").inc()
            raise
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unmatched>"
            labels = (path, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            if status in (404, 405):
                self.metrics.errors.labels("not_found").inc()
