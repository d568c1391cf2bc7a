"""Out-of-fold decision values for calibration, kept by the search that computed them.

Out-of-fold calibration (rakuten_mlops.ml.train.score_temperature) fits the winner's
softmax temperature on its decision values for each fold's held-out rows, from the model
of that fold's other rows. The search computed exactly these when it scored that
candidate on those folds, so its scorer (`RecordingScorer`, weighted F1 like
"f1_weighted") keeps a margin classifier's decision values in a folder (the search's
feature cache), keyed by the classifier's parameters and the rows scored, and
`out_of_fold_decisions` reads them back. Only a fold the search did not score that way
(e.g. a halving rung smaller than the folds) is fitted again.
"""

from __future__ import annotations

import os
from pathlib import Path

import joblib
import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline

FOLDER = "decisions"


def has_margin_only(estimator) -> bool:
    """A classifier whose scores need a temperature: decision values, no probabilities."""
    return hasattr(estimator, "decision_function") and not hasattr(estimator, "predict_proba")


class RecordingScorer:
    """Weighted F1 of a fitted pipeline on (X, y), as the "f1_weighted" scorer computes
    it; a margin classifier's decision values on X are kept in `folder` on the way."""

    def __init__(self, folder: str | Path):
        self.folder = str(folder)

    def __call__(self, pipeline: Pipeline, X, y) -> float:  # noqa: N803
        features = pipeline[:-1].transform(X)
        final = pipeline[-1]
        if has_margin_only(final):
            _save(_path(self.folder, final, X.index), X.index, final.classes_,
                  final.decision_function(features))
        return float(f1_score(y, final.predict(features), average="weighted"))


def out_of_fold_decisions(
    unfitted: Pipeline, X, y, splits, n_jobs: int, folder: str | None = None  # noqa: N803
) -> tuple[np.ndarray, int]:
    """Each held-out row's decision values from the model of its fold's training rows
    (NaN for a row no fold holds out), and how many folds the search had recorded.

    Not cross_val_predict: it label-encodes y before fitting, so the folds' cached
    features (keyed on the search's raw labels) would all be missed and recomputed.
    """
    classes = np.unique(y)
    decision = np.full((len(y), len(classes)), np.nan, dtype=np.float64)
    found = {}
    if folder is not None:
        for i, (_, test) in enumerate(splits):
            kept = _load(_path(folder, unfitted[-1], X.index[test]))
            if kept is not None:
                index, fold_classes, values = kept
                found[i] = (X.index.get_indexer(index), fold_classes, values)
    missing = [splits[i] for i in range(len(splits)) if i not in found]

    def fold(train, test):
        model = clone(unfitted).fit(X.iloc[train], y[train])
        return test, model.classes_, model.decision_function(X.iloc[test])

    fitted = Parallel(n_jobs=max(1, min(n_jobs, len(missing))))(
        delayed(fold)(train, test) for train, test in missing
    )
    for test, fold_classes, values in [*found.values(), *fitted]:
        # A class absent from a fold's training rows scores below all the others there.
        rows = np.full((len(test), len(classes)), values.min() - 1.0)
        rows[:, np.searchsorted(classes, fold_classes)] = values
        decision[test] = rows
    return decision, len(found)


def _path(folder: str, classifier, index) -> Path:
    # The classifier's parameters (not the fitted object: calibration asks with an
    # unfitted one) and the scored rows, in any order.
    model = joblib.hash((type(classifier).__name__, classifier.get_params()))
    rows = joblib.hash(np.sort(np.asarray(index)))
    return Path(folder) / FOLDER / f"{model}-{rows}.npz"


def _save(path: Path, index, classes: np.ndarray, decision: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with partial.open("wb") as out:
        np.savez(out, index=np.asarray(index), classes=classes, decision=decision)
    os.replace(partial, path)  # a reader never sees half a file


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The scored rows' index labels, the classifier's classes and its decision values."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as kept:
        return kept["index"], kept["classes"], kept["decision"]
