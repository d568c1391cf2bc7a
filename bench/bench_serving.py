"""Benchmark of the prediction API; prints one JSON object.

A real server (`rakuten-mlops serve`, one uvicorn process) on a free loopback port,
driven by a keep-alive HTTP/1.1 load generator (asyncio, raw sockets, so the client is
not the bottleneck), on real products:

* /predict at concurrency 1 (latency) and 4 (throughput): p50/p99 ms, requests/s;
* /predict/batch (64 products per request): rows/s;
* the model's own in-process scoring (predict_proba, or decision_function for margin
  models) on the same inputs, one product per call, on one core: the ceiling the
  service is compared with;
* unpickling the model for every request (joblib.load + scoring): what the student
  projects of this family do.

The model is the registry's champion (MODEL_NAME@MODEL_ALIAS) when there is one,
otherwise the training pipeline's default model (rakuten_mlops.ml.features: word and
character TF-IDF, LinearSVC) trained here on the real sample, served through the
export fallback. Targets: p50 < 10 ms, p99 < 50 ms for single
predictions, service >= 0.5x the in-process single-core rate.

    .venv/bin/python bench/bench_serving.py [--seconds 8]
"""

from __future__ import annotations

import os

# One core for the in-process ceiling: no BLAS thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "rakuten"
BATCH_SIZE = 64
N_PRODUCTS = 500
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(latencies: list[float], seconds: float, items_per_request: int = 1) -> dict:
    return {
        "requests": len(latencies),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "rows_per_s": round(len(latencies) * items_per_request / seconds, 1),
    }


# ------------------------------------------------------------------------- inputs


def real_products() -> list[dict]:
    import pandas as pd

    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    candidates = [
        settings.path(settings.raw_data_dir) / "X_test_update.csv",
        settings.path(settings.raw_data_dir) / "X_train_update.csv",
        SHARED / "X_train_sample.csv",
    ]
    path = next(p for p in candidates if p.is_file())
    frame = pd.read_csv(path, index_col=0).head(N_PRODUCTS)
    return [
        {"designation": row.designation}
        | ({"description": row.description} if isinstance(row.description, str) else {})
        for row in frame.itertuples()
    ]


