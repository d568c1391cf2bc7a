"""Schema-driven fuzzing of the running service with schemathesis: its examples,
coverage and fuzzing phases generate valid and invalid requests for every operation of
the service's own OpenAPI spec, with and without the key, and run every check (no 500,
documented status codes and content types, responses matching their schemas, invalid
data rejected, valid data accepted, auth not ignored, ...).

The CLI rather than the pytest plugin: schemathesis 4.32's lazy pytest loader does not
work with pytest 9 (it sets `node._nodeid`). Set SCHEMATHESIS_SEED to replay a run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serving import ADMIN_KEY

pytestmark = pytest.mark.stack

MAX_EXAMPLES = 20


def test_fuzzing_the_openapi_spec_finds_nothing(api, tmp_path):
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{api.base_url}/openapi.json",
        "--header",
        f"X-API-Key: {ADMIN_KEY}",  # reaches every route; it also tries without
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--report-dir",
        str(tmp_path),
        "--no-color",
    ]
    if seed := os.environ.get("SCHEMATHESIS_SEED"):
        command += ["--seed", seed]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ}
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "8 selected / 8 total" in output and "Fuzzing" in output, output[-3000:]
