"""The load tests' fixtures live in lakehelpers.py (tests/dags uses them too)."""

from lakehelpers import lake, lake_database, sample_dir  # noqa: F401
