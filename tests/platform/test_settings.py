"""The settings object: validation, secrets policy, derived endpoints, .env generation."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from rakuten_mlops.settings import PLACEHOLDER_SECRET, Settings, render_env_file

STRONG = {
    "postgres_password": "pg-" + "x" * 20,
    "s3_secret_key": "s3-" + "y" * 20,
    "airflow_admin_password": "af-" + "z" * 20,
    "airflow_api_secret_key": "api-" + "w" * 20,
    "airflow_jwt_secret": "jwt-" + "v" * 20,
    "airflow_fernet_key": Fernet.generate_key().decode(),
}


def make(**overrides) -> Settings:
    return Settings(_env_file=None, **{**STRONG, **overrides})


def test_required_secret_missing_is_named(monkeypatch):
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    values = {k: v for k, v in STRONG.items() if k != "postgres_password"}
    with pytest.raises(ValidationError, match="postgres_password"):
        Settings(_env_file=None, **values)


def test_local_mode_tolerates_placeholder_secrets():
    settings = make(rakuten_mode="local", postgres_password=PLACEHOLDER_SECRET)
    assert settings.postgres_password.get_secret_value() == PLACEHOLDER_SECRET


@pytest.mark.parametrize("mode", ["compose", "production"])
@pytest.mark.parametrize("weak", [PLACEHOLDER_SECRET, "", "minioadmin", "short"])
def test_other_modes_refuse_default_secrets_and_name_them(mode, weak):
    with pytest.raises(ValidationError) as error:
        make(rakuten_mode=mode, s3_secret_key=weak, airflow_admin_password=weak)
    message = str(error.value)
    assert "S3_SECRET_KEY" in message and "AIRFLOW_ADMIN_PASSWORD" in message
    assert "POSTGRES_PASSWORD" not in message


def test_strong_secrets_pass_in_production():
    assert make(rakuten_mode="production").rakuten_mode == "production"


def test_bad_port_and_mode_are_rejected():
    with pytest.raises(ValidationError, match="postgres_port"):
        make(postgres_port=70000)
    with pytest.raises(ValidationError, match="rakuten_mode"):
        make(rakuten_mode="staging")


def test_environment_overrides_values(monkeypatch):
    monkeypatch.setenv("S3_PORT", "9999")
    assert make().s3_endpoint == "127.0.0.1:9999"


def test_dsn_quotes_credentials():
    settings = make(postgres_user="a@b", postgres_password="p@ss:w/rd%")
    dsn = settings.postgres_dsn("airflow", "postgresql+psycopg2")
    address = f"{settings.postgres_host}:{settings.postgres_port}"
    assert dsn == f"postgresql+psycopg2://a%40b:p%40ss%3Aw%2Frd%25@{address}/airflow"


def test_secrets_are_not_printed():
    assert STRONG["postgres_password"] not in repr(make())


def test_render_env_file_replaces_every_placeholder_with_a_distinct_secret():
    template = (
        "# comment=change-me stays\nPOSTGRES_PASSWORD=change-me\nS3_SECRET_KEY=change-me\n"
        "AIRFLOW_FERNET_KEY=change-me\nPOSTGRES_USER=rakuten\n"
    )
    rendered = render_env_file(template)
    values = dict(line.split("=", 1) for line in rendered.splitlines() if not line.startswith("#"))
    assert "# comment=change-me stays" in rendered
    assert values["POSTGRES_USER"] == "rakuten"
    secrets = [values["POSTGRES_PASSWORD"], values["S3_SECRET_KEY"], values["AIRFLOW_FERNET_KEY"]]
    assert PLACEHOLDER_SECRET not in secrets and len(set(secrets)) == 3
    assert all(len(secret) >= 24 for secret in secrets)
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    Fernet(values["AIRFLOW_FERNET_KEY"])  # accepted by Airflow's cipher


def test_render_env_file_fills_empty_secrets_only():
    rendered = render_env_file(
        "POSTGRES_PASSWORD=\nAPI_CLIENT_KEY=\nGRAFANA_URL=\nPOSTGRES_USER=x\n"
    )
    values = dict(line.split("=", 1) for line in rendered.splitlines())
    assert len(values["POSTGRES_PASSWORD"]) >= 24 and len(values["API_CLIENT_KEY"]) >= 24
    assert values["GRAFANA_URL"] == "" and values["POSTGRES_USER"] == "x"  # not secrets
    kept = render_env_file("API_ADMIN_KEY=change-me\n", placeholder_too=False)
    assert kept == "API_ADMIN_KEY=change-me\n"


def test_shipped_env_example_renders_to_settings_valid_in_production(tmp_path, monkeypatch):
    from rakuten_mlops.settings import project_root

    env = tmp_path / ".env"
    env.write_text(render_env_file((project_root() / ".env.example").read_text()))
    for name in ("POSTGRES_DB", "S3_BUCKET_IMAGES", "S3_BUCKET_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAKUTEN_MODE", "production")
    settings = Settings(_env_file=env)
    assert settings.postgres_db == "rakuten_lake"
    assert len(set(settings.buckets)) == 3
