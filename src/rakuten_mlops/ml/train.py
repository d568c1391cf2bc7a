"""Model search: one cross-validated search per model family, the best refit once.

A *profile* (`config/training/<name>.yaml`) says which families to search, over which
grids, with how many stratified folds, and which of them use successive halving. Every
family is scored with weighted F1 (the challenge's metric) on the same folds of the
training rows, so their cross-validated scores compare. No test row is ever seen here.

Pure functions of a frame with columns productid, designation, description, prdtypecode,
subset, and a profile (rakuten_mlops.ml.profile): a fitted pipeline out. No database,
no MLflow: the train stage (rakuten_mlops.ml.stages) logs what this returns.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.experimental import enable_halving_search_cv  # noqa: F401 - enables the next
from sklearn.model_selection import (
    GridSearchCV,
    HalvingGridSearchCV,
    StratifiedKFold,
)
from sklearn.pipeline import Pipeline

from rakuten_mlops.errors import TrainingError
from rakuten_mlops.ml import oof, race
from rakuten_mlops.ml.calibration import fit_temperature
from rakuten_mlops.ml.features import build_pipeline, pipeline_params
from rakuten_mlops.ml.fusion import IMAGE_COLUMN
from rakuten_mlops.ml.profile import OUT_OF_FOLD, load_profile
from rakuten_mlops.ml.resources import PeakMemory, search_workers

SCORING = "f1_weighted"
INPUT_COLUMNS = ["designation", "description"]
OPTIONAL_INPUT_COLUMNS = [IMAGE_COLUMN]  # issue 17: attached by ml.image_stage


# --------------------------------------------------------------------------- results


@dataclass
class FamilyResult:
    family: str
    search: str  # grid | halving | race
    best_params: dict[str, Any]
    cv_score: float  # mean weighted F1 of the best candidate over the folds
    cv_std: float
    n_candidates: int
    n_fits: int
    seconds: float
    peak_rss_mb: float
    cv_results: pd.DataFrame = field(repr=False)
    # Successive halving: rows used per iteration (the best is picked in the last one);
    # racing: rows of each rung the family reached (cv_results' `n_resources` has each
    # candidate's). A raced family's cv_score is its best at the last rung it reached.
    n_resources: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cv_results")
        return data


@dataclass
class SearchResult:
    profile: str
    families: dict[str, FamilyResult]
    n_train: int
    cv_folds: int
    seconds: float
    peak_rss_mb: float
    # Racing: the family of the last rung's best candidate (the others stopped earlier,
    # their scores come from fewer rows and do not compare). None: the best cv_score.
    winner: str | None = None

    @property
    def best(self) -> FamilyResult:
        if self.winner is not None:
            return self.families[self.winner]
        return max(self.families.values(), key=lambda result: result.cv_score)

    def summary(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "search": race.RACE if self.winner is not None else "per_family",
            "best_family": self.best.family,
            "best_params": self.best.best_params,
            "best_cv_f1_weighted": self.best.cv_score,
            "n_train": self.n_train,
            "cv_folds": self.cv_folds,
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "families": {name: result.summary() for name, result in self.families.items()},
        }


# --------------------------------------------------------------------------- search


def split_xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Pipeline input (the raw text columns, and the image vectors when the frame has
    them: only the fusion family reads them) and the labels."""
    columns = INPUT_COLUMNS + [c for c in OPTIONAL_INPUT_COLUMNS if c in frame]
    X = frame[columns].reset_index(drop=True)  # noqa: N806 - scikit-learn's naming
    return X, frame["prdtypecode"].to_numpy(dtype=np.int64)


def training_rows(frame: pd.DataFrame, profile: dict[str, Any]) -> pd.DataFrame:
    subsets = profile["train_subsets"]
    rows = frame[frame["subset"].isin(subsets)]
    if rows.empty:
        raise TrainingError(f"no rows in subsets {subsets}: is the dataset split?")
    return rows


