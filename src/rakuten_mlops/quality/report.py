"""A self-contained HTML data-quality report of one window: tables and inline SVG charts.

Readable without Grafana or a server: one file, no external asset (the plots are
inline SVG, written directly: no plotting library), stored in S3 by the job.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from html import escape

from rakuten_mlops.quality.results import ResultRow, WindowResult

DRIFT_METRICS = ("psi", "js_distance", "kl_divergence")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}
.breach{background:#fde2e1;font-weight:600}.small{color:#777}.ok{color:#1a7f37}
.status{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff}
.s-ok{background:#1a7f37}.s-breach{background:#cf222e}.s-insufficient,.s-no_reference,
.s-empty{background:#9a6700}
.charts{display:flex;flex-wrap:wrap;gap:.5em}.charts svg{border:1px solid #eee}
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "&infin;"
        return f"{value:.{digits}g}"
    return escape(str(value))


def _drift_table(rows: list[ResultRow]) -> str:
    by_feature: dict[str, dict[str, ResultRow]] = {}
    for row in rows:
        if row.category == "drift":
            by_feature.setdefault(row.feature, {})[row.metric] = row
    if not by_feature:
        return "<p class='small'>No drift statistics (no reference, or an empty window).</p>"
    head = (
        "<tr><th class='l'>feature</th>"
        + "".join(f"<th>{m}</th>" for m in DRIFT_METRICS)
        + "<th>n reference</th><th>n current</th><th>bins</th>"
        "<th>expected PSI without drift</th><th class='l'>verdict</th></tr>"
    )
    body = []
    for feature, metrics in by_feature.items():
        cells = []
        for metric in DRIFT_METRICS:
            row = metrics.get(metric)
            if row is None:
                cells.append("<td>&ndash;</td>")
                continue
            css = " class='breach'" if row.breach else ""
            cells.append(
                f"<td{css}>{_fmt(row.value)} <span class='small'>/ "
                f"{_fmt(row.threshold, 3)}</span></td>"
            )
        any_row = next(iter(metrics.values()))
        psi = metrics.get("psi", any_row)
        if any(r.breach for r in metrics.values()):
            verdict = "<b>drift</b>"
        elif not any_row.enough_data:
            verdict = f"too small to tell: {escape(any_row.reason)}"
        else:
            verdict = "<span class='ok'>no drift</span>"
        body.append(
            f"<tr><td class='l'>{escape(feature)}</td>{''.join(cells)}"
            f"<td>{_fmt(any_row.n_reference)}</td><td>{_fmt(any_row.n_current)}</td>"
            f"<td>{_fmt(any_row.bins)}</td><td>{_fmt(psi.expected_bias, 3)}</td>"
            f"<td class='l'>{verdict}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _detail_text(row: ResultRow) -> str:
    keep = {k: v for k, v in row.details.items() if k != "histogram" and v is not None}
    parts = [
        f"{k}={_fmt(v, 3) if isinstance(v, float) else escape(str(v))}"
        for k, v in list(keep.items())[:6]
    ]
    return ", ".join(parts)


def _quality_table(rows: list[ResultRow]) -> str:
    quality_rows = [r for r in rows if r.category == "quality"]
    if not quality_rows:
        return "<p class='small'>No quality statistics.</p>"
    head = (
        "<tr><th class='l'>feature</th><th class='l'>statistic</th><th>value</th>"
        "<th>threshold</th><th>n</th><th class='l'>details</th></tr>"
    )
    body = []
    for row in quality_rows:
        css = " class='breach'" if row.breach else ""
        note = "" if row.enough_data else f" <span class='small'>({escape(row.reason)})</span>"
        body.append(
            f"<tr{css}><td class='l'>{escape(row.feature)}</td><td class='l'>{row.metric}</td>"
            f"<td>{_fmt(row.value)}</td><td>{_fmt(row.threshold, 3)}</td>"
            f"<td>{_fmt(row.n_current)}</td><td class='l'>{_detail_text(row)}{note}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _stats_table(rows: list[ResultRow]) -> str:
    stats: dict[str, dict[str, ResultRow]] = {}
    for row in rows:
        if row.category == "stats":
            stats.setdefault(row.feature, {})[row.metric] = row
    if not stats:
        return ""
    names = ("mean", "std", "min", "p50", "max")
    head = "<tr><th class='l'>feature</th><th>n</th>" + "".join(f"<th>{n}</th>" for n in names)
    body = "".join(
        f"<tr><td class='l'>{escape(feature)}</td>"
        f"<td>{_fmt(next(iter(values.values())).n_current)}</td>"
        + "".join(f"<td>{_fmt(values[n].value) if n in values else '&ndash;'}</td>" for n in names)
        + "</tr>"
        for feature, values in stats.items()
    )
    return f"<h2>Basic statistics</h2><table>{head}</tr>{body}</table>"


SVG_WIDTH, SVG_HEIGHT = 300, 170
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 34, 292, 24, 118  # the bars' area


def histogram_svg(feature: str, histogram: dict, breach: bool) -> str:
    """Reference (grey) and current (blue, red on drift) proportions per bin, as inline SVG.

    Hand-written SVG: no plotting library, no rasterising (a window's dozen charts in a
    few milliseconds, sharp at any zoom); hovering a bar shows its bin and both shares.
    """
    bins, reference, current = histogram["bins"], histogram["reference"], histogram["current"]
    k = max(len(bins), 1)
    top = max([*reference, *current, 1e-9])
    step = (PLOT_RIGHT - PLOT_LEFT) / k
    bar = max(step * 0.4, 0.5)
    colour = "#cf222e" if breach else "#0969da"

    def y(share: float) -> float:
        return PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * share / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_WIDTH}" height="{SVG_HEIGHT}" '
        f'viewBox="0 0 {SVG_WIDTH} {SVG_HEIGHT}" role="img" aria-label="{escape(feature)}">',
        f'<text x="{SVG_WIDTH / 2}" y="14" text-anchor="middle" font-size="12" '
        f'font-weight="600">{escape(feature)}{" (drift)" if breach else ""}</text>',
        f'<line x1="{PLOT_LEFT}" y1="{PLOT_BOTTOM}" x2="{PLOT_RIGHT}" y2="{PLOT_BOTTOM}" '
        'stroke="#888"/>',
        f'<text x="{PLOT_LEFT - 3}" y="{PLOT_TOP + 4}" text-anchor="end" font-size="9">'
        f"{top:.0%}</text>",
        f'<text x="{PLOT_LEFT - 3}" y="{PLOT_BOTTOM}" text-anchor="end" font-size="9">0</text>',
    ]
    for i, (label, ref, cur) in enumerate(zip(bins, reference, current, strict=True)):
        x = PLOT_LEFT + i * step + step / 2
        tip = f"<title>{escape(str(label))}: reference {ref:.1%}, current {cur:.1%}</title>"
        for offset, share, fill in ((-bar, ref, "#8c959f"), (0, cur, colour)):
            parts.append(
                f'<rect x="{x + offset:.1f}" y="{y(share):.1f}" width="{bar:.1f}" '
                f'height="{PLOT_BOTTOM - y(share):.1f}" fill="{fill}">{tip}</rect>'
            )
        if k <= 12:
            parts.append(
                f'<text font-size="8" text-anchor="end" transform="translate({x:.1f} '
                f'{PLOT_BOTTOM + 8}) rotate(-40)">{escape(_short(str(label)))}</text>'
            )
    if k > 12:
        parts.append(
            f'<text x="{SVG_WIDTH / 2}" y="{PLOT_BOTTOM + 16}" text-anchor="middle" '
            f'font-size="9">{k} categories: hover a bar for its name</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def _short(label: str) -> str:
    """A bin label for an axis: numbers to 3 significant digits, at most 16 characters."""
    return _NUMBER.sub(lambda m: f"{float(m.group()):.3g}", label)[:16]


def plot_histograms(rows: list[ResultRow]) -> str | None:
    """The reference-vs-current chart of every drift feature (HTML), or None."""
    charts = [
        histogram_svg(r.feature, r.details["histogram"], r.breach)
        for r in rows
        if r.category == "drift" and "histogram" in r.details
    ]
    if not charts:
        return None
    legend = (
        "<p class='small'><span style='color:#8c959f'>&#9632;</span> reference "
        "<span style='color:#0969da'>&#9632;</span> current "
        "<span style='color:#cf222e'>&#9632;</span> current, drifted</p>"
    )
    return legend + "<div class='charts'>" + "".join(charts) + "</div>"


def render_html(result: WindowResult) -> str:
    window, ref = result.window, result.reference
    breaches = result.breaches
    charts = plot_histograms(result.rows)
    interval = ""
    if window.interval_start is not None:
        interval = (
            f"<tr><th class='l'>interval</th><td class='l'>{window.interval_start} &rarr; "
            f"{window.interval_end}</td></tr>"
        )
    breach_list = "".join(
        f"<li><b>{escape(r.feature)}</b> {r.metric} = {_fmt(r.value)} "
        f"(threshold {_fmt(r.threshold, 3)}, n={r.n_current})</li>"
        for r in breaches
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Data quality: {escape(window.window_id)}</title><style>{STYLE}</style></head>
<body>
<h1>Data quality report: {escape(window.window_id)}
 <span class="status s-{result.status}">{result.status}</span></h1>
<table>
<tr><th class='l'>window</th><td class='l'>{escape(window.kind)}, {result.n_rows} rows,
 at {window.window_time}</td></tr>{interval}
<tr><th class='l'>reference</th><td class='l'>{escape(ref.kind)}
 {escape(ref.reference_id or "")}: {escape(ref.note)} ({result.reference_rows} rows)</td></tr>
<tr><th class='l'>generated</th><td class='l'>{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC,
 DAG run {escape(result.dag_run_id or "-")}</td></tr>
</table>
<h2>Breaches ({len(breaches)})</h2>
{f"<ul>{breach_list}</ul>" if breaches else "<p class='ok'>None.</p>"}
<h2>Drift against the reference</h2>
<p class="small">PSI and KL divergence (natural log, empty bins smoothed to epsilon),
Jensen-Shannon distance (base 2); numeric features binned at the reference's quantiles
(definitions: rakuten_mlops/quality/drift.py, thresholds: config/quality.yaml). A statistic flags
drift only when the window is large enough to tell: enough rows, and its expected value
without drift well below the threshold.</p>
{_drift_table(result.rows)}
{charts or ""}
<h2>Quality of the window</h2>
{_quality_table(result.rows)}
{_stats_table(result.rows)}
</body></html>
"""
