"""The champion outside MLflow: `models/<name>.joblib` + `models/<name>.json`.

The one writer (`write_export`, called by the promote stage) and the one reader
(`read_export`, used by the API's fallback when MLflow is unreachable) of that format.
The metadata JSON holds `name`, `version`, `alias`, `run_id`, `model_path` (relative to
`models/`), `model_sha256`, `metrics`, `params`, `label_mapping`, `training_data`,
`promotion`, `exported_at` and, for margin classifiers, `score_temperature`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from rakuten_mlops.errors import ExportError
from rakuten_mlops.settings import Settings


def export_paths(settings: Settings, model_name: str | None = None) -> tuple[Path, Path]:
    """(model file, metadata file) of the export of `model_name` (default: the settings')."""
    folder = settings.path(settings.models_dir)
    name = model_name or settings.model_name
    return folder / f"{name}.joblib", folder / f"{name}.json"


def write_export(
    settings: Settings, model, metadata: dict[str, Any], model_name: str | None = None
) -> Path:
    """Write `model` and `metadata` (plus model_path, model_sha256) as the export.

    Both files are replaced atomically (written aside, then renamed), the model first, so
    a reader never sees metadata describing a model that is not there yet.
    """
    model_file, meta_file = export_paths(settings, model_name)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=model_file.parent, suffix=".joblib.tmp", delete=False
    ) as tmp:
        joblib.dump(model, tmp.name)
        digest = hashlib.sha256(Path(tmp.name).read_bytes()).hexdigest()
    os.replace(tmp.name, model_file)
    meta = {**metadata, "model_path": model_file.name, "model_sha256": digest}
    with tempfile.NamedTemporaryFile(
        "w", dir=meta_file.parent, suffix=".json.tmp", delete=False
    ) as tmp:
        json.dump(meta, tmp, indent=2, sort_keys=True, default=str)
    os.replace(tmp.name, meta_file)
    return model_file


@dataclass(frozen=True)
class Export:
    """An export found on disk: where its model file is, and its metadata."""

    model_file: Path
    metadata: dict[str, Any]

    def load(self):
        """The pickled pipeline (trusted: only the promote stage writes models/)."""
        return joblib.load(self.model_file)

    def identity(self) -> tuple:
        """Changes whenever the export is rewritten (metadata, size or mtime)."""
        stat = self.model_file.stat()
        return (
            "export",
            json.dumps(self.metadata, sort_keys=True, default=str),
            (str(self.model_file), stat.st_mtime_ns, stat.st_size),
        )


def read_export(settings: Settings, model_name: str | None = None) -> Export:
    """The export written by `write_export` (ExportError saying what is missing if none)."""
    model_file, meta_file = export_paths(settings, model_name)
    if not meta_file.is_file():
        raise ExportError(f"no exported model: {meta_file} does not exist")
    try:
        metadata = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{meta_file} is not readable JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ExportError(f"{meta_file} is not a JSON object")
    declared = metadata.get("model_path") or model_file.name
    path = meta_file.parent / declared
    if not path.is_file():
        raise ExportError(f"{meta_file} names {path}, which does not exist")
    return Export(path, metadata)
