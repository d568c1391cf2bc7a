"""`rakuten-mlops data-quality`: the DAG's job from the command line, on a lake of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.quality import PROJECT, env_of

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


def _data_quality(lake, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "data-quality", "--date", "2026-01-05"],
        env={**env_of(lake), **env},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_a_bad_thresholds_file_ends_with_one_line_naming_the_key(quality_lake, tmp_path):
    thresholds = tmp_path / "quality.yaml"
    thresholds.write_text("drift:\n  thresholds:\n    psi:\n  binz: 3\n")
    result = _data_quality(quality_lake, QUALITY_CONFIG=str(thresholds))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = _last_line(result)
    assert last.startswith(f"data-quality: {thresholds}: ")
    named = last.removeprefix(f"data-quality: {thresholds}: ").split("; ")
    assert sorted(named) == ["drift.binz: unknown key", "drift.thresholds.psi: has no value"]


def test_an_unmigrated_lake_is_named_not_migrated_behind_the_users_back(quality_lake):
    """The job no longer migrates: a lake without its tables gets one line saying so."""
    from rakuten_mlops.storage import connect
    from tests.support.quality import reset

    reset(quality_lake)  # an empty schema: no table at all
    result = _data_quality(quality_lake)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = _last_line(result)
    assert last.startswith(f"data-quality: the lake {quality_lake.postgres_db!r} has no table ")
    assert "quality_windows" in last and "rakuten-mlops migrate" in last
    with connect(quality_lake) as conn:  # and nothing was created
        assert conn.execute("SELECT to_regclass('quality_windows')").fetchone()[0] is None
