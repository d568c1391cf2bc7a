"""Issue 12, item 2 (and item 11's `/ready` part): MLflow refuses anonymous and read-only
registry writes, and the API loads only a model whose artifact checksum the promotion
step recorded.

Against the running stack's MLflow (basic auth), PostgreSQL and S3, with real API server
processes (`python -m rakuten_mlops serve`) on free loopback ports. A test-only
experiment and registered model are created and deleted (runs, versions, S3 objects,
checksum and promotion rows) at the end. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cloudpickle
import httpx
import pandas as pd
import pytest

from rakuten_mlops.errors import ConfigurationError

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "raw_data"
CLIENT_KEY = "trust-client-key-0123456789"
ADMIN_KEY = "trust-admin-key-0123456789"
HTTP_TIMEOUT = 10.0
API_START_TIMEOUT = 90.0


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = predicate()
            if last:
                return last
        time.sleep(0.3)
    raise TimeoutError(f"{what} not met within {timeout}s (last: {last!r})")


class Api:
    """One real API server process, as the supervisor runs it (MLflow's reader user)."""

    def __init__(self, settings, log_path: Path, **env: str):
        from rakuten_mlops.ml.tracking import credentials

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            **os.environ,
            **credentials(settings, "reader"),
            "API_CLIENT_KEY": CLIENT_KEY,
            "API_ADMIN_KEY": ADMIN_KEY,
            "API_MODEL_POLL_SECONDS": "0",  # only /admin/reload: deterministic
            "RAW_DATA_DIR": str(SAMPLE),
            **env,
        }
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Api:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rakuten_mlops", "serve", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def ready_after_first_load(self) -> httpx.Response:
        """/ready once the first model load has finished (loaded or refused)."""

        def settled():
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            response = httpx.get(f"{self.url}/ready", timeout=HTTP_TIMEOUT)
            detail = response.json().get("detail") or ""
            return response if not detail.startswith("loading") else None

        return wait_for(settled, API_START_TIMEOUT, "the API's first model load")

    def reload(self) -> httpx.Response:
        return httpx.post(f"{self.url}/admin/reload", headers={"X-API-Key": ADMIN_KEY}, timeout=120)


def fitted_pipeline(rows: int, seed: int):
    """The project's text steps + a log-loss linear model, on the shipped real sample."""
    from sklearn.linear_model import SGDClassifier

    from rakuten_mlops.ml.features import build_pipeline
    from rakuten_mlops.settings import get_settings

    x = pd.read_csv(SAMPLE / "X_train_update.csv", index_col=0).head(rows)
    y = pd.read_csv(SAMPLE / "Y_train_CVw08PX.csv", index_col=0)["prdtypecode"].head(rows)
    settings = get_settings()
    pipeline = build_pipeline(
        "linear_svc",
        features={"char": None, "word": {"max_features": 5000}},
        nltk_data_dir=str(settings.path(settings.nltk_data_dir)),
    ).set_params(clf=SGDClassifier(loss="log_loss", max_iter=20, tol=None, random_state=seed))
    return pipeline.fit(x[["designation", "description"]], y)


# The promotion gate's evidence for these runs: their dataset's test rows; a model that
# equals the champion (v3 below) is within noise, and this policy promotes it.
TRUST_PROFILE = "train_subsets: [train, validation]\npromotion: {within_noise: promote}\n"


def log_run(experiment_id: str, pipeline, test_f1: float, dataset_id: str) -> str:
    """A run shaped like the training stage's: the model, its tags, its test score."""
    import mlflow
    import mlflow.sklearn

    with mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(
            pipeline, name="model", pip_requirements=[], serialization_format="cloudpickle"
        )
        mlflow.set_tags({"model_uri": info.model_uri, "dataset_id": dataset_id})
        mlflow.log_text(TRUST_PROFILE, "profile.yaml")
        mlflow.log_metric("test_f1_weighted", test_f1)
        return run.info.run_id


