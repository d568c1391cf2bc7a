"""Fixtures of the ML tests: the real sample shipped in raw_data/, and small profiles.

Pure tests (cleaning, pipelines, search) need no service. Tests marked `stack` use the
running MLflow, PostgreSQL and S3, under names of their own that they delete afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
SAMPLE = PROJECT / "raw_data"


@pytest.fixture(scope="session")
def sample_frame():
    """The shipped sample's labelled products, split like the lake splits (70/15/15)."""
    from rakuten_mlops.ml.dataset import frame_from_csv

    return frame_from_csv(SAMPLE / "X_train_update.csv", SAMPLE / "Y_train_CVw08PX.csv")


@pytest.fixture(scope="session")
def categories():
    import pandas as pd

    names = pd.read_csv(SAMPLE / "category_names.csv")
    return dict(zip(names.prdtypecode.astype(int), names.category, strict=True))


@pytest.fixture(scope="session")
def nltk_dir(settings) -> str:
    return str(settings.path(settings.nltk_data_dir))