def folds(profile: dict[str, Any]):
    """The profile's stratified folds: every family, and the calibration, use these."""
    return StratifiedKFold(profile["cv_folds"], shuffle=True, random_state=profile["random_state"])


def family_pipeline(
    family: str,
    profile: dict[str, Any],
    params: dict[str, Any] | None = None,
    *,
    n_jobs: int = 1,
    memory: str | None = None,
) -> Pipeline:
    """The family's pipeline as the profile configures it (features, selection, seed)."""
    spec = profile["families"][family]
    return build_pipeline(
        family,
        params if params is not None else spec.get("fixed"),
        {**profile["features"], **(spec.get("features") or {})},
        select_k=spec.get("select_k"),
        random_state=profile["random_state"],
        n_jobs=n_jobs,
        memory=memory,
    )


def scorer(memory: str | None):
    """Weighted F1; with a cache folder, it also keeps the decision values calibration
    reads back (rakuten_mlops.ml.oof)."""
    return oof.RecordingScorer(memory) if memory else SCORING


def make_search(family: str, spec: dict[str, Any], profile: dict[str, Any], memory: str | None):
    # n_jobs=1: the search parallelises over candidates x folds.
    pipeline = family_pipeline(family, profile, memory=memory)
    grid = _as_grid(family, spec["grid"])
    common = {
        "scoring": scorer(memory),
        "cv": folds(profile),
        "n_jobs": profile["n_jobs"],
        "refit": False,  # only the winning family is refit, once
        "error_score": "raise",
        "return_train_score": False,
    }
    if spec["search"] == "grid":
        return GridSearchCV(pipeline, grid, **common)
    halving = spec.get("halving") or {}
    return HalvingGridSearchCV(
        pipeline,
        grid,
        factor=halving.get("factor", 3),
        min_resources=halving.get("min_resources", "exhaust"),
        aggressive_elimination=halving.get("aggressive_elimination", False),
        random_state=profile["random_state"],
        **common,
    )


def _as_grid(family: str, grid: dict[str, list]) -> dict[str, list]:
    if not grid:
        return {}
    return {
        key: [_yaml_value(v) for v in values]
        for key, values in pipeline_params(family, grid).items()
    }


def _yaml_value(value):
    # YAML has no tuples: ngram ranges come back as lists.
    return tuple(value) if isinstance(value, list) else value


def search_family(
    family: str,
    frame: pd.DataFrame,
    profile: dict[str, Any],
    memory: str | None = None,
) -> FamilyResult:
    spec = profile["families"][family]
    X, y = split_xy(frame)  # noqa: N806
    searcher = make_search(family, spec, profile, memory)
    with PeakMemory() as peak:
        started = time.perf_counter()
        searcher.fit(X, y)
        seconds = time.perf_counter() - started
    results = pd.DataFrame(searcher.cv_results_)
    keep = [c for c in results.columns if c.startswith("param_") or c in _RESULT_COLUMNS]
    results = results[keep].copy()
    best = searcher.best_index_
    n_fits = int(len(results) * profile["cv_folds"])
    fixed = {k: _plain(v) for k, v in pipeline_params(family, spec.get("fixed") or {}).items()}
    return FamilyResult(
        family=family,
        search=spec["search"],
        best_params={**fixed, **{k: _plain(v) for k, v in searcher.best_params_.items()}},
        cv_score=float(results["mean_test_score"][best]),
        cv_std=float(results["std_test_score"][best]),
        n_candidates=int(results["params"].map(str).nunique()),
        n_fits=n_fits,
        seconds=seconds,
        peak_rss_mb=peak.mb,
        cv_results=results,
        n_resources=[int(n) for n in getattr(searcher, "n_resources_", [])],
    )


_RESULT_COLUMNS = {
    "params",
    "mean_test_score",
    "std_test_score",
    "rank_test_score",
    "mean_fit_time",
    "mean_score_time",
    "iter",
    "n_resources",
}


