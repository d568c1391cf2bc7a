"""The MLflow basic-auth app's ini as rakuten_mlops.mlflow_auth writes it, read by MLflow's
own config reader (no server needed)."""

from __future__ import annotations

import pytest

from rakuten_mlops.mlflow_auth import AUTH_CACHE_SECONDS, DEFAULT_PERMISSION, write_config


@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")  # MLflow
def test_mlflow_reads_the_credential_cache_and_permissions(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    path = write_config(tmp_path / "basic_auth.ini", "sqlite:///users.db")
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = read_auth_config()
    # Without the cache every request pays a password-hash check (about 0.25 s here).
    assert config.auth_cache_ttl_seconds == AUTH_CACHE_SECONDS > 0
    assert config.default_permission == DEFAULT_PERMISSION
    assert config.database_uri == "sqlite:///users.db"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
