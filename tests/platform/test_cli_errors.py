"""Unreachable services and bad arguments end a CLI command with one line that names
the problem, and a non-zero exit: never a traceback.

The services are made unreachable for real: the command is pointed at a loopback port
nothing listens on (tests/support/serving.free_port). Invalid dates and S3 down:
tests/faults/test_ingest_faults.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.serving import ROOT, free_port

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    """The error line, after checking the exit code and that no traceback was printed."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    return errors[-1]


@pytest.mark.parametrize("command", ["lake-summary", "data-quality"])
def test_unreachable_postgresql_is_named(command):
    port = free_port()
    last = one_line_failure(cli(command, POSTGRES_PORT=str(port)))
    assert last.startswith(f"{command}: PostgreSQL:"), last
    assert f"port {port} failed" in last and "0x" not in last


def test_unreachable_mlflow_is_named():
    uri = f"http://127.0.0.1:{free_port()}"
    # No client retries: the message is under test, not MLflow's backoff (about 15 s).
    last = one_line_failure(
        cli("champion", MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    )
    assert last == f"champion: MLflow at {uri} is unreachable (connection refused or timed out)"


def test_an_unknown_source_split_is_an_error_before_anything_runs():
    # PostgreSQL and MLflow unreachable too: the split is checked first, not "0 rows".
    result = cli(
        "predict-batch",
        "--source-split",
        "tset",
        POSTGRES_PORT=str(free_port()),
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
    )
    last = one_line_failure(result)
    assert last == "predict-batch: unknown --source-split 'tset': expected one of test, train"
