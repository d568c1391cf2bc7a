#!/usr/bin/env python3
"""Benchmark (issue 16): batch-prediction rows/s of the `batch_predictions` DAG on 1 and
on 2 Celery workers, against `predict-batch` in one process and a naive per-row loop.

Input: ../shared/data/translated (57,375 products), loaded as the unlabelled (`test`)
products of a database of this benchmark's own. Model: the project's text pipeline
(rakuten_mlops.ml.features, with the full profile's word, char and title TF-IDF) and a
logistic-loss linear model trained on 10,000 of those products, registered in the
running MLflow under a name of its own, trusted and made its champion (all removed at
the end, with the database).

Measured, each from an empty `batch_predictions`, the naive loop once and the others in
BENCH_ROUNDS rounds (3) of one measurement each (a shared VM's speed drifts: ratios are
taken within a round, and their median reported):
* naive: one `predict` call and one INSERT + commit per product, on the first
  BENCH_NAIVE_ROWS products (the rate is what counts);
* single process: `predict_lake` (what `predict-batch` runs) with the model loaded once,
  shards of BENCH_SHARD_SIZE, chunks of 1,000: the ceiling per core;
* pinned processes: the same code forked onto 1 and onto 2 cores (each process pinned,
  sharing the shards), without Airflow: what this machine gives two copies of the work
  at the time of the round (a 2-vCPU VM's cores share caches and more);
* DAG on N Celery workers (N = 1, 2; as CeleryExecutor mode runs them, with
  CELERY_PIN_WORKERS: each worker on a core of its own, CELERY_WORKER_CONCURRENCY task
  slots; a Redis of the benchmark's own and `airflow celery worker` processes): `airflow
  dags test batch_predictions --use-executor`; rate = products / the span of the mapped
  shard tasks (first start to last end, from Airflow's task instances), and also / the
  whole run's wall time (which adds the run's planning and summary tasks); with, for the
  shards' span, the cores' busy share, the share the VM's host stole, and the cores each
  kind of process used (the workers' tasks, PostgreSQL, the stack's services...).
While it runs, the stack's services the runs do not use are paused (UNUSED_SERVICES:
the scheduler, the DAG processor, the UIs...; a deployment's worker machines do not host
them) and started again at the end.
Targets: 2 workers >= 1.6x one worker; one worker >= 0.8x the single process; the
2-worker scaling is also given as a share of the pinned processes' scaling. Prints one
JSON object, with the workers needed for 10 million products in one hour at the measured
per-worker rate. Without the translated set it says so and exits 0. Needs `make up`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAKUTEN_SHARED_DATA", ROOT.parent / "shared" / "data"))
TRANSLATED = SHARED / "translated" / "X_train_translated.csv"
LABELS = SHARED / "translated" / "Y_train_translated.csv"
BENCH_DB = "rakuten_bench_batch"
SHARD_SIZE = int(os.environ.get("BENCH_SHARD_SIZE", "14400"))
NAIVE_ROWS = int(os.environ.get("BENCH_NAIVE_ROWS", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TRAIN_ROWS = 10_000
TARGET_SCALING, TARGET_WORKER_VS_PROCESS = 1.6, 0.8
PROJECTION_PRODUCTS, PROJECTION_SECONDS = 10_000_000, 3600

os.environ.update({"POSTGRES_DB": BENCH_DB})
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ingest as base  # noqa: E402 - its database helpers

base.BENCH_DB = BENCH_DB  # its recreate/drop helpers act on this benchmark's database
os.environ["POSTGRES_DB"] = BENCH_DB  # bench_ingest's import set its own


def note(message: str) -> None:
    print(f"[bench_batch_predictions] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- set-up


def load_products(settings, folder: Path) -> int:
    """The translated products as the lake's unlabelled products (challenge X_test)."""
    from rakuten_mlops import schema
    from rakuten_mlops.ingest import load_text, sources
    from rakuten_mlops.storage import connect

    base.recreate_database(settings)
    with connect(settings) as conn:
        schema.migrate(conn)
        conn.commit()
    raw = folder / "raw"
    (raw / "images" / "image_test").mkdir(parents=True)
    (raw / "images" / "image_train").mkdir()
    (raw / sources.X_TEST).write_bytes(TRANSLATED.read_bytes())
    (raw / sources.X_TRAIN).write_text(",designation,description,productid,imageid\n")
    (raw / sources.Y_TRAIN).write_text(",prdtypecode\n")
    categories = base.RAKUTEN / "category_names.csv"
    (raw / sources.CATEGORIES).write_bytes(categories.read_bytes())
    lake = settings.model_copy(update={"raw_data_dir": raw})
    load_text(lake, "bench-batch-predictions", "all")
    with connect(settings) as conn:
        return conn.execute("SELECT count(*) FROM products WHERE source_split = 'test'"
                            ).fetchone()[0]