def search(
    frame: pd.DataFrame,
    profile: str | Path | dict,
    families: list[str] | None = None,
    report=print,
    memory: str | None = None,
) -> SearchResult:
    """Search every family of the profile on the training rows of `frame`.

    The TF-IDF of each fold is computed once and shared by all candidates and families
    through the joblib cache `memory` (a `feature_cache()` folder; by default one of its
    own, removed afterwards).
    """
    if memory is None:
        with feature_cache() as memory:
            return search(frame, profile, families, report, memory)
    profile = load_profile(profile)
    rows = training_rows(frame, profile)
    families = families or list(profile["families"])
    unknown = sorted(set(families) - set(profile["families"]))
    if unknown:
        raise TrainingError(
            f"family {unknown[0]!r} is not in profile {profile['name']!r} "
            f"(it has {', '.join(profile['families'])})"
        )
    if profile["search"] == race.RACE:
        chosen = {name: profile["families"][name] for name in families}
        return race_families(rows, {**profile, "families": chosen}, memory, report)
    results: dict[str, FamilyResult] = {}
    started = time.perf_counter()
    with PeakMemory() as peak:
        for family in families:
            report(
                f"searching {family} ({profile['families'][family]['search']}) "
                f"on {len(rows)} rows, {profile['cv_folds']} folds"
            )
            results[family] = search_family(family, rows, profile, memory=memory)
            result = results[family]
            report(
                f"  {family}: cv f1_weighted {result.cv_score:.4f} "
                f"± {result.cv_std:.4f} in {result.seconds:.0f}s with {result.best_params}"
            )
    return SearchResult(
        profile=profile["name"],
        families=results,
        n_train=len(rows),
        cv_folds=profile["cv_folds"],
        seconds=time.perf_counter() - started,
        peak_rss_mb=peak.mb,
    )


def race_families(
    rows: pd.DataFrame, profile: dict[str, Any], memory: str | None, report=print
) -> SearchResult:
    """Every candidate of every family raced on growing subsamples of the same folds
    (rakuten_mlops.ml.race); one FamilyResult per family, its budget in cv_results."""
    X, y = split_xy(rows)  # noqa: N806
    searcher, owners = race.make_race(profile, memory, scorer(memory), folds(profile))
    report(
        f"racing {', '.join(profile['families'])} on {len(rows)} rows, "
        f"{profile['cv_folds']} folds, factor {profile['race']['factor']}"
    )
    with PeakMemory() as peak:
        started = time.perf_counter()
        searcher.fit(X, y)
        seconds = time.perf_counter() - started
    rung_sizes = zip(searcher.n_resources_, searcher.n_candidates_, strict=True)
    report(f"  rungs (rows, candidates): {list(rung_sizes)}")
    tables = race.family_tables(searcher, owners, _RESULT_COLUMNS)
    results = {
        family: _raced_family(family, table, profile, peak.mb)
        for family, table in tables.items()
    }
    for result in results.values():
        report(
            f"  {result.family}: stopped at {result.n_resources[-1]} rows, cv f1_weighted "
            f"{result.cv_score:.4f} ± {result.cv_std:.4f} with {result.best_params}"
        )
    return SearchResult(
        profile=profile["name"],
        families=results,
        n_train=len(rows),
        cv_folds=profile["cv_folds"],
        seconds=seconds,
        peak_rss_mb=peak.mb,
        winner=race.winner(searcher, owners),
    )


def _raced_family(
    family: str, table: pd.DataFrame, profile: dict[str, Any], peak_mb: float
) -> FamilyResult:
    best = race.last_rung_best(table)
    folds_ = profile["cv_folds"]
    return FamilyResult(
        family=family,
        search=race.RACE,
        best_params={k: _plain(v) for k, v in table["params"][best].items()},
        cv_score=float(table["mean_test_score"][best]),
        cv_std=float(table["std_test_score"][best]),
        n_candidates=int(table["params"].map(str).nunique()),
        n_fits=int(len(table) * folds_),
        # The race runs candidates of all families side by side: a family's share is the
        # time its fits and scorings took in the workers, not a wall-clock span.
        seconds=float(((table["mean_fit_time"] + table["mean_score_time"]) * folds_).sum()),
        peak_rss_mb=peak_mb,
        cv_results=table,
        n_resources=race.rungs(table),
    )