def artifact_key(client, name: str, version: str, filename: str) -> tuple[str, str]:
    """(bucket, key) in S3 of one artifact file of a registered version."""
    from rakuten_mlops.settings import get_settings

    registered = client.get_model_version(name, version)
    # MLflow 3.17 leaves model_id empty on versions; the source names the logged model.
    logged = client.get_logged_model(registered.source.removeprefix("models:/"))
    prefix = logged.artifact_location.removeprefix("mlflow-artifacts:/").strip("/")
    return get_settings().s3_bucket_mlflow, f"{prefix}/{filename}"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trust(stack, settings, tmp_path_factory):
    """A test model: v1 promoted by the promotion step (checksum recorded, champion),
    v2 registered by the admin but never promoted. Everything is deleted afterwards."""
    import mlflow
    from mlflow import MlflowClient

    from rakuten_mlops.ml import registry, stages
    from rakuten_mlops.ml import trust as model_trust
    from rakuten_mlops.ml.dataset import frame_from_csv, save_dataset
    from rakuten_mlops.storage import connect, s3_client

    name = f"test-trust-{uuid.uuid4().hex[:8]}"
    model_settings = settings.model_copy(
        update={"model_name": name, "processed_data_dir": tmp_path_factory.mktemp("processed")}
    )
    frame = frame_from_csv(SAMPLE / "X_train_update.csv", SAMPLE / "Y_train_CVw08PX.csv")
    dataset_id = save_dataset(model_settings, frame, upload=False).dataset_id
    client: MlflowClient = registry.client(model_settings)
    experiment_id = client.create_experiment(name)
    run_ids: list[str] = []
    try:
        good = fitted_pipeline(rows=800, seed=0)
        other = fitted_pipeline(rows=400, seed=1)
        run_ids.append(log_run(experiment_id, good, test_f1=0.5, dataset_id=dataset_id))
        first = stages.promote(model_settings, run_ids[0], export=False)
        assert first.promoted and first.version == "1"
        run_ids.append(log_run(experiment_id, other, test_f1=0.1, dataset_id=dataset_id))
        unpromoted = mlflow.register_model(f"runs:/{run_ids[1]}/model", name)
        assert unpromoted.version == "2"
        yield {
            "name": name,
            "client": client,
            "settings": model_settings,
            "experiment_id": experiment_id,
            "run_ids": run_ids,
            "dataset_id": dataset_id,
            "good": good,
            "other": other,
        }
    finally:
        with contextlib.suppress(Exception):
            client.delete_registered_model(name)
        for run_id in run_ids:
            with contextlib.suppress(Exception):
                client.delete_run(run_id)
        with contextlib.suppress(Exception):
            client.delete_experiment(experiment_id)
        s3 = s3_client(settings)
        for item in s3.list_objects(settings.s3_bucket_mlflow, f"{experiment_id}/", True):
            s3.remove_object(settings.s3_bucket_mlflow, item.object_name)
        model_trust.forget(settings, name)
        with connect(settings) as conn:
            conn.execute("DELETE FROM model_promotions WHERE model_name = %s", (name,))


@pytest.fixture()
def champion_restored(trust):
    """Whatever a test does to the alias, it points at v1 again afterwards."""
    yield
    trust["client"].set_registered_model_alias(trust["name"], "champion", "1")


def mlflow_url(settings, path: str) -> str:
    return f"{settings.tracking_uri.rstrip('/')}{path}"


# ----------------------------------------------------------------------------- MLflow auth


def test_anonymous_registry_reads_and_writes_are_refused(trust, settings):
    move = {"name": trust["name"], "alias": "champion", "version": "2"}
    write = httpx.post(
        mlflow_url(settings, "/api/2.0/mlflow/registered-models/alias"),
        json=move,
        timeout=HTTP_TIMEOUT,
    )
    read = httpx.get(
        mlflow_url(settings, "/api/2.0/mlflow/registered-models/get"),
        params={"name": trust["name"]},
        timeout=HTTP_TIMEOUT,
    )
    health = httpx.get(mlflow_url(settings, "/health"), timeout=HTTP_TIMEOUT)

    assert write.status_code == 401, write.text
    assert read.status_code == 401, read.text
    assert health.status_code == 200  # the supervisor's health check needs no login
    assert trust["client"].get_model_version_by_alias(trust["name"], "champion").version == "1"


