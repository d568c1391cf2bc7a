"""The HTML report of a window (rakuten_mlops.quality.report): self-contained and complete."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import pytest

from rakuten_mlops.quality.config import QualityConfig
from rakuten_mlops.quality.features import Profile
from rakuten_mlops.quality.report import render_html
from rakuten_mlops.quality.results import Reference, Window, WindowResult
from rakuten_mlops.quality.statistics import evaluate, window_status


def profile(rows: int, shift: bool, seed: int) -> Profile:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame(
        {
            "designation_chars": rng.integers(20, 120, rows),
            "description_chars": rng.integers(0, 2000, rows),
            "uppercase_ratio": rng.random(rows) * (1 if shift else 0.2),
            "language": rng.choice(["fr", "en", "<script>alert(1)</script>"], rows),
            "label": pd.array(rng.choice([10, 40, 50], rows), dtype="Int64"),
            "designation_empty": False,
            "description_empty": rng.random(rows) < 0.3,
            "text_key": [f"k{i}" for i in range(rows)],
        }
    )
    return Profile(features, meta={"texts": rows})


@pytest.fixture(scope="module")
def result() -> WindowResult:
    config = QualityConfig()
    rows = evaluate(profile(800, False, 0), profile(500, True, 1), config)
    window = Window(
        "batch-7", "load_batch", datetime(2026, 1, 2, tzinfo=UTC), batch_id=7
    )
    reference = Reference(
        "champion", "dataset-abc-train", "train subset of abc", "3", "abc"
    )
    return WindowResult(
        window,
        reference,
        rows,
        500,
        800,
        window_status(rows, 500, reference, config),
        dag_run_id="manual__x",
    )


def test_the_report_is_one_self_contained_file(result):
    html = render_html(result)
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html)
    charts = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    features = {r.feature for r in result.rows if r.category == "drift"}
    assert len(charts) == len(features) >= 4
    for chart in charts:  # each one well-formed SVG, with bars and their tooltips
        root = ElementTree.fromstring(chart)
        rects = root.findall("{http://www.w3.org/2000/svg}rect")
        assert rects and all(r.find("{http://www.w3.org/2000/svg}title") is not None for r in rects)


def test_the_report_names_the_window_reference_and_breaches(result):
    html = render_html(result)
    assert result.status == "breach" and "status s-breach" in html
    assert "batch-7" in html and "dataset-abc-train" in html and "manual__x" in html
    assert "<h2>Breaches (3)</h2>" in html  # uppercase_ratio: psi, js_distance, kl_divergence
    assert "<b>uppercase_ratio</b> psi" in html
    for section in ("Drift against the reference", "Quality of the window", "Basic statistics"):
        assert section in html
    assert "<script>" not in html  # data is escaped, in tables and in chart tooltips
    assert "&lt;script&gt;alert(1)&lt;/script&gt;: reference" in html


def test_a_window_without_reference_still_reports_its_quality():
    config = QualityConfig()
    rows = evaluate(None, profile(300, False, 2), config)
    assert rows and not any(r.category == "drift" for r in rows)
    none = Reference("none", None, "no champion and no earlier batch")
    window = Window(
        "batch-1", "load_batch", datetime(2026, 1, 1, tzinfo=UTC), batch_id=1
    )
    html = render_html(
        WindowResult(
            window, none, rows, 300, 0, window_status(rows, 300, none, config)
        )
    )
    assert "No drift statistics" in html and "status s-no_reference" in html
    assert "<svg" not in html
