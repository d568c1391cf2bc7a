"""Data quality and drift: each statistic per feature over time with its threshold,
breaches highlighted, the latest drift verdict (the Drift dashboard's own query), the
retraining each breach triggered and the gate's decision, and each window's HTML report,
served through the app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import altair as alt
import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from rakuten_mlops.control_room import queries
from rakuten_mlops.settings import Settings

DEFAULT_DAYS = 30
CHAIN_ROWS = 20  # latest breaches shown with their retraining
VERDICT_PANEL = ("rakuten-drift", "Latest drift verdict per feature")
WINDOWS_PANEL = ("rakuten-data-quality", "Windows")


def render(settings: Settings) -> None:
    st.title("Data quality and drift")
    days = st.number_input("Days shown", min_value=1, max_value=3650, value=DEFAULT_DAYS)
    end = datetime.now(UTC) + timedelta(days=1)
    start = end - timedelta(days=int(days) + 1)

    st.subheader("Latest drift verdict per feature")
    verdict = queries.panel(settings, *VERDICT_PANEL, start, end)
    if verdict.empty:
        st.info("No drift computed yet: run `rakuten-mlops data-quality`.")
    else:
        st.dataframe(verdict.style.apply(highlight_drift, axis=1), hide_index=True)

    statistics = queries.frame(settings, queries.STATISTICS, {"start": start, "end": end})
    st.subheader("Statistics over time")
    if statistics.empty:
        st.info("No statistic with a threshold in this period.")
    else:
        show_statistic(statistics)
        breaches = statistics[statistics["breach"]]
        st.subheader(f"Breaches ({len(breaches)})")
        st.dataframe(breaches, hide_index=True)

    st.subheader("Retraining after a breach")
    chain = queries.frame(settings, queries.RETRAINING_CHAIN, {"start": start, "end": end})
    if chain.empty:
        st.info("No breach in this period.")
    for row in chain.head(CHAIN_ROWS).itertuples():
        st.markdown(chain_line(row))
    st.caption("Breach -> the ml_pipeline run it triggered (QUALITY_TRIGGER_RETRAIN=true) "
               "-> the promotion gate's decision on its model.")

    st.subheader("Windows and their reports")
    windows = queries.panel(settings, *WINDOWS_PANEL, start, end)
    st.dataframe(windows, hide_index=True)
    if not windows.empty:
        show_report(settings, windows)


def chain_line(row) -> str:
    """One breach -> run -> decision, as a line of the page."""
    decision = (
        f"model {row.model_name} v{row.version}: **{row.decision}** ({row.gate_outcome}), "
        f"{row.reason}" if isinstance(row.decision, str) else "no gate decision yet"
    )
    return (
        f"- {row.checked_at:%Y-%m-%d %H:%M} UTC, data_quality run `{row.data_quality_run}` "
        f"breached {row.breached} → ml_pipeline run `{row.ml_pipeline_run}` → {decision}"
    )


def highlight_drift(row: pd.Series) -> list[str]:
    colour = "background-color: #f8d7da" if row.get("verdict") == "drift" else ""
    return [colour] * len(row)


def show_statistic(statistics: pd.DataFrame) -> None:
    metrics = sorted(statistics["metric"].unique())
    first = metrics.index("psi") if "psi" in metrics else 0
    metric = st.selectbox("Statistic", metrics, index=first)
    chosen = statistics[statistics["metric"] == metric]
    base = alt.Chart(chosen).encode(
        x=alt.X("window_time:T", title="window"),
        color=alt.Color("feature:N"),
        tooltip=["window_id", "kind", "feature", "value", "threshold", "breach"],
    )
    lines = base.mark_line(point=True).encode(y=alt.Y("value:Q", title=metric))
    threshold = base.mark_line(strokeDash=[6, 4]).encode(y="threshold:Q", detail="feature:N")
    breaches = (
        alt.Chart(chosen[chosen["breach"]])
        .mark_point(size=160, color="red", shape="diamond", filled=True)
        .encode(x="window_time:T", y="value:Q", tooltip=["window_id", "feature", "value"])
    )
    st.altair_chart(lines + threshold + breaches, use_container_width=True)
    st.caption("Dashed: the threshold; red diamonds: breaches.")


def show_report(settings: Settings, windows: pd.DataFrame) -> None:
    window_id = st.selectbox("Window", windows["window_id"])
    html = queries.report_html(settings, window_id)
    if html is None:
        st.info("This window has no HTML report.")
        return
    st.download_button(
        "Download the HTML report", html, file_name=f"{window_id}.html", mime="text/html"
    )
    components.html(html, height=700, scrolling=True)
