"""Racing search: every candidate of every family in one successive-halving search.

Searched family by family, each family pays for its own TF-IDF and for all its
candidates on all rows, even when it is clearly behind after a few thousand. Racing puts
the families' grids into one scikit-learn `HalvingGridSearchCV` over a single pipeline
whose `select` and `clf` steps each candidate swaps:

    clean -> tfidf -> select (passthrough | chi2 SelectKBest) -> clf (the family's model)

- resource = n_samples: rung i scores every surviving candidate on the same subsample of
  the same stratified folds (scikit-learn subsamples each fold's train and test rows,
  nested from rung to rung); only the best 1/factor of them, whatever their family,
  go on to a rung `factor` times larger. A family none of whose candidates survives a
  rung stops there;
- the pipeline's joblib `memory` caches `clean` and `tfidf` per fold and rung: computed
  once, shared by every candidate of every family (their features are the profile's,
  which is why racing families may not override them);
- the winner is the best candidate of the last rung, on all of the folds' rows.

Pure: a frame and a profile in, the fitted search and its per-family tables out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.experimental import enable_halving_search_cv  # noqa: F401 - enables the next
from sklearn.feature_selection import SelectKBest, chi2
from sklearn.model_selection import HalvingGridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils import resample

from rakuten_mlops.ml.features import (
    TREE_FAMILIES,
    TextCleaner,
    make_estimator,
    make_features,
    pipeline_params,
)

RACE = "race"
# Steps every racing candidate shares (their fitted output is cached per fold and rung).
SHARED_STEPS = ("clean", "tfidf")
DEFAULT_SELECT_K = 20_000


def race_pipeline(profile: dict[str, Any], memory: str | None) -> Pipeline:
    """The shared pipeline; `select` and `clf` are placeholders each candidate replaces."""
    return Pipeline(
        [
            ("clean", TextCleaner()),
            ("tfidf", make_features(profile["features"])),
            ("select", "passthrough"),
            ("clf", make_estimator("linear_svc", random_state=profile["random_state"])),
        ],
        memory=memory,
    )


def race_grids(profile: dict[str, Any]) -> tuple[list[dict[str, list]], dict[int, str]]:
    """One parameter grid per family (its model, its selection, its fixed and searched
    parameters), and which family each model object belongs to (by id: the search's
    `cv_results_["params"]` hold these very objects)."""
    grids, owners = [], {}
    for family, spec in profile["families"].items():
        estimator = make_estimator(family, random_state=profile["random_state"], n_jobs=1)
        owners[id(estimator)] = family
        select = (
            SelectKBest(chi2, k=spec.get("select_k") or DEFAULT_SELECT_K)
            if family in TREE_FAMILIES
            else "passthrough"
        )
        fixed = pipeline_params(family, spec.get("fixed") or {})
        searched = pipeline_params(family, spec.get("grid") or {})
        grids.append(
            {
                "clf": [estimator],
                "select": [select],
                **{key: [_yaml_value(value)] for key, value in fixed.items()},
                **{key: [_yaml_value(v) for v in values] for key, values in searched.items()},
            }
        )
    return grids, owners


def make_race(profile: dict[str, Any], memory: str | None, scoring: str, cv):
    race = profile["race"]
    grids, owners = race_grids(profile)
    searcher = HalvingGridSearchCV(
        race_pipeline(profile, memory),
        grids,
        factor=race["factor"],
        resource="n_samples",
        min_resources=race["min_resources"],
        aggressive_elimination=race["aggressive_elimination"],
        scoring=scoring,
        cv=cv,
        n_jobs=profile["n_jobs"],
        refit=False,  # the winner is refit once, on all training rows, by train.refit
        error_score="raise",
        return_train_score=False,
        random_state=profile["random_state"],
    )
    return searcher, owners


def family_tables(searcher, owners: dict[int, str], keep: set[str]) -> dict[str, pd.DataFrame]:
    """The race's cv_results_ split by family: each candidate's rows per rung it ran
    (`iter`, `n_resources`: its budget), parameters as the family's own pipeline names
    them (without the swapped `clf` / `select` objects)."""
    results = pd.DataFrame(searcher.cv_results_)
    family = results["params"].map(lambda params: owners[id(params["clf"])])
    results["params"] = results["params"].map(own_params)
    tables = {}
    for name in dict.fromkeys(owners.values()):
        rows = results[family == name].reset_index(drop=True)
        columns = [
            column
            for column in rows.columns
            if column in keep
            or (
                column.startswith("param_")
                and column not in ("param_clf", "param_select")
                and rows[column].notna().any()
            )
        ]
        tables[name] = rows[columns].copy()
    return tables


def own_params(params: dict[str, Any]) -> dict[str, Any]:
    """A racing candidate's parameters without the step objects it swapped in."""
    return {key: value for key, value in params.items() if key not in ("clf", "select")}


def winner(searcher, owners: dict[int, str]) -> str:
    """The family of the best candidate of the last rung."""
    return owners[id(searcher.cv_results_["params"][searcher.best_index_]["clf"])]


def last_rung_best(table: pd.DataFrame) -> int:
    """Row of a family's best candidate at the last rung the family reached."""
    last = table[table["iter"] == table["iter"].max()]
    return int(last["mean_test_score"].idxmax())


def rungs(table: pd.DataFrame) -> list[int]:
    """Rows each rung the family reached gave its candidates."""
    return [int(n) for n in np.unique(table["n_resources"])]


def last_rung_splits(
    splits, random_state: int, last_rung: int, n_rows: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds as the race's last rung ran them: scikit-learn subsamples each fold's
    rows to the rung's fraction of all rows (with `min_resources: exhaust` the last rung
    may stop a few rows short of all) and shuffles them. Out-of-fold predictions on these
    are the ones the race recorded, and read the features that rung cached."""
    fraction = last_rung / n_rows  # as HalvingGridSearchCV computes it

    def subsample(rows):
        return resample(rows, replace=False, random_state=random_state,
                        n_samples=int(fraction * len(rows)))

    return [(subsample(train), subsample(test)) for train, test in splits]


def _yaml_value(value):
    # YAML has no tuples: ngram ranges come back as lists.
    return tuple(value) if isinstance(value, list) else value
