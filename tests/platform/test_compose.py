"""Compose mode, checked without a Docker engine: the files validate and follow the rules.

`docker-compose config` renders docker-compose.yml with a .env generated from
.env.example (as `make setup` does); the other checks read the raw files. Nothing here
starts a container or touches the network. Issue 12 item 10: without .env, or with
.env.example copied unchanged, compose refuses to start, naming the missing secret.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY\b|KEY_ID|TOKEN", re.IGNORECASE)
# A secret must be exactly one interpolated variable, without a `:-default` fallback,
# and with a `:?message` guard that stops compose when it is empty or unset.
# The guard's message names the variable (compose prints only the message).
GUARDED_INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*):\?[^}]*\b\1\b[^}]*\}")
URL_CREDENTIALS = re.compile(r"://(\$\{[^}]*\}|[^/\s:@]+):(\$\{[^}]*\}|[^@\s]+)@")
BIND_HOST = "127.0.0.1"


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _compose_command() -> list[str]:
    if exe := shutil.which("docker-compose"):
        return [exe]
    if docker := shutil.which("docker"):
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
        if plugin.returncode == 0:
            return [docker, "compose"]
    pytest.skip(
        "neither docker-compose nor the docker compose plugin is installed "
        "(`make setup` installs docker-compose)"
    )


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """A .env as `make setup` writes it: .env.example with fresh secrets."""
    from rakuten_mlops.settings import render_env_file

    generated = tmp_path_factory.mktemp("compose") / ".env"
    generated.write_text(render_env_file(ENV_EXAMPLE.read_text()))
    return generated


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: variables exported by the caller (or by tests/conftest.py)
    # would otherwise win over the env file and change the rendering.
    clean_env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(env_file) -> dict:
    result = _compose(env_file, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    # PyYAML resolves the anchors and `<<` merge keys, not the ${...} interpolation.
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _one_shot(services: dict) -> set[str]:
    return {
        name
        for service in services.values()
        for name, dep in (service.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


def test_compose_file_validates_with_generated_env(env_file):
    result = _compose(env_file, "config", "-q")
    assert result.returncode == 0, result.stderr
    # Every variable the file uses is defined in .env.example (or has a default).
    assert "variable is not set" not in result.stderr, result.stderr


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, "compose accepted missing secrets"
    # The guard's message comes last (v1 quotes the whole mapping, guards included,
    # before it; v2 ends with "required variable X is missing a value: <message>").
    message = result.stderr.strip().splitlines()[-1].rsplit(": ", 1)[-1]
    named = [word for word in re.findall(r"\b[A-Z][A-Z0-9_]+\b", message) if word in _env_example()]
    assert named, result.stderr
    return named[0]


def test_compose_refuses_to_start_without_env(tmp_path):
    empty = tmp_path / ".env"
    empty.write_text("")
    missing = _refusal(_compose(empty, "config", "-q"))
    assert SECRET_NAME.search(missing) or missing.endswith(("_USER", "_EMAIL")), missing


def test_compose_refuses_env_example_copied_unchanged(tmp_path):
    copy = tmp_path / ".env"
    shutil.copyfile(ENV_EXAMPLE, copy)
    missing = _refusal(_compose(copy, "config", "-q"))
    assert SECRET_NAME.search(missing), missing
    assert _env_example()[missing] == ""


def test_env_example_carries_no_usable_secret():
    values = _env_example()
    secrets = {key: value for key, value in values.items() if SECRET_NAME.search(key)}
    assert "POSTGRES_PASSWORD" in secrets and "API_ADMIN_KEY" in secrets
    usable = {key: value for key, value in secrets.items() if value and key != "S3_ACCESS_KEY"}
    assert not usable, f"secrets with a value in .env.example: {sorted(usable)}"


def test_every_secret_in_compose_is_guarded(raw):
    text = COMPOSE_FILE.read_text()
    guarded = set(GUARDED_INTERPOLATION.findall(text))
    for name in _env_example():
        if SECRET_NAME.search(name) and f"${{{name}" in text:
            assert name in guarded, f"{name} has no :? guard"
            assert not re.search(rf"\$\{{{name}\}}", text), f"{name} used without its guard"


def test_init_env_fills_empty_secrets_and_keeps_the_rest(tmp_path):
    """An existing .env: empty secrets filled, set ones (change-me too) never rotated."""
    import sys

    env = tmp_path / ".env"
    env.write_text(
        "POSTGRES_PASSWORD=\nS3_SECRET_KEY=kept-secret-value-123\nAPI_CLIENT_KEY=change-me\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "init-env"],
        env={**os.environ, "RAKUTEN_ENV_FILE": str(env)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    values = dict(
        line.split("=", 1)
        for line in env.read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    assert len(values["POSTGRES_PASSWORD"]) >= 24
    assert values["S3_SECRET_KEY"] == "kept-secret-value-123"
    assert values["API_CLIENT_KEY"] == "change-me"
    assert "API_CLIENT_KEY" in result.stderr  # named, so the user can replace it
    assert values["API_ADMIN_KEY"], "a key missing from .env is added with a fresh secret"


def test_published_ports_bind_to_loopback(rendered):
    published = 0
    for name, service in rendered["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == BIND_HOST, f"{name} publishes {port} on all interfaces"
    assert published


def test_long_running_services_have_healthchecks(rendered):
    services = rendered["services"]
    one_shot = _one_shot(services)
    assert {"minio-init", "airflow-init"} <= one_shot
    for name, service in services.items():
        if name in one_shot:
            continue
        healthcheck = service.get("healthcheck") or {}
        assert healthcheck.get("test") and not healthcheck.get("disable"), (
            f"{name} has no healthcheck"
        )
        assert healthcheck["test"][0] != "NONE", f"{name} disables its healthcheck"


def test_dependencies_wait_for_health_or_completion(rendered):
    services = rendered["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency, spec in depends_on.items():
            condition = spec.get("condition") if isinstance(spec, dict) else None
            assert condition in {"service_healthy", "service_completed_successfully"}, (
                f"{name} -> {dependency}: condition {condition!r}"
            )
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), (
                    f"{name} waits for {dependency}, which has no healthcheck"
                )


def test_services_take_their_endpoints_inside_the_network(rendered):
    env = rendered["services"]["airflow-scheduler"]["environment"]
    assert env["RAKUTEN_MODE"] == "compose"
    assert (env["POSTGRES_HOST"], str(env["POSTGRES_PORT"])) == ("postgres", "5432")
    assert (env["S3_HOST"], str(env["S3_PORT"])) == ("minio", "9000")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )


def test_no_literal_secret_in_compose_file(raw):
    for name, service in raw["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for key, value in environment.items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert GUARDED_INTERPOLATION.fullmatch(value), (
                    f"{name}: {key} must be a guarded ${{VAR:?...}} from .env, not {value!r}"
                )
            for _, password in URL_CREDENTIALS.findall(value):
                assert GUARDED_INTERPOLATION.fullmatch(password), (
                    f"{name}: {key} embeds a literal password in a URL"
                )
    text = COMPOSE_FILE.read_text()
    # No fallback value for a secret variable anywhere (command lines included).
    defaults = re.findall(r"\$\{([A-Z0-9_]+):?-", text)
    assert not [var for var in defaults if SECRET_NAME.search(var)], defaults
    for _, password in URL_CREDENTIALS.findall(text):
        assert GUARDED_INTERPOLATION.fullmatch(password), password


def test_dockerfile_has_the_stages_compose_builds(raw):
    stages = set(
        re.findall(
            r"^FROM\s+\S+\s+AS\s+(\S+)\s*$",
            (ROOT / "Dockerfile").read_text(),
            flags=re.IGNORECASE | re.MULTILINE,
        )
    )
    assert {"airflow", "ml"} <= stages
    targets = {
        service["build"]["target"] for service in raw["services"].values() if "build" in service
    }
    assert targets == {"airflow", "ml"}


def test_bind_mounted_repository_files_exist(rendered):
    for name, service in rendered["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            path = Path(source)
            if path.is_absolute() and ROOT in path.parents:
                assert path.exists(), f"{name} mounts missing {path.relative_to(ROOT)}"


def test_servers_json_registers_the_postgres_service():
    servers = json.loads((ROOT / "servers.json").read_text())["Servers"]
    defaults = _env_example()
    assert len(servers) == 1
    (server,) = servers.values()
    assert server["Host"] == "postgres"
    assert server["Port"] == 5432
    assert server["MaintenanceDB"] == defaults["POSTGRES_DB"]
    assert server["Username"] == defaults["POSTGRES_USER"]
    for field in ("Name", "Group"):
        assert server[field]
    assert not any("password" in key.lower() for key in server), "servers.json holds a password"


def test_grafana_provisions_lake_and_prometheus_datasources():
    path = ROOT / "config/grafana/provisioning/datasources/datasources.yml"
    datasources = {ds["uid"]: ds for ds in yaml.safe_load(path.read_text())["datasources"]}
    assert {"lake", "prometheus"} <= set(datasources)
    lake = datasources["lake"]
    assert lake["url"] == "postgres:5432"
    # Grafana reads the lake as its read-only role (tests/platform/test_database_roles.py).
    assert lake["user"] == "${POSTGRES_GRAFANA_USER}"
    assert lake["secureJsonData"]["password"] == "${POSTGRES_GRAFANA_PASSWORD}"
    assert "password" not in lake.get("jsonData", {})
    assert datasources["prometheus"]["url"] == "http://prometheus:9090"


def test_prometheus_scrapes_compose_services():
    config = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["mlflow"] == ["mlflow:5000"]
    assert "prometheus" in targets


# ----------------------------------------------------------------- the TLS proxy (nginx)

NGINX_TEMPLATE = ROOT / "config/nginx/nginx.conf.template"
PROXIED = {
    "api": 8443, "airflow-apiserver": 8444, "mlflow": 8445, "grafana": 8446, "control-room": 8447
}


def _nginx() -> str:
    if exe := shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx"):
        return exe
    pytest.skip("Debian's nginx is not installed (`make setup` installs it)")


def test_proxy_is_the_only_way_to_the_web_services(rendered):
    services = rendered["services"]
    for name in PROXIED:
        assert not services[name].get("ports"), f"{name} still publishes a port"
    proxy = services["proxy"]
    targets = {
        int(port["target"]) if isinstance(port, dict) else int(port.split(":")[-1].split("/")[0])
        for port in proxy["ports"]
    }  # docker-compose v1 renders "host_ip:published:target/tcp", v2 a mapping
    assert targets == set(PROXIED.values())
    assert set(proxy["depends_on"]) == set(PROXIED)
    upstreams = {value for key, value in proxy["environment"].items() if key.endswith("_UPSTREAM")}
    assert upstreams == {
        "api:8000", "airflow-apiserver:8080", "mlflow:5000", "grafana:3000", "control-room:8501"
    }


def test_compose_gives_the_proxy_every_template_variable(rendered):
    from rakuten_mlops.proxy import template_variables

    given = set(rendered["services"]["proxy"]["environment"])
    assert template_variables(NGINX_TEMPLATE.read_text()) <= given


def test_proxy_limits_are_the_api_servers(rendered):
    """The proxy's header, timeout and connection limits equal the API's defaults."""
    from rakuten_mlops.settings import Settings

    fields = Settings.model_fields
    text = NGINX_TEMPLATE.read_text()

    def directive(name: str) -> list[str]:
        found = re.findall(rf"^\s*{name}\s+([^;]+);", text, flags=re.MULTILINE)
        assert len(found) == 1, (name, found)
        return found[0].split()

    assert directive("client_header_timeout") == [
        f"{fields['api_header_timeout_seconds'].default:g}s"
    ]
    assert directive("client_body_timeout") == [f"{fields['api_body_timeout_seconds'].default:g}s"]
    assert directive("keepalive_timeout") == [f"{fields['api_keepalive_timeout_seconds'].default}s"]
    count, size = directive("large_client_header_buffers")
    assert int(count) * int(size.rstrip("k")) * 1024 == fields["api_max_header_bytes"].default
    assert f"limit_conn per_service {fields['api_max_connections'].default};" in text
    assert "limit_conn_status 503;" in text
    # Compose passes the same defaults to the API server.
    api_env = rendered["services"]["api"]["environment"]
    assert int(api_env["API_MAX_HEADER_BYTES"]) == fields["api_max_header_bytes"].default
    assert int(api_env["API_MAX_CONNECTIONS"]) == fields["api_max_connections"].default


def test_proxy_config_passes_nginx_t(rendered, tmp_path):
    """The template as the image renders it (compose's own values; upstream names and
    in-container paths swapped for loopback and temp ones), checked by Debian's nginx."""
    from rakuten_mlops.proxy import render_nginx_config, write_self_signed_cert

    nginx = _nginx()
    write_self_signed_cert(tmp_path / "certs", ["127.0.0.1"])
    values = dict(rendered["services"]["proxy"]["environment"])
    values |= {"PROXY_RUN_DIR": str(tmp_path), "PROXY_CERT_DIR": str(tmp_path / "certs")}
    for key in [key for key in values if key.endswith("_UPSTREAM")]:
        values[key] = "127.0.0.1:" + values[key].rpartition(":")[2]
    config = tmp_path / "nginx.conf"
    config.write_text(render_nginx_config(values))
    result = subprocess.run(
        [nginx, "-t", "-c", str(config), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr

    # ... and nginx -t does catch a broken one (a certificate that is not there).
    broken = tmp_path / "broken.conf"
    broken.write_text(render_nginx_config(values | {"PROXY_CERT_DIR": str(tmp_path / "none")}))
    result = subprocess.run(
        [nginx, "-t", "-c", str(broken), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0 and "cert.pem" in result.stderr, result.stderr


def test_tls_cert_writes_a_private_key_and_refuses_to_overwrite(tmp_path):
    import stat
    import sys

    from cryptography import x509

    def tls_cert(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rakuten_mlops", "tls-cert", "--dir", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    made = tls_cert("--host", "127.0.0.1", "--host", "proxy.example")
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["proxy.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    again = tls_cert()
    assert again.returncode == 1
    assert again.stderr.strip().endswith("exists (--force replaces it)"), again.stderr
    assert "Traceback" not in again.stderr
    assert tls_cert("--force").returncode == 0


def test_celery_profile_adds_the_broker_and_workers(rendered, raw):
    """Issue 16: `--profile celery` adds Redis and the Celery workers; without it they do
    not start. The broker's password reaches Redis through a file, not its arguments."""
    services = rendered["services"]
    for name in ("redis", "airflow-worker"):
        assert services[name]["profiles"] == ["celery"], name
    assert services["airflow-worker"]["command"] in ("celery worker", ["celery", "worker"])
    assert "redis" in services["airflow-worker"]["depends_on"]
    assert "requirepass" not in " ".join(raw["services"]["redis"]["entrypoint"])
    assert "$$REDIS_PASSWORD" in raw["services"]["redis"]["command"][0]
    broker = services["airflow-scheduler"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://:") and broker.endswith("@redis:6379/0")
    backend = services["airflow-scheduler"]["environment"]["AIRFLOW__CELERY__RESULT_BACKEND"]
    assert backend.startswith("db+postgresql://")
