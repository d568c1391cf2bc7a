"""Airflow's task supervisor as every Airflow process of the project runs it
(rakuten_mlops.localstack.task_supervisor, loaded through airflow_local_settings)."""

from __future__ import annotations

import os
import subprocess
import sys

from rakuten_mlops.localstack.services import airflow_env


def test_a_task_supervisor_takes_its_process_exit_as_soon_as_the_sockets_close():
    """Once every socket to the task process is closed, the supervisor waits for the
    process itself and has its exit code on that check, instead of finding it still
    running and sleeping until its next wake-up with nothing left to watch (1-5 s idle
    after a task)."""
    import psutil
    from airflow.sdk.execution_time.supervisor import ActivitySubprocess, PsutilTracker

    from rakuten_mlops.localstack.task_supervisor import notice_task_exit_at_once

    class Supervisor(ActivitySubprocess):  # Airflow's own checks, on a process of the test
        pass

    notice_task_exit_at_once(Supervisor)
    task = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    supervisor = object.__new__(Supervisor)
    supervisor._process = PsutilTracker(psutil.Process(task.pid))
    supervisor._exit_code = None
    supervisor._open_sockets = {"the task's requests": "requests"}
    try:
        # A socket still open: the task may still talk, so nothing waits for it here.
        assert supervisor._check_subprocess_exit() is None
        supervisor._open_sockets = {}
        assert supervisor._check_subprocess_exit() == 0
        assert not psutil.pid_exists(task.pid)  # reaped, by the supervisor
    finally:
        task.kill()
        task.wait()


def test_every_airflow_process_of_local_mode_starts_with_the_fix(settings):
    """What `make up`'s Airflow processes and `rakuten-mlops airflow ...` run with: the
    environment of local mode, whose `import airflow` loads airflow_local_settings."""
    probe = ("import airflow\n"
             "from airflow.sdk.execution_time.supervisor import ActivitySubprocess\n"
             "check = ActivitySubprocess._check_subprocess_exit\n"
             "print(getattr(check, 'waits_for_the_exit', False))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, **airflow_env(settings)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
