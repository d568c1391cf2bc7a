"""Airflow's task supervisor, made to take its task's exit when it happens.

The task process closes its sockets to the supervisor a moment before it can be reaped;
Airflow 3.3's supervisor then finds it still running and sleeps until its next wake-up
(`[workers] min_heartbeat_interval`: 5 s by default, whole seconds) with nothing left to
watch. Measured: ~1 s idle after every task of a Celery worker (interval 1), 5 s after
`prepare_data`'s load_text and plan_image_shards in local mode, on the run's critical
path. Applied in every Airflow process of the project by `airflow_local_settings`
(config/airflow/python), which Airflow imports at its start.
"""

from __future__ import annotations

import contextlib


def notice_task_exit_at_once(activity=None) -> None:
    """Once every socket to the task is closed, the supervisor waits for the exit itself,
    for at most its wake-up interval, so its heartbeats keep their pace."""
    from airflow.sdk.execution_time import supervisor

    activity = activity or supervisor.ActivitySubprocess
    check_exit = activity._check_subprocess_exit
    if getattr(check_exit, "waits_for_the_exit", False):
        return

    def _check_subprocess_exit(self, raise_on_timeout=False, expect_signal=None):
        if self._exit_code is None and not self._open_sockets:
            # The tracker (psutil or Popen) keeps the exit code for the check below.
            with contextlib.suppress(self._process.TimeoutExpired):
                self._process.wait(timeout=supervisor.MIN_HEARTBEAT_INTERVAL)
        return check_exit(self, raise_on_timeout=raise_on_timeout, expect_signal=expect_signal)

    _check_subprocess_exit.waits_for_the_exit = True
    activity._check_subprocess_exit = _check_subprocess_exit
