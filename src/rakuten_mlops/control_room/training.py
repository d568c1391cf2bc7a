"""Training: runs per dataset version, the CV table per family, the champion history with
each gate decision and its intervals, the confusion matrix and per-class F1."""

from __future__ import annotations

import io
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
EXPERIMENT_TTL = 3600  # seconds an experiment name's id is reused (it changes only if
# the experiment is deleted for good and created again)
RUNS_TTL = 30  # seconds the run list is reused across sessions (new runs show up after it)
ARTIFACTS = ("evaluation/per_class_report.csv", "evaluation/confusion_matrix.png")

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

    experiment = cached_experiment_id(settings, settings.mlflow_experiment)
    every_run = pd.DataFrame() if experiment is None else cached_runs(settings, experiment)
    runs = queries.training_runs(every_run)
    st.subheader("Training runs per dataset version")
    if runs.empty:
        st.info(f"No finished run in the MLflow experiment {settings.mlflow_experiment!r}.")
        return
    if "params.dataset_id" not in runs and "tags.dataset_id" in runs:
        # Runs logged outside `rakuten-mlops train` carry the dataset as a tag only.
        runs = runs.assign(**{"params.dataset_id": runs["tags.dataset_id"]})
    table = runs[[c for c in RUN_COLUMNS if c in runs]].rename(columns=RUN_COLUMNS)
    st.dataframe(table, hide_index=True)
    if "dataset_id" in table:
        counts = table.groupby("dataset_id").size().rename("runs").reset_index()
        st.dataframe(counts, hide_index=True)

    run_id = st.selectbox("Run", table["run_id"], format_func=lambda r: describe(table, r))
    run = runs[runs["run_id"] == run_id].iloc[0]
    st.subheader("Cross-validation per family")
    families = queries.family_runs(every_run, run_id)
    if families.empty:
        st.info("This run logged no family runs.")
    else:
        columns = [c for c in FAMILY_COLUMNS if c in families]
        cv = families[columns].rename(columns=FAMILY_COLUMNS)
        st.dataframe(cv.sort_values("cv_f1_weighted", ascending=False), hide_index=True)
    show_evaluation(settings, run_id, run["artifact_uri"])


def describe(table: pd.DataFrame, run_id: str) -> str:
    row = table[table["run_id"] == run_id].iloc[0]
    return f"{row.get('started')} {row.get('best_family', '')} ({run_id[:8]})"


# MLflow answers in about half a second per request: the experiment's runs (trainings and
# family runs together, one search) are shared by every session for RUNS_TTL seconds
# (the `_settings` argument is not hashed).
@st.cache_data(ttl=RUNS_TTL, show_spinner=False)
def cached_runs(_settings: Settings, experiment_id: str) -> pd.DataFrame:
    return queries.experiment_runs(_settings, experiment_id)


# An experiment's id never changes while it exists: one request saved per run refresh.
@st.cache_data(ttl=EXPERIMENT_TTL, show_spinner=False)
def cached_experiment_id(_settings: Settings, experiment: str) -> str | None:
    return queries.experiment_id(_settings)


@st.cache_data(ttl=RUNS_TTL, show_spinner=False)
def evaluation_artifacts(
    _settings: Settings, run_id: str, artifact_uri: str
) -> dict[str, bytes] | None:
    """The run's per-class report and confusion matrix (None until it is evaluated):
    from the S3 store when MLflow proxies it there, else downloaded through MLflow."""
    found = {name: queries.stored_artifact(_settings, artifact_uri, name) for name in ARTIFACTS}
    if all(found.values()):
        return found
    with tempfile.TemporaryDirectory(prefix="control-room-") as folder:
        with ThreadPoolExecutor(max_workers=len(ARTIFACTS)) as pool:
            paths = list(pool.map(
                lambda path: queries.run_artifact(_settings, run_id, path, Path(folder)),
                ARTIFACTS,
            ))
        if any(path is None for path in paths):
            return None
        return {name: path.read_bytes() for name, path in zip(ARTIFACTS, paths, strict=True)}


def show_evaluation(settings: Settings, run_id: str, artifact_uri: str) -> None:
    st.subheader("Evaluation on the test rows")
    found = evaluation_artifacts(settings, run_id, artifact_uri)
    if found is None:
        st.info("This run has not been evaluated yet (`rakuten-mlops evaluate`).")
        return
    report, matrix = (found[name] for name in ARTIFACTS)
    per_class = pd.read_csv(io.BytesIO(report))
    st.markdown("**Per-class F1**")
    labels = per_class["prdtypecode"].astype(str) + " " + per_class["category"].fillna("")
    st.bar_chart(per_class.set_index(labels)["f1"], horizontal=True, y_label="F1")
    st.dataframe(per_class, hide_index=True)
    st.markdown("**Confusion matrix**")
    st.image(matrix)
