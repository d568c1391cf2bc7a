"""The served model: where it comes from, how it is swapped, and how texts reach it.

* `ModelManager.refresh()` loads the registry's `MODEL_NAME@MODEL_ALIAS` (MLflow) when
  it changed, falls back to the exported copy in `models/` when MLflow is unreachable
  (saying why), and swaps the new model in with one reference assignment: requests
  already running finish on the model they started with, so a swap fails none of them.
  The model is loaded once per version, never per request.
* `LoadedModel.predict()` is the one place that knows the model's input contract: a
  fitted scikit-learn Pipeline whose first step takes a frame with `designation` and
  `description` columns (rakuten_mlops.ml.text.TextCleaner), or, failing that, one raw
  string per product. Which one is probed once, at load time.

The fallback reads the export through rakuten_mlops.ml.export, its one reader.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sklearn

from rakuten_mlops.errors import ExportError
from rakuten_mlops.ml import tracking
from rakuten_mlops.ml import trust as model_trust
from rakuten_mlops.ml.calibration import softmax, temperature_of
from rakuten_mlops.ml.export import read_export
from rakuten_mlops.ml.fusion import IMAGE_COLUMN, reads_images
from rakuten_mlops.ml.registry import NO_SUCH_MODEL_CODES
from rakuten_mlops.serving.categories import load_category_names
from rakuten_mlops.serving.fastpath import (
    PROBE,
    DirectSteps,
    contiguous_coefficients,
    same_features,
    split_pipeline,
    top_k,
)
from rakuten_mlops.serving.health import _first_line, database_problem, registry_reachable
from rakuten_mlops.settings import Settings

log = logging.getLogger("rakuten_mlops.serving.model")

Source = Literal["registry", "export"]


class ModelLoadError(RuntimeError):
    """No usable model: the message says what was tried."""


class RegistryUnavailable(ModelLoadError):
    """MLflow cannot be reached, or has no version under the alias."""


@dataclass(frozen=True)
class Prediction:
    """Top-k (prdtypecode, probability) per product, most probable first, and timings."""

    top: list[list[tuple[int, float]]]
    preprocess_seconds: float
    inference_seconds: float


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    source: Source
    estimator: Any
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    categories: dict[int, str] = field(default_factory=dict)
    fallback_reason: str | None = None
    # What makes two loads the same model (registry version, or export file state).
    identity: tuple = ()
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Set by prepare(): the input contract and the split into preprocessing + estimator.
    input_kind: Literal["frame", "text"] = "frame"
    score: Literal["predict_proba", "softmax(decision_function)"] = "predict_proba"
    # Models without predict_proba: softmax(decision / temperature). The temperature is
    # fitted at training time on held-out rows (fit_temperature) and stored with the
    # model as `score_temperature` (run param or tag, or export metadata); None = 1.0,
    # i.e. a monotone but uncalibrated score.
    temperature: float | None = None
    classes: tuple[int, ...] = ()
    reads_images: bool = False  # a fusion model (issue 17): image vectors are an input
    _steps: tuple[Any, Any] | None = None

    # ---------------------------------------------------------------- preparation

    def prepare(self) -> LoadedModel:
        """Probe the input contract, split the pipeline and warm it up; a new instance."""
        preprocess, final = split_pipeline(self.estimator)
        contiguous_coefficients(final)
        if hasattr(final, "predict_proba"):
            score = "predict_proba"
        elif hasattr(final, "decision_function"):
            score = "softmax(decision_function)"
        else:
            raise ModelLoadError(
                f"{self.name} v{self.version}: the final step {type(final).__name__} has "
                "neither predict_proba nor decision_function"
            )
        classes = getattr(final, "classes_", None)
        if classes is None:
            classes = getattr(self.estimator, "classes_", None)
        if classes is None:
            raise ModelLoadError(f"{self.name} v{self.version}: not fitted (no classes_)")
        try:
            codes = tuple(int(code) for code in classes)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"classes_ are not prdtypecodes: {list(classes)[:5]}") from exc
        if isinstance(preprocess, DirectSteps) and not same_features(
            preprocess, self.estimator[:-1]
        ):
            preprocess = self.estimator[:-1]
        prepared = replace(self, score=score, classes=codes, _steps=(preprocess, final),
                           input_kind="frame", reads_images=reads_images(self.estimator))
        errors = []
        for kind in ("frame", "text"):
            candidate = replace(prepared, input_kind=kind)
            try:
                candidate.predict([PROBE["designation"]], [PROBE["description"]], k=1)
                # Twice: the first call may include one-off work (lazy imports, caches).
                candidate.predict([PROBE["designation"]], ["<b>une description</b>"], k=1)
                return candidate
            except Exception as exc:  # noqa: BLE001 - try the next contract, report all
                errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        raise ModelLoadError(
            f"{self.name} v{self.version} accepts neither a designation/description frame "
            f"nor raw strings ({'; '.join(errors)})"
        )

    # ---------------------------------------------------------------- prediction

    def _inputs(self, designations: list[str], descriptions: list[str | None], images=None):
        if self.input_kind == "frame":
            import pandas as pd

            columns = {"designation": designations, "description": descriptions}
            if images is not None and self.reads_images:
                columns[IMAGE_COLUMN] = images
            return pd.DataFrame(columns, dtype=object)
        return [
            f"{designation} {description}" if description else designation
            for designation, description in zip(designations, descriptions, strict=True)
        ]

    def predict(
        self, designations: list[str], descriptions: list[str | None], k: int, images=None
    ) -> Prediction:
        """One call into the model for all the products; `images`: a feature vector or
        None per product, read only by a model that takes images."""
        preprocess, final = self._steps
        started = time.perf_counter()
        # The model was validated when it was fitted and at load; per request, the checks
        # of parameters and finiteness cost more than scoring one product does.
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            features = self._inputs(designations, descriptions, images)
            if preprocess is not None:
                features = preprocess.transform(features)
            prepared = time.perf_counter()
            if self.score == "predict_proba":
                scores = np.asarray(final.predict_proba(features), dtype=float)
            else:
                decision = np.asarray(final.decision_function(features), dtype=float)
                scores = softmax(decision / (self.temperature or 1.0))
        finished = time.perf_counter()
        if not np.isfinite(scores).all():
            raise ValueError("the model returned non-finite scores")
        if scores.shape != (len(designations), len(self.classes)):
            # e.g. a raw-text vectoriser fed a frame iterates over its column names
            raise ValueError(
                f"the model returned scores of shape {scores.shape} for "
                f"{len(designations)} products and {len(self.classes)} classes"
            )
        return Prediction(
            top=top_k(scores, self.classes, k),
            preprocess_seconds=prepared - started,
            inference_seconds=finished - prepared,
        )

    def category(self, code: int) -> str | None:
        return self.categories.get(code)


# ------------------------------------------------------------------------- registry


def configure_mlflow_client(settings: Settings) -> None:
    """MLflow as the read-only user; fail fast instead of MLflow's minutes of retries."""
    tracking.configure(settings, "reader")


