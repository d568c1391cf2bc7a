"""`rakuten-mlops data-quality`: the DAG's job from the command line, on a lake of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from qualityhelpers import PROJECT, env_of

pytestmark = pytest.mark.stack


def test_the_command_checks_a_day_and_prints_what_it_did(quality_lake):
    lake = quality_lake.model_copy(update={"model_name": "test-quality-no-such-model"})
    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "data-quality", "--date", "2026-01-05"],
        env=env_of(lake),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["interval"] == ["2026-01-05T00:00:00+00:00", "2026-01-06T00:00:00+00:00"]
    assert summary["reference"]["kind"] == "lake_train"  # no such model: the lake fallback
    (window,) = summary["windows"]  # an empty lake: only the day's (empty) inference log
    assert window["window_id"] == "inference-2026-01-05T00:00:00Z"
    assert window["status"] == "empty" and window["rows"] == 0
    assert summary["breaches"] == 0
