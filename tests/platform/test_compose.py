"""Compose mode, checked without a Docker engine: the files validate and follow the rules.

`docker-compose config` renders docker-compose.yml with the values of .env.example; the
other checks read the raw files. Nothing here starts a container or touches the network.
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
# A secret must be exactly one interpolated variable, without a `:-default` fallback.
# ${VAR}, or ${VAR:?message}: compose refuses to start without it (issue 12).
PLAIN_INTERPOLATION = re.compile(r"\$\{[A-Z][A-Z0-9_]*(:\?[^}]*)?\}")
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s]+)@")
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
    copy = tmp_path_factory.mktemp("compose") / ".env"
    shutil.copyfile(ENV_EXAMPLE, copy)
    return copy


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


def test_compose_file_validates_with_env_example(env_file):
    result = _compose(env_file, "config", "-q")
    assert result.returncode == 0, result.stderr
    # Every variable the file uses is defined in .env.example (or has a default).
    assert "variable is not set" not in result.stderr, result.stderr


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
                assert PLAIN_INTERPOLATION.fullmatch(value), (
                    f"{name}: {key} must be a plain ${{VAR}} from .env, not {value!r}"
                )
            for password in URL_CREDENTIALS.findall(value):
                assert PLAIN_INTERPOLATION.fullmatch(password), (
                    f"{name}: {key} embeds a literal password in a URL"
                )
    text = COMPOSE_FILE.read_text()
    # No fallback value for a secret variable anywhere (command lines included).
    defaults = re.findall(r"\$\{([A-Z0-9_]+):?-", text)
    assert not [var for var in defaults if SECRET_NAME.search(var)], defaults
    for password in URL_CREDENTIALS.findall(text):
        assert PLAIN_INTERPOLATION.fullmatch(password), password


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
    assert lake["secureJsonData"]["password"] == "${POSTGRES_PASSWORD}"
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