def register_champion(settings) -> str:
    """A trained project pipeline as the champion of a registered model of its own."""
    import mlflow
    import mlflow.sklearn
    import pandas as pd
    from sklearn.linear_model import SGDClassifier

    from rakuten_mlops.ml import tracking
    from rakuten_mlops.ml.features import build_pipeline
    from rakuten_mlops.ml.profile import load_profile
    from rakuten_mlops.ml.trust import trust_version

    x = pd.read_csv(TRANSLATED, index_col=0, nrows=TRAIN_ROWS)
    y = pd.read_csv(LABELS, index_col=0, nrows=TRAIN_ROWS)["prdtypecode"]
    # The TF-IDF parts of the full profile (what `ml_pipeline` trains on the whole
    # catalogue): the model cost per product a real champion has.
    features = load_profile("full")["features"]
    pipeline = build_pipeline("linear_svc", features=features,
                              nltk_data_dir=str(settings.path(settings.nltk_data_dir)))
    pipeline.set_params(clf=SGDClassifier(loss="log_loss", max_iter=10, tol=None,
                                          random_state=0))
    pipeline.fit(x[["designation", "description"]], y)
    name = f"bench-batch-{uuid.uuid4().hex[:8]}"
    tracking.configure(settings, "admin")
    client = tracking.client(settings, "admin")
    experiment = tracking.experiment_id(settings, name)
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.sklearn.log_model(pipeline, name="model", registered_model_name=name,
                                 pip_requirements=[], serialization_format="cloudpickle")
    trust_version(settings, name, "1", run.info.run_id, reason="benchmark")
    client.set_registered_model_alias(name, "champion", "1")
    return name


def forget_model(settings, name: str) -> None:
    from rakuten_mlops.ml import tracking

    client = tracking.client(settings, "admin")
    client.delete_registered_model(name)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        for run in client.search_runs([experiment.experiment_id]):
            client.delete_run(run.info.run_id)
        client.delete_experiment(experiment.experiment_id)


# The stack's services the DAG runs do not use (the runs' tasks go through the API server
# to the benchmark's own Celery workers; `dags test` schedules them). A deployment's
# worker machines do not host them, and here their idle loops (~0.1 of a core: the
# scheduler, the DAG processor...) take time from two busy workers. Paused while the
# benchmark runs, started again at its end.
UNUSED_SERVICES = ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "api",
                   "control-room", "pgadmin", "prometheus")


@contextlib.contextmanager
def unused_services_paused(settings):
    """Stop the running UNUSED_SERVICES (`stack stop`), then start them again (`stack
    start`); a service the user stopped, or not running, is left as it is."""
    from rakuten_mlops.localstack.supervisor import Supervisor

    supervisor, paused = Supervisor(settings), []
    try:
        for service in supervisor.services:
            name = service.name
            if (name in UNUSED_SERVICES and supervisor.process(service)
                    and not supervisor.held(service)):
                supervisor.stop_service(name, report=note)
                paused.append(name)
        yield paused
    finally:
        for name in paused:
            supervisor.start_service(name, report=note)


def empty_predictions(settings) -> None:
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        conn.execute("DELETE FROM batch_predictions")
        conn.execute("DELETE FROM batch_prediction_runs")
        conn.commit()


# --------------------------------------------------------------------------- the ways


