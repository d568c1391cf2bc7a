"""Training: runs per dataset version, the CV table per family, the champion history with
each gate decision and its intervals, the confusion matrix and per-class F1."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from rakuten_mlops.control_room import queries
from rakuten_mlops.settings import Settings

RUN_COLUMNS = {
    "run_id": "run_id",
    "start_time": "started",
    "params.dataset_id": "dataset_id",
    "params.profile": "profile",
    "params.best_family": "best_family",
    "metrics.cv_f1_weighted": "cv_f1_weighted",
    "metrics.test_f1_weighted": "test_f1_weighted",
}
FAMILY_COLUMNS = {
    "params.family": "family",
    "metrics.cv_f1_weighted": "cv_f1_weighted",
    "metrics.cv_f1_weighted_std": "cv_f1_weighted_std",
    "params.n_candidates": "candidates",
    "metrics.seconds": "seconds",
    "metrics.peak_rss_mb": "peak_rss_mb",
}


def render(settings: Settings) -> None:
    st.title("Training")
    st.subheader("Champion history and gate decisions")
    promotions = queries.frame(settings, queries.PROMOTIONS)
    if promotions.empty:
        st.info("No promotion decision yet: run `make demo` (ml_pipeline).")
    else:
        st.dataframe(promotions, hide_index=True)

    runs = queries.training_runs(settings)
    st.subheader("Training runs per dataset version")
    if runs.empty:
        st.info(f"No finished run in the MLflow experiment {settings.mlflow_experiment!r}.")
        return
    table = runs[[c for c in RUN_COLUMNS if c in runs]].rename(columns=RUN_COLUMNS)
    st.dataframe(table, hide_index=True)
    if "dataset_id" in table:
        counts = table.groupby("dataset_id").size().rename("runs").reset_index()
        st.dataframe(counts, hide_index=True)

    run_id = st.selectbox("Run", table["run_id"], format_func=lambda r: describe(table, r))
    run = runs[runs["run_id"] == run_id].iloc[0]
    st.subheader("Cross-validation per family")
    families = queries.family_runs(settings, run["experiment_id"], run_id)
    if families.empty:
        st.info("This run logged no family runs.")
    else:
        columns = [c for c in FAMILY_COLUMNS if c in families]
        cv = families[columns].rename(columns=FAMILY_COLUMNS)
        st.dataframe(cv.sort_values("cv_f1_weighted", ascending=False), hide_index=True)
    show_evaluation(settings, run_id)


def describe(table: pd.DataFrame, run_id: str) -> str:
    row = table[table["run_id"] == run_id].iloc[0]
    return f"{row.get('started')} {row.get('best_family', '')} ({run_id[:8]})"


def show_evaluation(settings: Settings, run_id: str) -> None:
    st.subheader("Evaluation on the test rows")
    with tempfile.TemporaryDirectory(prefix="control-room-") as folder:
        report = queries.run_artifact(
            settings, run_id, "evaluation/per_class_report.csv", Path(folder)
        )
        matrix = queries.run_artifact(
            settings, run_id, "evaluation/confusion_matrix.png", Path(folder)
        )
        if report is None or matrix is None:
            st.info("This run has not been evaluated yet (`rakuten-mlops evaluate`).")
            return
        per_class = pd.read_csv(report)
        st.markdown("**Per-class F1**")
        labels = per_class["prdtypecode"].astype(str) + " " + per_class["category"].fillna("")
        st.bar_chart(per_class.set_index(labels)["f1"], horizontal=True, y_label="F1")
        st.dataframe(per_class, hide_index=True)
        st.markdown("**Confusion matrix**")
        st.image(matrix.read_bytes())