def test_the_reader_may_read_but_not_move_the_alias(trust, settings):
    auth = (settings.mlflow_reader_user, settings.mlflow_reader_password.get_secret_value())
    move = {"name": trust["name"], "alias": "champion", "version": "2"}
    read = httpx.get(
        mlflow_url(settings, "/api/2.0/mlflow/registered-models/alias"),
        params={"name": trust["name"], "alias": "champion"},
        auth=auth,
        timeout=HTTP_TIMEOUT,
    )
    write = httpx.post(
        mlflow_url(settings, "/api/2.0/mlflow/registered-models/alias"),
        json=move,
        auth=auth,
        timeout=HTTP_TIMEOUT,
    )
    wrong_password = httpx.post(
        mlflow_url(settings, "/api/2.0/mlflow/registered-models/alias"),
        json=move,
        auth=(settings.mlflow_admin_user, "not-the-password-0123"),
        timeout=HTTP_TIMEOUT,
    )

    assert read.status_code == 200 and read.json()["model_version"]["version"] == "1"
    assert write.status_code == 403, write.text
    assert wrong_password.status_code == 401
    assert trust["client"].get_model_version_by_alias(trust["name"], "champion").version == "1"


def test_no_mlflow_secret_on_a_command_line_and_auth_files_private(stack, settings):
    from rakuten_mlops.localstack.services import mlflow_auth_paths

    mlflow = next(status for status in stack.status() if status.name == "mlflow")
    cmdline = Path(f"/proc/{mlflow.pid}/cmdline").read_bytes().decode(errors="replace")
    secrets = [
        settings.postgres_password,
        settings.mlflow_admin_password,
        settings.mlflow_reader_password,
        settings.mlflow_flask_server_secret_key,
    ]
    assert "--app-name\0basic-auth" in cmdline
    for secret in secrets:
        assert secret.get_secret_value() not in cmdline
    for path in mlflow_auth_paths(settings):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_auth_users_follow_the_configured_passwords(tmp_path):
    """Rotating a password or renaming a user in .env takes effect at the next start (no
    old login survives); roles stay apart."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    from rakuten_mlops.mlflow_auth import ensure_users, sqlite_uri

    uri = sqlite_uri(tmp_path / "users.db")
    ensure_users(uri, ("boss", "first-admin-pass-123"), ("eyes", "first-reader-pass-123"))
    ensure_users(uri, ("boss", "second-admin-pass-123"), ("eyes", "first-reader-pass-123"))
    ensure_users(uri, ("boss", "second-admin-pass-123"), ("look", "renamed-reader-pass-123"))
    store = SqlAlchemyStore()
    store.init_db(uri)

    assert store.authenticate_user("boss", "second-admin-pass-123")
    assert not store.authenticate_user("boss", "first-admin-pass-123")
    assert store.get_user("boss").is_admin and not store.get_user("look").is_admin
    assert sorted(user.username for user in store.list_users()) == ["boss", "look"]
    assert (tmp_path / "users.db").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigurationError, match="must differ"):
        ensure_users(uri, ("same", "a-password-12345"), ("same", "a-password-12345"))


def test_mlflow_auth_setup_without_credentials_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_AUTH_DATABASE_URI"] = f"sqlite:///{tmp_path / 'users.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "mlflow-auth-setup", str(tmp_path / "a.ini")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "mlflow-auth-setup: MLflow auth needs MLFLOW_ADMIN_USER, MLFLOW_ADMIN_PASSWORD, "
        "MLFLOW_READER_USER, MLFLOW_READER_PASSWORD in the environment"
    ]
    assert not (tmp_path / "a.ini").exists()


def test_the_artifact_digest_is_deterministic_and_sees_every_change(tmp_path):
    from rakuten_mlops.ml.trust import folder_digest

    def folder(name: str, files: dict[str, bytes]) -> Path:
        root = tmp_path / name
        for relative, content in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(content)
        return root

    base = {"MLmodel": b"flavors: {}", "model.pkl": b"\x80\x05pickle", "sub/x.txt": b"x"}
    same = folder("same", dict(reversed(base.items())))
    renamed = {key: value for key, value in base.items() if key != "sub/x.txt"}
    digests = {
        "base": folder_digest(folder("base", base)),
        "same": folder_digest(same),
        "content": folder_digest(folder("content", {**base, "model.pkl": b"\x80\x05other"})),
        "renamed": folder_digest(folder("renamed", {**renamed, "sub/y.txt": b"x"})),
        "added": folder_digest(folder("added", {**base, "extra": b""})),
        # Written client-side by MLflow into a models:/ download: not the stored content.
        "client_meta": folder_digest(folder("meta", {**base, "registered_model_meta": b"v"})),
    }

    assert digests["base"] == digests["same"] == digests["client_meta"]
    assert len({d.sha256 for k, d in digests.items() if k not in ("same", "client_meta")}) == 4
    assert digests["base"].files == 3 and digests["base"].bytes == sum(map(len, base.values()))


# ----------------------------------------------------------------------------- the API


def test_the_promoted_champion_loads_and_predicts(trust, tmp_path):
    with Api(
        trust["settings"],
        tmp_path / "api.log",
        MODEL_NAME=trust["name"],
        MODELS_DIR=str(tmp_path / "no-export"),
    ) as api:
        ready = api.ready_after_first_load()
        predicted = httpx.post(
            f"{api.url}/predict",
            headers={"X-API-Key": CLIENT_KEY},
            json={"designation": "Piscine tubulaire ronde avec pompe", "top_k": 1},
            timeout=HTTP_TIMEOUT,
        )

    assert ready.status_code == 200, ready.text
    assert ready.json()["model"] == {"name": trust["name"], "version": "1", "source": "registry"}
    assert predicted.status_code == 200
    expected = trust["good"].predict(
        pd.DataFrame({"designation": ["Piscine tubulaire ronde avec pompe"], "description": [None]})
    )[0]
    assert predicted.json()["predictions"][0]["prdtypecode"] == int(expected)


def test_an_alias_moved_to_an_unpromoted_version_is_not_loaded(trust, champion_restored, tmp_path):
    name, client = trust["name"], trust["client"]
    env = {"MODEL_NAME": name, "MODELS_DIR": str(tmp_path / "no-export")}
    with Api(trust["settings"], tmp_path / "running.log", **env) as running:
        assert running.ready_after_first_load().json()["model"]["version"] == "1"
        # The admin account can move the alias (auth alone does not stop a stolen
        # admin password); the API must still refuse what was never promoted.
        client.set_registered_model_alias(name, "champion", "2")
        reloaded = running.reload()
        still = httpx.get(f"{running.url}/ready", timeout=HTTP_TIMEOUT)

        with Api(trust["settings"], tmp_path / "fresh.log", **env) as fresh:
            refused = fresh.ready_after_first_load()

    assert reloaded.status_code == 200 and reloaded.json()["changed"] is False
    assert still.status_code == 200
    assert still.json()["model"]["version"] == "1"  # the trusted model keeps serving
    assert "champion v2 refused: no checksum recorded at promotion" in still.json()["detail"]
    assert refused.status_code == 503  # nothing else to serve: not ready, and why
    assert refused.json()["model"] is None
    assert "champion v2 refused: no checksum recorded at promotion" in refused.json()["detail"]


def test_an_artifact_altered_after_promotion_is_refused(trust, champion_restored, tmp_path):
    """v3 is promoted properly, then its pickle in S3 is replaced by another model's."""
    from rakuten_mlops.ml import stages
    from rakuten_mlops.storage import s3_client

    name, client = trust["name"], trust["client"]
    run_id = log_run(trust["experiment_id"], trust["good"], test_f1=0.9,
                     dataset_id=trust["dataset_id"])
    trust["run_ids"].append(run_id)
    promoted = stages.promote(trust["settings"], run_id, export=False)
    assert promoted.promoted and promoted.version == "3"
    s3 = s3_client(trust["settings"])
    bucket, target = artifact_key(client, name, "3", "model.pkl")
    other_pickle = cloudpickle.dumps(trust["other"])  # any code an attacker likes
    original = s3.get_object(bucket, target).read()
    assert other_pickle != original
    s3.put_object(bucket, target, io.BytesIO(other_pickle), len(other_pickle))

    env = {"MODEL_NAME": name, "MODELS_DIR": str(tmp_path / "no-export")}
    with Api(trust["settings"], tmp_path / "fresh.log", **env) as fresh:
        refused = fresh.ready_after_first_load()
        # Once the bytes are back, the same version loads (the check is on content).
        s3.put_object(bucket, target, io.BytesIO(original), len(original))
        forced = httpx.post(
            f"{fresh.url}/admin/reload",
            params={"force": "true"},
            headers={"X-API-Key": ADMIN_KEY},
            timeout=120,
        )
        restored = httpx.get(f"{fresh.url}/ready", timeout=HTTP_TIMEOUT)

    assert refused.status_code == 503
    assert "champion v3 refused: checksum mismatch" in refused.json()["detail"]
    assert forced.status_code == 200, forced.text
    assert restored.json()["model"]["version"] == "3"