NAIVE_INSERT = """
INSERT INTO batch_predictions
    (productid, prdtypecode, confidence, top_k, model_name, model_version, run_id, predicted_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""


def run_naive(settings, model) -> float:
    """Rows/s of one predict call and one committed INSERT per product."""
    from rakuten_mlops.serving.batch import prediction_row
    from rakuten_mlops.serving.batch import start_run as start
    from rakuten_mlops.storage import connect

    empty_predictions(settings)
    run = start(settings, model, "test", "bench-naive")
    with connect(settings, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT productid, designation, description FROM products ORDER BY productid"
            " LIMIT %s", (NAIVE_ROWS,)).fetchall()
        started = time.perf_counter()
        for productid, designation, description in rows:
            top = model.predict([designation], [description], 3).top[0]
            conn.execute(NAIVE_INSERT, (*prediction_row(productid, top), model.name,
                                        model.version, run["run_id"], datetime.now(UTC)))
        return len(rows) / (time.perf_counter() - started)


def run_single_process(settings, model, products: int) -> float:
    from rakuten_mlops.serving.batch import predict_lake

    empty_predictions(settings)
    started = time.perf_counter()
    summary = predict_lake(settings, model=model, shard_size=SHARD_SIZE, run_id="bench-single")
    seconds = time.perf_counter() - started
    assert summary["rows_predicted"] == products, summary
    return products / seconds


def run_pinned_processes(settings, model, products: int, processes: int) -> float:
    """Rows/s of `processes` forked copies of the single-process code, each pinned to a
    core of its own and given every `processes`-th shard, without Airflow or Celery: what
    spreading the shards over that many cores gives on this machine, with no framework."""
    from rakuten_mlops.serving.batch import finish_run, predict_shard, shard_ranges
    from rakuten_mlops.serving.batch import start_run as start

    empty_predictions(settings)
    run = start(settings, model, "test", f"bench-pinned-{processes}")
    ranges = shard_ranges(settings, "test", SHARD_SIZE)
    started = time.perf_counter()
    children = []
    for core in range(processes):
        pid = os.fork()
        if pid == 0:  # the child: its shards, then out without the parent's clean-up
            status = 1
            try:
                os.sched_setaffinity(0, {core % os.cpu_count()})
                for shard in ranges[core::processes]:
                    predict_shard(settings, run, shard, model)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        children.append(pid)
    failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    seconds = time.perf_counter() - started
    if failed:
        raise RuntimeError(f"{len(failed)} of {processes} pinned processes failed")
    assert finish_run(settings, run, len(ranges))["rows_predicted"] == products
    return products / seconds


def _spawn(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen, stop_signal=signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, stop_signal)
        process.wait(timeout=30)


class CpuSample(NamedTuple):
    at: float  # wall clock
    busy: int  # the cores' busy time so far (/proc/stat ticks)
    total: int
    stolen: int  # taken by the VM's host
    processes: dict[int, tuple[str, float]]  # pid: (kind, CPU seconds so far)


class CpuSampler(threading.Thread):
    """The machine's busy, stolen and total CPU time (/proc/stat) and every process's CPU
    time every 0.5 s, wall-clock stamped: how busy the cores were while the shards ran,
    who kept them busy, and how much of their time the VM's host took (steal)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[CpuSample] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):  # a sample costs ~5 ms of CPU
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
            total = sum(fields[:8])  # user .. steal (guest time is within user already)
            idle = fields[3] + fields[4]  # idle + iowait
            self.samples.append(
                CpuSample(time.time(), total - idle, total, fields[7], _processes()))

    def _inside(self, start: float, end: float) -> list[CpuSample]:
        return [sample for sample in self.samples if start <= sample.at <= end]

    def share(self, start: float, end: float, field: str) -> float | None:
        """The share of the cores' time between start and end that was `busy` or
        `stolen`."""
        inside = self._inside(start, end)
        if len(inside) < 2:
            return None
        first, last = inside[0], inside[-1]
        total = max(last.total - first.total, 1)
        return round((getattr(last, field) - getattr(first, field)) / total, 2)

    def cores_by_process(self, start: float, end: float) -> dict[str, float]:
        """Cores used on average between start and end, by kind of process (a process
        counts only between the samples that saw it)."""
        inside = self._inside(start, end)
        if len(inside) < 2:
            return {}
        seconds, used = inside[-1].at - inside[0].at, {}
        for before, after in itertools.pairwise(inside):
            for pid, (kind, cpu) in after.processes.items():
                if pid in before.processes:
                    used[kind] = used.get(kind, 0.0) + cpu - before.processes[pid][1]
        return {kind: round(cpu / seconds, 2)
                for kind, cpu in sorted(used.items(), key=lambda item: -item[1]) if cpu > 0}


# Kinds of process on the machine during a DAG run, first match wins.
PROCESS_KINDS = [
    ("celery worker tasks", ("celery worker", "airflow worker --")),
    ("postgres", ("postgres",)),
    ("dags test (the run's loop)", ("dags test",)),
    ("airflow api server", ("api_server", "api-server")),
    ("redis", ("redis-server",)),
    ("other airflow services", ("airflow",)),
    ("object store", ("weed", "minio")),
]


