"""`rakuten-mlops data-quality`: the DAG's job from the command line, on a lake of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

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
    # What `make demo` prints at its end: that run's windows and where to see them.
    shown = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "quality-summary"], env=env_of(lake),
        cwd=PROJECT, capture_output=True, text=True, timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "inference-2026-01-05T00:00:00Z: empty (0 rows), no breach" in shown.stdout
    room = f"http://{lake.bind_host}:{lake.control_room_port}/quality (user CONTROL_ROOM_USER"
    assert room in shown.stdout and "AIRFLOW_ADMIN_PASSWORD" in shown.stdout


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


def test_the_job_refuses_an_unmigrated_lake_and_the_command_migrates_it_first(quality_lake):
    """Only `migrate` changes the schema: the job names what to run; the command, like the
    DAG's first task, applies the migrations before it starts."""
    from rakuten_mlops.quality.job import run
    from rakuten_mlops.schema import SchemaMissing
    from rakuten_mlops.storage import connect
    from tests.support.lake import Lake

    with Lake(quality_lake).connect() as conn:  # an empty schema: no table at all
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    with pytest.raises(SchemaMissing, match="rakuten-mlops migrate") as refused:
        run(quality_lake, datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 6, tzinfo=UTC))
    assert repr(quality_lake.postgres_db) in str(refused.value)
    with connect(quality_lake) as conn:  # and nothing was created
        assert conn.execute("SELECT to_regclass('quality_windows')").fetchone()[0] is None
    # No champion of its own: the reference is the lake's, whatever the user's registry holds.
    lake = quality_lake.model_copy(update={"model_name": "test-quality-no-such-model"})
    result = _data_quality(lake)
    assert result.returncode == 0, result.stderr[-2000:]
    with connect(quality_lake) as conn:
        assert conn.execute("SELECT to_regclass('quality_windows')").fetchone()[0] is not None