def test_a_database_outage_is_named_in_ready_not_a_missing_version(trust, tmp_path):
    """The checksum lives in PostgreSQL: with it unreachable the API says so."""
    dead_port = str(free_port())  # nothing listens there
    env = {
        "MODEL_NAME": trust["name"],
        "MODELS_DIR": str(tmp_path / "no-export"),
        "POSTGRES_PORT": dead_port,
    }
    with Api(trust["settings"], tmp_path / "api.log", **env) as api:
        ready = api.ready_after_first_load()

    detail = ready.json()["detail"]
    assert ready.status_code == 503
    assert "no version" not in detail
    assert f"PostgreSQL at 127.0.0.1:{dead_port} is unreachable" in detail


def test_an_mlflow_database_outage_is_named_in_ready(settings, tmp_path):
    """Item 11: MLflow up but its PostgreSQL down is not "no version in the registry".

    A private PostgreSQL cluster holds a private MLflow server's store and the API's
    lake; the cluster is stopped under them.
    """
    from rakuten_mlops.localstack.service import venv_bin
    from tests.support.serving import PrivatePostgres

    postgres = PrivatePostgres(tmp_path / "pg", user="outage", database="mlflow").init()
    mlflow_port = free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    server_log = tmp_path / "mlflow.log"
    with open(server_log, "ab") as log:
        server = subprocess.Popen(
            [str(venv_bin() / "mlflow"), "server", "--host", "127.0.0.1"]
            + ["--port", str(mlflow_port), "--workers", "1"]
            + ["--default-artifact-root", str(tmp_path / "artifacts")],
            env={
                **os.environ,
                "MLFLOW_BACKEND_STORE_URI": (
                    f"postgresql+psycopg2://outage@127.0.0.1:{postgres.port}/mlflow"
                ),
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    env = {
        "MODEL_NAME": "outage-model",
        "MODELS_DIR": str(tmp_path / "no-export"),
        "MLFLOW_TRACKING_URI": tracking,
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(postgres.port),
        "POSTGRES_USER": "outage",
        "POSTGRES_DB": "mlflow",
    }
    try:

        def mlflow_healthy():
            assert server.poll() is None, server_log.read_text()[-3000:]
            return httpx.get(f"{tracking}/health", timeout=HTTP_TIMEOUT).status_code == 200

        wait_for(mlflow_healthy, 240, "the private MLflow server")
        with Api(settings, tmp_path / "api.log", **env) as api:
            before = api.ready_after_first_load().json()["detail"]
            postgres.stop()
            after_reload = api.reload()
            during = httpx.get(f"{api.url}/ready", timeout=HTTP_TIMEOUT)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        postgres.stop()

    # The control: with the database up, the registry really has no such model.
    assert "no version of outage-model@champion in the registry" in before
    assert after_reload.status_code == 503
    detail = during.json()["detail"]
    assert during.status_code == 503
    assert "no version" not in detail
    assert f"PostgreSQL at 127.0.0.1:{postgres.port} is unreachable" in detail
