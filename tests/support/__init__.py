"""Helpers and fixtures shared by the test folders, registered once by tests/conftest.py
(`pytest_plugins`) and imported as `tests.support.<module>`: no `sys.path` edits.

- `lake`: a lake of a test's own (database, bucket, raw folder) and the facts of its input.
- `quality`: the data-quality scenario (a shifted sample, a champion, `airflow dags test`).
- `serving`: real processes on free loopback ports (API, PostgreSQL, Prometheus).
- `profiles`: small training profiles.
- `cleanup`: what the session leaves behind is removed, and checked (no trace).
"""