def _processes() -> dict[int, tuple[str, float]]:
    import psutil

    found = {}
    for process in psutil.process_iter(["cmdline", "cpu_times"]):
        times, command = process.info["cpu_times"], " ".join(process.info["cmdline"] or [])
        if times is None:
            continue
        kind = next((name for name, marks in PROCESS_KINDS
                     if any(mark in command for mark in marks)), "other")
        found[process.pid] = (kind, times.user + times.system)
    return found


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout} s")
        time.sleep(0.5)


def run_dag(settings, workers: int, products: int, folder: Path) -> dict:
    """The DAG on `workers` Celery workers: rows/s over the shard tasks and the run."""
    from pydantic import SecretStr

    from rakuten_mlops.localstack.celery import redis_service, worker_names, worker_service
    from rakuten_mlops.localstack.service import venv_bin
    from rakuten_mlops.localstack.services import airflow_env

    empty_predictions(settings)
    mode = settings.model_copy(update={
        "airflow_executor": "celery", "redis_port": _free_port(), "celery_workers": workers,
        "redis_password": SecretStr(secrets.token_urlsafe(24)),
        # One core per worker (what the Helm values request), so that 1 worker compares
        # with one process and 2 workers with 1; task slots as the stack's default.
        "celery_pin_workers": True,
    })
    env = {**os.environ, "POSTGRES_DB": BENCH_DB, "MODEL_NAME": settings.model_name,
           **airflow_env(mode), "PATH": f"{venv_bin()}{os.pathsep}{os.environ['PATH']}"}
    broker = redis_service(mode.model_copy(update={"stack_dir": folder / f"redis{workers}"}))
    broker.prepare()
    processes = [_spawn(broker.command, env, folder / f"redis{workers}.log")]
    try:
        _wait(broker.healthy, 20, "redis")
        services = [worker_service(mode, env, name) for name in worker_names(mode)]
        processes += [_spawn(s.command, {**env, **s.env}, folder / f"{s.name}-{workers}.log")
                      for s in services]
        for service in services:
            _wait(service.healthy, 120, service.name)
        sampler = CpuSampler()
        sampler.start()
        started = time.perf_counter()
        result = subprocess.run(
            [str(venv_bin() / "airflow"), "dags", "test", "batch_predictions",
             "--use-executor", "--conf", json.dumps({"shard_size": SHARD_SIZE})],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
        sampler.stopped.set()
        if result.returncode != 0:
            raise RuntimeError((result.stdout + result.stderr)[-3000:])
    finally:
        for process in processes[1:]:
            _stop(process, signal.SIGKILL)
        _stop(processes[0])
    shards = _shards(settings)
    first, last = min(s["start"] for s in shards), max(s["end"] for s in shards)
    span = last - first
    return {"workers": workers, "hosts": sorted({s["host"] for s in shards}),
            "shard_span_s": round(span, 2), "wall_s": round(wall, 2),
            "rows_per_s": round(products / span, 1),
            "rows_per_s_wall": round(products / wall, 1),
            # Near 1.0: the cores were the limit; well below: the shards waited.
            "cpu_busy_during_shards": sampler.share(first, last, "busy"),
            "cpu_stolen_during_shards": sampler.share(first, last, "stolen"),
            "cores_by_process_during_shards": sampler.cores_by_process(first, last),
            "shards": [{"host": s["host"], "start_s": round(s["start"] - first, 2),
                        "seconds": round(s["end"] - s["start"], 2)} for s in shards]}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _shards(settings) -> list[dict]:
    """The last finished run's shard tasks: worker, start and end (epoch seconds)."""
    import psycopg

    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        run_id = conn.execute(
            "SELECT run_id FROM batch_prediction_runs WHERE finished_at IS NOT NULL"
            " ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    with psycopg.connect(settings.postgres_dsn(settings.airflow_db)) as conn:
        rows = conn.execute(
            "SELECT hostname, extract(epoch FROM start_date), extract(epoch FROM end_date)"
            " FROM task_instance WHERE dag_id = 'batch_predictions' AND run_id = %s"
            " AND task_id = 'predict_shard' ORDER BY start_date", (run_id,)).fetchall()
    return [{"host": host, "start": float(start), "end": float(end)}
            for host, start, end in rows]


# --------------------------------------------------------------------------- main


def main() -> int:
    if not TRANSLATED.is_file():
        print(f"bench_batch_predictions: skipped, {TRANSLATED} is not there "
              "(the 57k translated set in ../shared/data)")
        return 0
    from rakuten_mlops.serving.batch import champion
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    name = None
    with (tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp,
          unused_services_paused(settings) as paused):
        note(f"paused while it runs: {', '.join(paused) or 'nothing'}")
        folder = Path(tmp)
        try:
            products = load_products(settings, folder)
            note(f"{products} products loaded; training and registering the model")
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links
                name = register_champion(settings)
            settings = settings.model_copy(update={"model_name": name})
            model = champion(settings)
            note("naive per-row loop")
            naive = run_naive(settings, model)
            singles, pinned, dags = [], {1: [], 2: []}, {1: [], 2: []}
            # Rounds, each measuring every way once: a shared VM's speed drifts, and the
            # ratios compare measurements of one round (their median is reported).
            for round_ in range(1, ROUNDS + 1):
                note(f"round {round_}/{ROUNDS}: single process (predict-batch's code)")
                singles.append(run_single_process(settings, model, products))
                note(f"round {round_}/{ROUNDS}: the same code forked onto 1 and onto 2 "
                     "pinned cores (the machine's own scaling)")
                for processes in (1, 2):
                    pinned[processes].append(
                        run_pinned_processes(settings, model, products, processes))
                for workers in (1, 2):
                    note(f"round {round_}/{ROUNDS}: the DAG on {workers} Celery worker(s)")
                    dags[workers].append(run_dag(settings, workers, products, folder))
        finally:
            if name:
                forget_model(settings, name)
            base.drop_database(settings)
    print(json.dumps(report(products, naive, singles, pinned, dags), indent=2))
    return 0


def report(products: int, naive: float, singles: list[float], pinned: dict, dags: dict) -> dict:
    one = [run["rows_per_s"] for run in dags[1]]
    two = [run["rows_per_s"] for run in dags[2]]
    scaling = [b / a for a, b in zip(one, two, strict=True)]
    machine = [b / a for a, b in zip(pinned[1], pinned[2], strict=True)]
    per_hour_target = PROJECTION_PRODUCTS / PROJECTION_SECONDS
    return {
        "products": products,
        "shard_size": SHARD_SIZE,
        "rounds": ROUNDS,
        "naive_rows_per_s": round(naive, 1),
        "single_process_rows_per_s": _rates(singles),
        "dag_1_worker_rows_per_s": _rates(one),
        "dag_2_workers_rows_per_s": _rates(two),
        "ratio_2_vs_1_worker": _ratios(scaling),
        "target_2_vs_1_worker": TARGET_SCALING,
        "ratio_1_worker_vs_single_process": _ratios(
            [a / b for a, b in zip(one, singles, strict=True)]),
        "target_1_worker_vs_single_process": TARGET_WORKER_VS_PROCESS,
        "ratio_single_process_vs_naive": round(statistics.median(singles) / naive, 1),
        "pinned_processes_rows_per_s": {n: _rates(rates) for n, rates in pinned.items()},
        # What two cores give two independent copies of the work in the same round, with
        # no framework at all (a VM's cores share caches and more; it varies by round).
        "ratio_2_vs_1_pinned_process": _ratios(machine),
        "scaling_vs_the_machine": round(statistics.median(
            [s / m for s, m in zip(scaling, machine, strict=True)]), 2),
        "workers_for_10M_products_per_hour": math.ceil(
            per_hour_target / statistics.median(one)),
        "workers_for_10M_products_per_hour_at_single_process_rate": math.ceil(
            per_hour_target / statistics.median(singles)),
        # The median round's runs in detail: which worker ran each shard, when, how busy
        # the cores were.
        "dag_1_worker": _median_run(dags[1]),
        "dag_2_workers": _median_run(dags[2]),
    }


def _rounds(values: list[float], digits: int) -> dict:
    return {"median": round(statistics.median(values), digits),
            "rounds": [round(value, digits) for value in values]}


def _rates(rates: list[float]) -> dict:
    return _rounds(rates, 1)


def _ratios(ratios: list[float]) -> dict:
    return _rounds(ratios, 2)


def _median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda run: run["rows_per_s"])[len(runs) // 2]


if __name__ == "__main__":
    sys.exit(main())