def champion_version(settings: Settings):
    """The registry's ModelVersion under MODEL_NAME@MODEL_ALIAS (RegistryUnavailable if none)."""
    if reason := registry_reachable(settings):
        raise RegistryUnavailable(reason)
    from mlflow.exceptions import MlflowException

    client = tracking.client(settings, "reader")
    ref = f"{settings.model_name}@{settings.model_alias}"
    try:
        return client.get_model_version_by_alias(settings.model_name, settings.model_alias)
    except MlflowException as exc:
        if exc.error_code in NO_SUCH_MODEL_CODES:
            raise RegistryUnavailable(
                f"no version of {ref} in the registry ({exc.error_code})"
            ) from exc
        # MLflow is up but could not answer: say why, not "no version".
        cause = database_problem(settings) or _first_line(exc.message)
        raise RegistryUnavailable(
            f"MLflow could not look up {ref} ({exc.error_code}): {cause}"
        ) from exc


def load_registry_version(settings: Settings, version, expected_sha256: str | None) -> LoadedModel:
    """Download one registered version, check it against the checksum recorded at its
    promotion (model_trust.UntrustedModel if not), and load it with its run's data."""
    import mlflow.sklearn
    from mlflow.artifacts import download_artifacts

    uri = settings.tracking_uri
    # Also sets the process-wide registry URI, through which MLflow 3 resolves models:/
    # URIs whatever download_artifacts is passed.
    client = tracking.client(settings, "reader")
    label = f"champion v{version.version}"
    with tempfile.TemporaryDirectory(prefix="rakuten-model-") as folder:
        local = download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}",
            dst_path=folder,
            tracking_uri=uri,
            registry_uri=uri,
        )
        # Hash what was downloaded and unpickle that same folder only if it is what the
        # promotion step recorded: loading a pickle runs its code.
        model_trust.verify(Path(local), expected_sha256, label)
        estimator = mlflow.sklearn.load_model(local)
    metrics: dict[str, float] = {}
    params: dict[str, str] = {}
    training: dict[str, Any] = {"version_tags": dict(version.tags or {})}
    if version.run_id:
        run = client.get_run(version.run_id)
        metrics = {key: float(value) for key, value in run.data.metrics.items()}
        params = dict(run.data.params)
        training["run_tags"] = {
            key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.")
        }
        training["datasets"] = [
            {
                "name": item.dataset.name,
                "digest": item.dataset.digest,
                "source_type": item.dataset.source_type,
                "source": item.dataset.source,
                "context": {tag.key: tag.value for tag in item.tags},
            }
            for item in (run.inputs.dataset_inputs if run.inputs else [])
        ]
    return LoadedModel(
        name=version.name,
        version=str(version.version),
        alias=settings.model_alias,
        source="registry",
        estimator=estimator,
        run_id=version.run_id,
        metrics=metrics,
        params=params,
        training_data=training,
        identity=("registry", version.name, str(version.version)),
        temperature=temperature_of(dict(version.tags or {}), training.get("run_tags", {}), params),
    )


