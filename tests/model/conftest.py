"""A model trained once per session on the shipped sample, for the behavioural tests of
this folder: the `quick` profile's pipeline (its features, what `make demo` trains) with
the LinearSVC point of its grid that wins on the sample (C=1, balanced: README's training
table), fitted once on the train and validation rows. The search itself is left to
tests/ml: re-running it here would cost minutes for the same model. No services, nothing
logged anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rakuten_mlops.ml.dataset import frame_from_csv
from rakuten_mlops.ml.profile import load_profile
from rakuten_mlops.ml.train import family_pipeline, split_xy, training_rows

SAMPLE = Path(__file__).resolve().parents[2] / "raw_data"


@pytest.fixture(scope="session")
def sample_frame() -> pd.DataFrame:
    """The shipped sample's labelled products, split as the lake splits them (70/15/15)."""
    return frame_from_csv(SAMPLE / "X_train_update.csv", SAMPLE / "Y_train_CVw08PX.csv")


@pytest.fixture(scope="session")
def model(sample_frame):
    """The quick profile's LinearSVC (C=1, balanced), fitted on train + validation rows."""
    profile = load_profile("quick")
    pipeline = family_pipeline("linear_svc", profile, {"C": 1.0, "class_weight": "balanced"})
    return pipeline.fit(*split_xy(training_rows(sample_frame, profile)))


@pytest.fixture(scope="session")
def test_rows(sample_frame) -> pd.DataFrame:
    """The held-out products (the model never saw them)."""
    rows = sample_frame[sample_frame["subset"] == "test"]
    return rows[["designation", "description", "prdtypecode"]].reset_index(drop=True)
