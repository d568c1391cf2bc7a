"""A model name, experiment and folders of a test module's own, removed afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from rakuten_mlops.ml import registry
from rakuten_mlops.ml.trust import forget
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect


@contextlib.contextmanager
def private_model(
    settings: Settings, folder: Path, prefix: str, processed: Path | None = None
) -> Iterator[Settings]:
    """Settings whose registered model, experiment, trust and promotion records are the
    caller's alone; all of them deleted on exit (a failed test may not have made them).
    `processed`: another fixture's processed_data_dir, to read the datasets it saved."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    own = settings.model_copy(
        update={
            "model_name": name,
            "mlflow_experiment": name,
            "models_dir": folder / "models",
            "processed_data_dir": processed or folder / "processed",
        }
    )
    try:
        yield own
    finally:
        client = registry.client(own)
        with contextlib.suppress(Exception):
            client.delete_registered_model(name)
        forget(own, name)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            for run in client.search_runs([experiment.experiment_id]):
                client.delete_run(run.info.run_id)
            client.delete_experiment(experiment.experiment_id)
        with connect(own) as conn:
            conn.execute("DELETE FROM model_promotions WHERE model_name = %s", (name,))
