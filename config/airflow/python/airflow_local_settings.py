"""Imported by every Airflow process of the project at its start (Airflow's
`airflow_local_settings` hook; this folder is on their PYTHONPATH)."""

from rakuten_mlops.localstack.task_supervisor import notice_task_exit_at_once

notice_task_exit_at_once()
