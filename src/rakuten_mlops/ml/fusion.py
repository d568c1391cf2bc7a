"""The `fusion` family: text scores and the image vector, stacked (pure).

    frame (designation, description[, image_features])
      -> text      a text family's pipeline (TF-IDF + LinearSVC by default): its decision
                   scores, out of fold (inner stratified folds) while fitting, so the
                   second level learns how far to trust scores it did not train on
      -> stack     [text scores | image vector (zeros without one) | has_image (0/1)]
      -> meta      StandardScaler + multinomial LogisticRegression (C searched)

One model serves products with and without an image: a product without one (no
`image_features` column, or None/NaN in it) goes through the same model with
has_image = 0. The image vector is rakuten_mlops.ml.image_features's, from the lake's
cache (ml/image_stage.py) in training and batch scoring, or from an uploaded image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from rakuten_mlops.ml.image_features import FEATURE_LENGTH
from rakuten_mlops.ml.text import as_frame

IMAGE_COLUMN = "image_features"  # optional model input: one vector (or None) per product


def image_matrix(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(n x FEATURE_LENGTH vectors, zeros where missing; n has_image flags)."""
    vectors = np.zeros((len(frame), FEATURE_LENGTH), dtype=np.float32)
    present = np.zeros(len(frame), dtype=np.float32)
    if IMAGE_COLUMN in frame:
        for row, value in enumerate(frame[IMAGE_COLUMN].tolist()):
            if isinstance(value, (np.ndarray, list, tuple)) and len(value) == FEATURE_LENGTH:
                vectors[row] = np.asarray(value, dtype=np.float32)
                present[row] = 1.0
    return vectors, present


def image_used(X) -> np.ndarray:  # noqa: N803 - scikit-learn's naming
    """Whether the model reads an image for each row of `X`."""
    return image_matrix(as_frame(X))[1].astype(bool)


def _finite_scores(out_of_fold: np.ndarray) -> np.ndarray:
    """Out-of-fold decision values with the placeholder of a class an inner fold lacked
    (cross_val_predict writes the float minimum) replaced by the lowest real value."""
    scores = np.asarray(out_of_fold, dtype=np.float64)
    missing = scores < -1e30
    if missing.any():
        scores[missing] = scores[~missing].min() - 1.0
    return scores.astype(np.float32)


class FusionClassifier(ClassifierMixin, BaseEstimator):
    """Stacking of a text pipeline's out-of-fold scores with the image vector."""

    def __init__(self, text_pipeline=None, C=1.0, inner_folds=3, random_state=42, n_jobs=1):  # noqa: N803
        self.text_pipeline = text_pipeline
        self.C = C
        self.inner_folds = inner_folds
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _text_scores(self, text, frame: pd.DataFrame) -> np.ndarray:
        if hasattr(text, "decision_function"):
            return np.asarray(text.decision_function(frame), dtype=np.float32)
        return np.asarray(text.predict_proba(frame), dtype=np.float32)

    def _method(self) -> str:
        return "decision_function" if hasattr(self.text_pipeline, "decision_function") \
            else "predict_proba"

    @staticmethod
    def _stack(scores: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        vectors, present = image_matrix(frame)
        return np.hstack([scores, vectors, present[:, None]])

    def fit(self, X, y):  # noqa: N803
        frame = as_frame(X).reset_index(drop=True)
        y = np.asarray(y)
        folds = StratifiedKFold(self.inner_folds, shuffle=True, random_state=self.random_state)
        out_of_fold = cross_val_predict(clone(self.text_pipeline), frame, y, cv=folds,
                                        method=self._method(), n_jobs=self.n_jobs)
        self.text_ = clone(self.text_pipeline).fit(frame, y)
        self.classes_ = self.text_.classes_
        self.meta_ = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=1000, random_state=self.random_state),
        ).fit(self._stack(_finite_scores(out_of_fold), frame), y)
        if not np.array_equal(self.meta_.classes_, self.classes_):
            raise ValueError("the second level saw other classes than the text model")
        return self

    def predict_proba(self, X):  # noqa: N803
        check_is_fitted(self, "meta_")
        frame = as_frame(X).reset_index(drop=True)
        return self.meta_.predict_proba(self._stack(self._text_scores(self.text_, frame), frame))

    def predict(self, X):  # noqa: N803
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
