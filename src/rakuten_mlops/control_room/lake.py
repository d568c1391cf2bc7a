"""Lake: load batches, products and images per split and class, rejects by reason with
examples, a few product images with their labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import streamlit as st

from rakuten_mlops.control_room import queries
from rakuten_mlops.settings import Settings

SAMPLE_IMAGES = 6
HISTORY = timedelta(days=3650)  # the batches panel's time range: the whole history


def render(settings: Settings) -> None:
    st.title("Lake")
    now = datetime.now(UTC)
    batches = queries.panel(
        settings, "rakuten-data-quality", "Load batches", now - HISTORY, now + timedelta(days=1)
    )
    per_class = queries.frame(settings, queries.PRODUCTS_PER_CLASS)
    columns = st.columns(4)
    columns[0].metric("Load batches", len(batches))
    columns[1].metric("Products", int(per_class["products"].sum()) if len(per_class) else 0)
    columns[2].metric("Images", int(per_class["images"].sum()) if len(per_class) else 0)
    columns[3].metric("Classes", per_class["prdtypecode"].nunique() if len(per_class) else 0)

    st.subheader("Load batches")
    st.dataframe(batches, hide_index=True)

    st.subheader("Products and images per split and class")
    if per_class.empty:
        st.info("The lake holds no products yet: run `make demo` (prepare_data).")
    else:
        totals = per_class.groupby("split")[["products", "images"]].sum().reset_index()
        st.dataframe(totals, hide_index=True)
        chart = per_class.pivot_table(
            index="prdtypecode", columns="split", values="products", aggfunc="sum", fill_value=0
        )
        chart.index = chart.index.map(lambda code: str(int(code)) if code == code else "none")
        st.bar_chart(chart, x_label="prdtypecode", y_label="products")
        st.dataframe(per_class, hide_index=True)

    st.subheader("Rejects by reason")
    rejects = queries.frame(settings, queries.REJECTS_BY_REASON)
    if rejects.empty:
        st.success("No rejected input.")
    else:
        rejects["examples"] = rejects["examples"].map(" | ".join)
        st.dataframe(rejects, hide_index=True)

    st.subheader("Product images")
    show_images(settings)


@st.cache_data(show_spinner=False, max_entries=256)
def cached_image(_settings: Settings, bucket: str, key: str) -> bytes:
    # An image's key names its product and image ids: its bytes never change.
    return queries.image_bytes(_settings, bucket, key)


def show_images(settings: Settings) -> None:
    sample = queries.frame(settings, queries.SAMPLE_IMAGES, {"limit": SAMPLE_IMAGES})
    if sample.empty:
        st.info("No product image in the lake yet.")
        return
    for column, row in zip(st.columns(len(sample)), sample.itertuples(), strict=True):
        image = cached_image(settings, row.image_bucket, row.image_key)
        column.image(image, caption=f"{row.prdtypecode} {row.category}: {row.designation[:60]}")
