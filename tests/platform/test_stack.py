"""Local mode: every service healthy, loopback only, restart-what-died, exact shutdown."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from rakuten_mlops.localstack.services import prometheus_service
from rakuten_mlops.localstack.supervisor import StackError, Supervisor

pytestmark = pytest.mark.stack


def test_every_service_is_healthy(stack, settings):
    from rakuten_mlops.localstack.celery import celery_mode, worker_names
    from rakuten_mlops.localstack.podman import podman_service

    states = {status.name: status.state for status in stack.status()}
    # AIRFLOW_EXECUTOR=celery: the broker and the workers too.
    celery = {"redis", *(f"airflow-celery-{name}" for name in worker_names(settings))}
    # Container mode's engine, unless a Docker engine is there to use.
    podman = {"podman"} if podman_service(settings) else set()
    assert set(states) == (celery if celery_mode(settings) else set()) | podman | {
        "postgres",
        "s3",
        "prometheus",
        "mlflow",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "api",
        "pgadmin",
        "control-room",
    }
    assert set(states.values()) == {"healthy"}, states


def test_airflow_reports_every_component_healthy(stack, settings):
    health = httpx.get(f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health").json()
    for component in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[component]["status"] == "healthy", health


def test_airflow_login_uses_the_password_from_settings(stack, settings):
    url = f"http://127.0.0.1:{settings.airflow_port}/auth/token"
    user = settings.airflow_admin_user
    good = httpx.post(
        url, json={"username": user, "password": settings.airflow_admin_password.get_secret_value()}
    )
    assert good.status_code in (200, 201) and good.json()["access_token"]
    bad = httpx.post(url, json={"username": user, "password": "not-the-password"})
    assert bad.status_code == 401


def test_mlflow_serves_api_and_metrics(stack, settings):
    base = f"http://127.0.0.1:{settings.mlflow_port}"
    assert httpx.get(f"{base}/health").text.strip() == "OK"
    # Basic auth (issue 12): everything but /health needs a login.
    admin = (settings.mlflow_admin_user, settings.mlflow_admin_password.get_secret_value())
    url = f"{base}/api/2.0/mlflow/experiments/search"
    assert httpx.post(url, json={"max_results": 5}).status_code == 401
    search = httpx.post(url, json={"max_results": 5}, auth=admin)
    assert search.status_code == 200 and "experiments" in search.json()
    assert "# TYPE" in httpx.get(f"{base}/metrics", auth=admin).text


def test_prometheus_scrapes_its_targets(stack, settings):
    base = f"http://127.0.0.1:{settings.prometheus_port}"
    targets = httpx.get(f"{base}/api/v1/targets").json()["data"]["activeTargets"]
    jobs = {target["labels"]["job"] for target in targets}
    assert {"prometheus", "mlflow"} <= jobs
    # A scrape happens every 15 s; a fresh stack may not have scraped yet.
    import time

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        result = httpx.get(f"{base}/api/v1/query", params={"query": "up"}).json()["data"]["result"]
        up = {series["metric"]["job"]: series["value"][1] for series in result}
        if up.get("prometheus") == "1" and up.get("mlflow") == "1":
            break
        time.sleep(2)
    assert up.get("prometheus") == "1" and up.get("mlflow") == "1", up


def test_no_project_listener_outside_loopback(stack):
    pids = stack.owned_pids()
    listeners = [
        conn
        for conn in psutil.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    ]
    assert listeners, "no listening socket found for the project's processes"
    exposed = [(c.laddr.ip, c.laddr.port) for c in listeners if c.laddr.ip != "127.0.0.1"]
    assert not exposed


@pytest.mark.exclusive
def test_up_restarts_only_the_killed_service(stack):
    before = {status.name: status.pid for status in stack.status()}
    # Held, so the watchdog leaves the restart to `up` (which releases every hold).
    stack.hold("prometheus")
    psutil.Process(before["prometheus"]).send_signal(signal.SIGKILL)
    psutil.Process(before["prometheus"]).wait(timeout=10)
    assert stack.up(report=lambda line: None) == ["prometheus"]
    after = {status.name: status.pid for status in stack.status()}
    assert after["prometheus"] != before["prometheus"]
    assert {k: v for k, v in after.items() if k != "prometheus"} == {
        k: v for k, v in before.items() if k != "prometheus"
    }


def test_up_twice_is_harmless(stack):
    before = {status.name: status.pid for status in stack.status()}
    assert stack.up(report=lambda line: None) == []
    assert {status.name: status.pid for status in stack.status()} == before


# ---------------------------------------------------------------- on a private stack


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def private_supervisor(settings, tmp_path):
    """A one-service stack (Prometheus) in its own state folder and port."""
    private = settings.model_copy(
        update={"stack_dir": tmp_path / "stack", "prometheus_port": free_port()}
    )
    supervisor = Supervisor(private, [prometheus_service(private)])
    yield supervisor
    supervisor.down(report=lambda line: None)


def test_down_stops_exactly_what_up_started(private_supervisor):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert private_supervisor.up(report=lambda line: None) == ["prometheus"]
        started = psutil.Process(private_supervisor.status()[0].pid)
        assert private_supervisor.down(report=lambda line: None) == ["prometheus"]
        assert not started.is_running() or started.status() == psutil.STATUS_ZOMBIE
        assert bystander.poll() is None, "down must not touch processes it did not start"
        assert private_supervisor.status()[0].state == "stopped"
        assert private_supervisor.down(report=lambda line: None) == []
    finally:
        bystander.kill()


def test_stale_pid_file_is_not_mistaken_for_a_running_service(private_supervisor):
    service = private_supervisor.services[0]
    private_supervisor.run_dir.mkdir(parents=True)
    # A live pid that is not ours (this test process), with another start time.
    (private_supervisor.run_dir / f"{service.name}.pid").write_text(
        f"{psutil.Process().pid} 12345.0"
    )
    assert private_supervisor.process(service) is None
    assert private_supervisor.down(report=lambda line: None) == []
    assert psutil.Process().is_running()


def test_port_taken_by_a_stranger_is_a_clear_error(private_supervisor):
    port = private_supervisor.settings.prometheus_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(
            StackError, match=f"prometheus: port 127.0.0.1:{port} is already in use"
        ):
            private_supervisor.up(report=lambda line: None)


def test_a_service_that_dies_at_start_is_named_with_its_log(settings, tmp_path):
    private = settings.model_copy(
        update={"stack_dir": tmp_path / "stack", "prometheus_port": free_port()}
    )
    broken = prometheus_service(private)
    broken = broken.__class__(**{**broken.__dict__, "command": [*broken.command, "--no-such-flag"]})
    supervisor = Supervisor(private, [broken])
    with pytest.raises(StackError, match=r"prometheus is not running.*prometheus\.log"):
        supervisor.up(report=lambda line: None)


def test_mlflow_stores_artifacts_in_the_s3_store(stack, settings, s3, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    # A test-* experiment: the session's clean-up removes it, run and artifact included.
    experiment = client.get_experiment_by_name("test-platform") or client.get_experiment(
        client.create_experiment("test-platform")
    )
    run = client.create_run(experiment.experiment_id)
    note = tmp_path / "note.txt"
    note.write_text("artifact round trip")
    client.log_artifact(run.info.run_id, str(note))
    client.set_terminated(run.info.run_id)
    downloaded = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == "artifact round trip"
    keys = [
        obj.object_name
        for obj in s3.list_objects(settings.s3_bucket_mlflow, recursive=True)
        if obj.object_name.endswith(f"{run.info.run_id}/artifacts/note.txt")
    ]
    assert len(keys) == 1, "the artifact must live in the MLflow bucket of the S3 store"