def refit(frame: pd.DataFrame, result: FamilyResult, profile: str | Path | dict) -> Pipeline:
    """The winning family's pipeline with its best parameters, fitted on all training rows."""
    profile = load_profile(profile)
    pipeline = family_pipeline(result.family, profile, result.best_params, n_jobs=profile["n_jobs"])
    X, y = split_xy(training_rows(frame, profile))  # noqa: N806
    return pipeline.fit(X, y)


@contextlib.contextmanager
def feature_cache():
    """A temporary joblib cache folder for the folds' fitted features, removed afterwards."""
    folder = tempfile.mkdtemp(prefix="rakuten-search-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _plain(value):
    """numpy scalars / tuples -> plain JSON-able values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------- the stage


def score_temperature(
    pipeline: Pipeline,
    frame: pd.DataFrame,
    best: FamilyResult,
    profile: str | Path | dict,
    memory: str | None = None,
    report=print,
) -> float | None:
    """For a model without predict_proba (LinearSVC): the softmax temperature of its
    decision function (serving turns decision values into probabilities with it), fitted
    on decision values for rows the model did not learn. None for models with
    probabilities, or when the profile's calibration subset is empty.

    `calibration: out_of_fold`: `best`'s decision values on the search's folds, as the
    search recorded them in `memory` (rakuten_mlops.ml.oof), a fold it did not record
    cross-validated again (its features from `memory`); otherwise the refit `pipeline` on
    the calibration subset's rows.
    """
    if not oof.has_margin_only(pipeline):
        return None
    profile = load_profile(profile)
    calibration = profile["calibration"]
    if calibration != OUT_OF_FOLD:
        if calibration not in set(frame["subset"]):
            return None
        X, y = split_xy(frame[frame["subset"] == calibration])  # noqa: N806
        return fit_temperature(pipeline.decision_function(X), y, pipeline.classes_)
    X, y = split_xy(training_rows(frame, profile))  # noqa: N806
    unfitted = family_pipeline(best.family, profile, best.best_params, memory=memory)
    splits = list(folds(profile).split(X, y))
    if profile["search"] == race.RACE:
        splits = race.last_rung_splits(
            splits, profile["random_state"], best.n_resources[-1], len(y)
        )
    decision, recorded = oof.out_of_fold_decisions(
        unfitted, X, y, splits, profile["n_jobs"], memory
    )
    report(f"calibration: {recorded} of {len(splits)} folds' decision values were the search's")
    held_out = ~np.isnan(decision).any(axis=1)  # a race's last rung may leave a few rows out
    return fit_temperature(decision[held_out], y[held_out], pipeline.classes_)


@dataclass
class Trained:
    """The train stage's outcome before logging: the search, the refit winner, its scores'
    temperature (None when it has probabilities), and what refit and calibration took."""

    search: SearchResult
    pipeline: Pipeline
    temperature: float | None
    refit_seconds: float
    calibration_seconds: float


def train_best(
    frame: pd.DataFrame,
    profile: str | Path | dict,
    families: list[str] | None = None,
    report=print,
) -> Trained:
    """Search, refit the best family on all training rows, calibrate its scores: the train
    stage without MLflow. Calibration reuses the search's cached fold features."""
    profile = load_profile(profile)
    with search_workers(), feature_cache() as memory:
        result = search(frame, profile, families, report=report, memory=memory)
        best = result.best
        report(
            f"best: {best.family} cv f1_weighted {best.cv_score:.4f}; refitting on "
            f"{result.n_train} rows"
        )
        started = time.perf_counter()
        pipeline = refit(frame, best, profile)
        refit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        temperature = score_temperature(pipeline, frame, best, profile, memory, report)
        calibration_seconds = time.perf_counter() - started
    if temperature is not None:
        report(f"score temperature {temperature:.4f} ({profile['calibration']} decision values)")
    return Trained(result, pipeline, temperature, refit_seconds, calibration_seconds)
