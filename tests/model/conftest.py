"""A model trained once per session on the shipped sample with the `quick` profile (what
`make demo` trains), for the behavioural tests of this folder. No services: the search,
refit and scoring run in this process; nothing is logged anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from rakuten_mlops.preprocess import frame_from_csv
from rakuten_mlops.train import train_best

SAMPLE = Path(__file__).resolve().parents[2] / "raw_data"


@pytest.fixture(scope="session")
def sample_frame() -> pd.DataFrame:
    """The shipped sample's labelled products, split as the lake splits them (70/15/15)."""
    return frame_from_csv(SAMPLE / "X_train_update.csv", SAMPLE / "Y_train_CVw08PX.csv")


@pytest.fixture(scope="session")
def model(sample_frame):
    """The quick profile's winner, fitted on the train and validation rows only."""
    return train_best(sample_frame, "quick", report=lambda line: None).pipeline


@pytest.fixture(scope="session")
def test_rows(sample_frame) -> pd.DataFrame:
    """The held-out products (the model never saw them)."""
    rows = sample_frame[sample_frame["subset"] == "test"]
    return rows[["designation", "description", "prdtypecode"]].reset_index(drop=True)