# ------------------------------------------------------------------------- export


def load_exported(settings: Settings, fallback_reason: str | None) -> LoadedModel:
    """The champion exported to models/ (rakuten_mlops.ml.export), as a LoadedModel."""
    try:
        exported = read_export(settings)
    except ExportError as exc:
        raise ModelLoadError(str(exc)) from exc
    metadata = exported.metadata
    return LoadedModel(
        name=str(metadata.get("name") or settings.model_name),
        version=str(metadata.get("version") or "export"),
        alias=settings.model_alias,
        source="export",
        estimator=exported.load(),
        run_id=metadata.get("run_id"),
        metrics={
            key: float(value)
            for key, value in (metadata.get("metrics") or {}).items()
            if isinstance(value, int | float)
        },
        params={key: str(value) for key, value in (metadata.get("params") or {}).items()},
        training_data={
            "export": str(exported.model_file),
            **{
                key: metadata[key]
                for key in ("training_data", "exported_at")
                if key in metadata
            },
        },
        fallback_reason=fallback_reason,
        identity=exported.identity(),
        temperature=temperature_of(metadata, metadata.get("params") or {}),
    )


def export_identity(settings: Settings) -> tuple:
    try:
        return read_export(settings).identity()
    except ExportError as exc:
        raise ModelLoadError(str(exc)) from exc


# ------------------------------------------------------------------------- lifecycle


@dataclass(frozen=True)
class RefreshResult:
    changed: bool
    previous: LoadedModel | None
    current: LoadedModel | None
    detail: str | None
    failed: bool = False


