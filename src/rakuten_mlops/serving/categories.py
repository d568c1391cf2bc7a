"""Product-type names for the API's answers: from the lake, else the shipped CSV."""

from __future__ import annotations

import csv
import logging

from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.serving.model")


def load_category_names(settings: Settings) -> tuple[dict[int, str], str]:
    """prdtypecode -> name: the lake's `categories` table, else raw_data/category_names.csv."""
    try:
        with connect(settings, connect_timeout=3) as conn:
            rows = conn.execute("SELECT prdtypecode, name FROM categories").fetchall()
        if rows:
            return {int(code): name for code, name in rows}, "lake"
    except Exception as exc:  # noqa: BLE001 - the lake is optional here
        log.info("category names not read from the lake (%s)", type(exc).__name__)
    path = settings.path(settings.raw_data_dir) / "category_names.csv"
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            names = {int(row["prdtypecode"]): row["category"] for row in csv.DictReader(handle)}
        return names, str(path)
    except (OSError, KeyError, ValueError) as exc:
        log.warning("no category names (lake empty or unreachable, %s unreadable: %s)", path, exc)
        return {}, "none"