def bench_model(settings, workdir: Path):
    """(estimator, how it is served, server env): the champion, else one trained here."""
    from rakuten_mlops.ml.trust import UntrustedModel, recorded_sha256
    from rakuten_mlops.serving.model import (
        RegistryUnavailable,
        champion_version,
        configure_mlflow_client,
        load_registry_version,
    )

    configure_mlflow_client(settings)
    try:
        version = champion_version(settings)
        expected = recorded_sha256(settings, version.name, version.version)
        model = load_registry_version(settings, version, expected)
        return model.estimator, f"{model.name} v{model.version} (registry champion)", {}
    except (RegistryUnavailable, UntrustedModel) as exc:
        reason = str(exc)
    import joblib
    import pandas as pd

    from rakuten_mlops.ml.features import build_pipeline

    x = pd.read_csv(SHARED / "X_train_sample.csv", index_col=0)
    y = pd.read_csv(SHARED / "Y_train_sample.csv", index_col=0)["prdtypecode"]
    # The training pipeline's default model: word + character TF-IDF, LinearSVC.
    pipeline = build_pipeline(
        "linear_svc", nltk_data_dir=str(settings.path(settings.nltk_data_dir))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.fit(x[["designation", "description"]], y)
    models = workdir / "models"
    models.mkdir()
    joblib.dump(pipeline, models / "bench.joblib")
    (models / f"{settings.model_name}.json").write_text(json.dumps({"version": "bench"}))
    env = {
        "MODELS_DIR": str(models),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",  # serve the export
    }
    return (
        pipeline,
        f"linear_svc (rakuten_mlops.ml.features defaults) trained here on {len(x)} real "
        f"products ({reason})",
        env,
    )


# ------------------------------------------------------------------------- server


class Server:
    def __init__(self, workdir: Path, env: dict[str, str]):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client_key = secrets.token_urlsafe(24)
        self.log = workdir / "api.log"
        self.env = {
            **os.environ,
            "API_CLIENT_KEY": self.client_key,
            "API_ADMIN_KEY": secrets.token_urlsafe(24),
            "API_MODEL_POLL_SECONDS": "0",
            "API_MAX_BATCH_SIZE": str(BATCH_SIZE),
            # The inference log is on, as in production, into the tests' database.
            "POSTGRES_DB": os.environ.get("BENCH_POSTGRES_DB", "rakuten_lake_test"),
            **env,
        }

    def __enter__(self) -> Server:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rakuten_mlops", "serve", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def request_bytes(port: int, path: str, key: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _connection(port, requests, stop_at, latencies, statuses, offset):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(_CONTENT_LENGTH.search(head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[int(head[9:12])] += 1
    finally:
        writer.close()


def load(port: int, requests: list[bytes], concurrency: int, seconds: float, warmup: float):
    async def run(duration: float):
        latencies: list[float] = []
        statuses: Counter = Counter()
        stop_at = time.perf_counter() + duration
        await asyncio.gather(
            *[
                _connection(port, requests, stop_at, latencies, statuses, c * 97)
                for c in range(concurrency)
            ]
        )
        return latencies, statuses

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(run(warmup))
    started = time.perf_counter()
    latencies, statuses = runner(run(seconds))
    return latencies, statuses, time.perf_counter() - started


# ------------------------------------------------------------------------- in-process


def score_function(estimator):
    """The model's own scoring: predict_proba, or decision_function for margin models."""
    return getattr(estimator, "predict_proba", None) or estimator.decision_function


def in_process(estimator, products: list[dict], seconds: float) -> dict:
    import pandas as pd

    score = score_function(estimator)

    frames = [
        pd.DataFrame(
            {"designation": [p["designation"]], "description": [p.get("description")]},
            dtype=object,
        )
        for p in products
    ]
    for frame in frames[:20]:  # warm-up
        score(frame)
    latencies = []
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    i = 0
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        score(frames[i % len(frames)])
        latencies.append(time.perf_counter() - t)
        i += 1
    single = summary(latencies, time.perf_counter() - started)
    batch_frame = pd.DataFrame(
        {
            "designation": [p["designation"] for p in products[:BATCH_SIZE]],
            "description": [p.get("description") for p in products[:BATCH_SIZE]],
        },
        dtype=object,
    )
    batch_latencies = []
    stop_at = time.perf_counter() + seconds / 2
    started = time.perf_counter()
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        score(batch_frame)
        batch_latencies.append(time.perf_counter() - t)
    batch = summary(batch_latencies, time.perf_counter() - started, BATCH_SIZE)
    return {"single": single, "batch": batch}


def pickle_per_request(estimator, products: list[dict], workdir: Path, requests: int) -> dict:
    import joblib
    import pandas as pd

    path = workdir / "model.pkl"
    joblib.dump(estimator, path)
    latencies = []
    started = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        model = joblib.load(path)
        product = products[i % len(products)]
        score_function(model)(
            pd.DataFrame(
                {
                    "designation": [product["designation"]],
                    "description": [product.get("description")],
                },
                dtype=object,
            )
        )
        latencies.append(time.perf_counter() - t)
    result = summary(latencies, time.perf_counter() - started)
    result["model_file_mb"] = round(path.stat().st_size / 1e6, 1)
    return result


# ------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    args = parser.parse_args()
    os.environ.setdefault("POSTGRES_DB", os.environ.get("BENCH_POSTGRES_DB", "rakuten_lake_test"))

    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    products = real_products()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        workdir = Path(folder)
        estimator, model_description, env = bench_model(settings, workdir)
        naive = pickle_per_request(estimator, products, workdir, requests=20)
        as_loaded = in_process(estimator, products, args.seconds)
        # What the service does once at load time (coef_ memory layout, same values):
        # the ceiling is the model after it, so the comparison is like for like.
        from rakuten_mlops.serving.model import LoadedModel

        LoadedModel("bench", "0", "-", "export", estimator).prepare()
        ceiling = in_process(estimator, products, args.seconds)
        with Server(workdir, env) as server:
            key = server.client_key
            singles = [request_bytes(server.port, "/predict", key, p) for p in products]
            batches = [
                request_bytes(
                    server.port,
                    "/predict/batch",
                    key,
                    {"items": products[i : i + BATCH_SIZE]},
                )
                for i in range(0, len(products) - BATCH_SIZE + 1, BATCH_SIZE)
            ]
            results = {}
            for name, requests, concurrency, per_request in (
                ("predict_c1", singles, 1, 1),
                ("predict_c4", singles, 4, 1),
                ("batch_c2", batches, 2, BATCH_SIZE),
            ):
                latencies, statuses, elapsed = load(
                    server.port, requests, concurrency, args.seconds, warmup=1.0
                )
                results[name] = {
                    "concurrency": concurrency,
                    **summary(latencies, elapsed, per_request),
                    "statuses": dict(statuses),
                }
                if per_request == 1:
                    del results[name]["rows_per_s"]
            server_log = server.log.read_text()
        # The machine may be shared: measure the ceiling again after the service and keep
        # the better of the two runs (the conservative choice for the ratio).
        again = in_process(estimator, products, args.seconds / 2)
        for key in ("single", "batch"):
            if again[key]["rows_per_s"] > ceiling[key]["rows_per_s"]:
                ceiling[key] = again[key]
    best_rate = max(
        results["predict_c1"]["requests_per_s"], results["predict_c4"]["requests_per_s"]
    )
    ratio = best_rate / ceiling["single"]["requests_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "serving",
                "model": model_description,
                "products": f"{len(products)} real products",
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2),
                },
                "service": {
                    "predict_latency_concurrency_1": results["predict_c1"],
                    "predict_throughput_concurrency_4": results["predict_c4"],
                    f"predict_batch_{BATCH_SIZE}_concurrency_2": results["batch_c2"],
                },
                "in_process_single_core": {
                    "score_one_product": ceiling["single"],
                    f"score_{BATCH_SIZE}_products": ceiling["batch"],
                },
                "in_process_as_unpickled": {
                    "score_one_product": as_loaded["single"],
                    f"score_{BATCH_SIZE}_products": as_loaded["batch"],
                },
                "pickle_load_per_request": naive,
                "ratios": {
                    "service_vs_in_process_single": round(ratio, 3),
                    "service_vs_pickle_per_request": round(best_rate / naive["requests_per_s"], 1),
                    "batch_service_vs_in_process_rows": round(
                        results["batch_c2"]["rows_per_s"] / ceiling["batch"]["rows_per_s"], 3
                    ),
                },
                "targets": {
                    "p50_under_10ms": results["predict_c1"]["p50_ms"] < 10,
                    "p99_under_50ms": results["predict_c1"]["p99_ms"] < 50,
                    "service_at_least_half_in_process": ratio >= 0.5,
                    "no_errors": all(set(r["statuses"]) == {200} for r in results.values()),
                },
                "server_errors_logged": server_log.count("ERROR"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
