"""Predictions: a playground that calls the API and shows the top-k as bars; the recent
inference log's volume, latency and class mix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import altair as alt
import httpx
import pandas as pd
import streamlit as st

from rakuten_mlops.control_room import queries
from rakuten_mlops.settings import Settings

RECENT = timedelta(days=7)


def render(settings: Settings) -> None:
    st.title("Predictions")
    playground(settings)
    end = datetime.now(UTC) + timedelta(minutes=1)
    start = end - RECENT
    st.subheader("Inference log, last 7 days")
    served = queries.panel(settings, "rakuten-model", "Served versions (inference log)", start, end)
    st.dataframe(served, hide_index=True)
    per_hour = queries.frame(settings, queries.INFERENCE_PER_HOUR, {"start": start, "end": end})
    if per_hour.empty:
        st.info("No prediction logged in the last 7 days.")
        return
    left, right = st.columns(2)
    left.markdown("**Predictions per hour**")
    left.bar_chart(per_hour.set_index("hour")["predictions"])
    right.markdown("**Latency (ms), p50 and p95**")
    latency = per_hour.melt("hour", ["p50_latency_ms", "p95_latency_ms"], "quantile", "ms")
    # Points as well as lines: an hour alone (a fresh stack) is still visible.
    right.altair_chart(
        alt.Chart(latency).mark_line(point=True).encode(x="hour:T", y="ms:Q", color="quantile:N"),
        use_container_width=True,
    )
    st.markdown("**Class mix**")
    mix = queries.frame(settings, queries.CLASS_MIX, {"start": start, "end": end})
    mix["class"] = mix["prdtypecode"].astype(str) + " " + mix["category"]
    st.bar_chart(mix.set_index("class")["predictions"], horizontal=True)


def playground(settings: Settings) -> None:
    st.subheader("Playground")
    with st.form("playground"):
        designation = st.text_input("Designation", "Piscine tubulaire ronde 3,66 x 0,76 m")
        description = st.text_area("Description", "")
        top_k = st.slider("Top k", 1, 10, 5)
        asked = st.form_submit_button("Predict")
    if not asked:
        return
    try:
        answer = queries.predict(settings, designation, description, top_k)
    except httpx.HTTPStatusError as error:
        st.error(f"The API refused the request: HTTP {error.response.status_code} "
                 f"{error.response.text[:300]}")
        return
    except httpx.HTTPError as error:
        st.error(f"The API at {queries.api_url(settings)} did not answer ({type(error).__name__}).")
        return
    scores = pd.DataFrame(answer["predictions"])
    scores["class"] = scores["prdtypecode"].astype(str) + " " + scores["category"].fillna("")
    model = answer["model"]
    st.caption(f"model {model['name']} v{model['version']} ({model['source']})")
    st.bar_chart(scores.set_index("class")["probability"], horizontal=True)
