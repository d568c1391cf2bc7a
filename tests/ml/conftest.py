"""Fixtures of the ML tests: the real sample shipped in raw_data/, and small profiles.

Pure tests (cleaning, pipelines, search) need no service. Tests marked `stack` use the
running MLflow, PostgreSQL and S3, under names of their own that they delete afterwards.

Training through the stages costs most of this folder's time, so the runs that tests
only read are trained once per session (`shared_dataset`, `tiny_run`, `worse_run`):
test_registry and test_gate each promote them under a registered model of their own
(tests/support/ml.private_model), so the decisions they check stay theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ml import private_model
from tests.support.profiles import TINY_PROFILE, WORSE_PROFILE

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


def quiet(line: str) -> None:
    pass


@dataclass
class SharedDataset:
    settings: object  # the experiment and processed_data_dir the shared runs live in
    dataset: object  # rakuten_mlops.ml.dataset.Dataset, also uploaded to S3


@pytest.fixture(scope="session")
def shared_dataset(stack, settings, sample_frame, categories, tmp_path_factory):
    """The sample's dataset snapshot (local and in S3), under an experiment of its own
    that is deleted, runs included, at the end of the session."""
    from rakuten_mlops.ml.dataset import save_dataset

    folder = tmp_path_factory.mktemp("shared_runs")
    with private_model(settings, folder, "test-ml-runs") as own:
        yield SharedDataset(own, save_dataset(own, sample_frame, categories))


@pytest.fixture(scope="session")
def tiny_run(shared_dataset) -> tuple[str, dict[str, float]]:
    """TINY_PROFILE (every family searched) trained and evaluated by the stages, once:
    (run id, the evaluate stage's metrics). Read only: promote it under your own name."""
    from rakuten_mlops.ml.stages import run_evaluate, run_train

    own, dataset_id = shared_dataset.settings, shared_dataset.dataset.dataset_id
    run_id = run_train(own, dataset_id, dict(TINY_PROFILE), report=quiet)
    return run_id, run_evaluate(own, run_id, report=quiet)


@pytest.fixture(scope="session")
def worse_run(shared_dataset) -> str:
    """WORSE_PROFILE (a five-tree forest, clearly worse than the baseline) trained and
    evaluated by the stages, once: its run id. Read only, like `tiny_run`."""
    from rakuten_mlops.ml.stages import run_evaluate, run_train

    own, dataset_id = shared_dataset.settings, shared_dataset.dataset.dataset_id
    run_id = run_train(own, dataset_id, dict(WORSE_PROFILE), report=quiet)
    run_evaluate(own, run_id, report=quiet)
    return run_id