class ModelManager:
    """Holds the served model and replaces it when the champion changes.

    Readers take `manager.current` once per request; `refresh()` (admin reload, periodic
    alias check) builds and warms the new model fully before one assignment swaps it in.
    Refreshes are serialised by a lock; readers never wait for it.
    """

    def __init__(self, settings: Settings, on_swap=None):
        self.settings = settings
        self.current: LoadedModel | None = None
        self.detail: str | None = "loading: the first model load has not finished"
        self._lock = threading.Lock()
        self._on_swap = on_swap
        self._categories: tuple[dict[int, str], str] | None = None
        # (name, version, recorded checksum) of the last refused champion, and why.
        self._refused: tuple[tuple, str] | None = None

    def refresh(self, force: bool = False) -> RefreshResult:
        """Serve the champion: the registry's if reachable, else the export (at start-up).

        With MLflow unreachable, a model from the registry stays in service; the export
        is only used when there is nothing better. `force` reloads even an unchanged one.
        """
        with self._lock:
            previous = self.current
            try:
                candidate, reason = self._next_model(previous, force)
            except Exception as exc:  # noqa: BLE001 - a failed refresh keeps what serves
                detail = str(exc)
                if not isinstance(exc, ModelLoadError):
                    detail = f"{type(exc).__name__}: {exc}"
                self.detail = (
                    detail if previous is None else f"refresh failed, kept the model: {detail}"
                )
                log.error("model refresh failed: %s", detail)
                return RefreshResult(False, previous, previous, detail, failed=True)
            if candidate is None:
                self.detail = reason if reason else (previous.fallback_reason if previous else None)
                return RefreshResult(False, previous, previous, reason)
            names, origin = self._category_names(reload=force or previous is None)
            candidate = replace(candidate, categories=names)
            self.current = candidate  # the swap: one reference assignment
            self.detail = candidate.fallback_reason
            log.info(
                "serving %s v%s from the %s (categories from %s)%s",
                candidate.name,
                candidate.version,
                candidate.source,
                origin,
                f"; fallback: {candidate.fallback_reason}" if candidate.fallback_reason else "",
            )
            if self._on_swap:
                self._on_swap(previous, candidate)
            return RefreshResult(True, previous, candidate, candidate.fallback_reason)

    def _next_model(
        self, previous: LoadedModel | None, force: bool
    ) -> tuple[LoadedModel | None, str | None]:
        """(the model to swap in, or None to keep the current one; why)."""
        settings = self.settings
        try:
            version = champion_version(settings)
        except RegistryUnavailable as exc:
            registry_problem = str(exc)
        else:
            identity = ("registry", version.name, str(version.version))
            if previous is not None and previous.identity == identity and not force:
                return None, None
            try:
                return self._load_trusted(version, force), None
            except model_trust.UntrustedModel as exc:
                registry_problem = str(exc)
            except Exception as exc:  # noqa: BLE001 - a broken version must not kill the API
                registry_problem = (
                    f"{version.name} v{version.version} from the registry could not be "
                    f"loaded: {type(exc).__name__}: {exc}"
                )
        # The registry cannot give us a champion we may serve.
        if previous is not None and previous.source == "registry":
            log.warning("keeping %s v%s: %s", previous.name, previous.version, registry_problem)
            return None, (f"keeping the loaded model (v{previous.version}): {registry_problem}")
        try:
            if (
                previous is not None
                and not force
                and previous.identity == export_identity(settings)
            ):
                return None, previous.fallback_reason
            return load_exported(settings, fallback_reason=registry_problem).prepare(), None
        except ModelLoadError as exc:
            raise ModelLoadError(f"{registry_problem}; and {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a corrupt export must not kill the API
            raise ModelLoadError(
                f"{registry_problem}; and the export could not be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _load_trusted(self, version, force: bool) -> LoadedModel:
        """The version, loaded only if its artifacts match the checksum recorded at its
        promotion. A refused version is not downloaded again until its record changes
        (or `force`)."""
        import psycopg

        settings = self.settings
        label = f"champion v{version.version}"
        try:
            expected = model_trust.recorded_sha256(settings, version.name, version.version)
        except psycopg.Error as exc:
            cause = database_problem(settings) or f"{type(exc).__name__}: {_first_line(str(exc))}"
            raise model_trust.UntrustedModel(
                f"{label} not loaded: its promotion checksum cannot be read ({cause})"
            ) from exc
        key = (version.name, str(version.version), expected)
        if not force and self._refused is not None and self._refused[0] == key:
            raise model_trust.UntrustedModel(self._refused[1])
        try:
            loaded = load_registry_version(settings, version, expected).prepare()
        except model_trust.UntrustedModel as exc:
            self._refused = (key, str(exc))
            log.error("%s", exc)
            raise
        self._refused = None
        return loaded

    def _category_names(self, reload: bool) -> tuple[dict[int, str], str]:
        if reload or self._categories is None or not self._categories[0]:
            self._categories = load_category_names(self.settings)
        return self._categories
