#!/usr/bin/env python3
"""Benchmark of the control room's pages (rakuten_mlops.control_room) on the demo lake.

Each page's script is run in Streamlit's own runtime (streamlit.testing AppTest: the same
script run, widgets and caches as a browser session gets, without the browser's paint)
against the user's stack and lake (`make demo` first), as the app itself reads them:
PostgreSQL as the read-only role, MLflow as its reader, Prometheus, S3, the API.

Measured per page: the first run in this process (cold: the page's caches empty, clients
made; MLflow imported beforehand, as the served app does at start) and the median of the
next runs (warm: what a user switching pages sees). Baseline in the same run: a page that
only writes a title, so the ratio says what the page's own reads and charts cost over
Streamlit's fixed cost.

Target: every page under 2 s (warm and cold). Needs the local stack (`make up`). Prints
readable lines on stderr, one JSON on stdout; exits 1 when a page misses the target or
raises.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TARGET_SECONDS = 2.0
WARM_RUNS = 3
RUN_TIMEOUT = 60  # seconds one page run may take before AppTest gives up


def note(message: str) -> None:
    print(f"[bench_control_room] {message}", file=sys.stderr, flush=True)


def page_script(settings, path: str) -> None:
    from rakuten_mlops.control_room.app import PAGES

    render = {p: r for p, _, _, r in PAGES}[path]
    render(settings)


def baseline_script(settings, path: str) -> None:
    import streamlit as st

    st.title(path)


def timed_run(script, settings, path: str) -> float:
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_function(
        script, kwargs={"settings": settings, "path": path}, default_timeout=RUN_TIMEOUT
    )
    started = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - started
    if app.exception:
        raise RuntimeError(f"page {path} raised: {app.exception[0].message}")
    return seconds


def measure(script, settings, path: str) -> dict[str, float]:
    cold = timed_run(script, settings, path)
    warm = statistics.median(timed_run(script, settings, path) for _ in range(WARM_RUNS))
    return {"cold_s": round(cold, 3), "warm_s": round(warm, 3)}


def main() -> int:
    from rakuten_mlops.control_room.app import PAGES
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    # As the served app (control_room/__main__.py) imports these before it serves.
    import altair  # noqa: F401
    import mlflow  # noqa: F401

    baseline = measure(baseline_script, settings, "baseline")
    note(f"baseline (a title only): cold {baseline['cold_s']:.3f} s, "
         f"warm {baseline['warm_s']:.3f} s")
    pages, failed = {}, []
    for path, title, _, _ in PAGES:
        result = measure(page_script, settings, path)
        result["warm_vs_baseline"] = round(result["warm_s"] / max(baseline["warm_s"], 1e-6), 1)
        pages[path] = result
        slow = max(result["cold_s"], result["warm_s"]) >= TARGET_SECONDS
        failed += [path] if slow else []
        note(
            f"{title:<24} cold {result['cold_s']:.3f} s  warm {result['warm_s']:.3f} s  "
            f"({result['warm_vs_baseline']}x baseline)  {'SLOW' if slow else 'ok'}"
        )
    print(json.dumps({"target_s": TARGET_SECONDS, "baseline": baseline, "pages": pages}))
    if failed:
        note(f"over {TARGET_SECONDS} s: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
