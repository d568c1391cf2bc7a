"""The `fusion` family: text scores and the image vector, stacked (pure).

    frame (designation, description[, image_features])
      -> text      a text family's pipeline (TF-IDF + LinearSVC by default): its decision
                   scores, out of fold (inner stratified folds) while fitting, so the
                   second level learns how far to trust scores it did not train on
      -> stack     [text scores | image vector (zeros without one) | has_image (0/1)]
      -> scale     StandardScaler
      -> clf       multinomial LogisticRegression (C searched): the second level

One model serves products with and without an image: a product without one (no
`image_features` column, or None/NaN in it) goes through the same model with
has_image = 0. The image vector is rakuten_mlops.ml.image_features's, from the lake's
cache (ml/image_stage.py) in training and batch scoring, or from an uploaded image.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
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


class TextScoreStacker(TransformerMixin, BaseEstimator):
    """The first level: [text scores | image vector | has_image] for each product.

    `fit_transform` (what a Pipeline calls while fitting) returns the text model's
    out-of-fold scores on the rows it fits, then fits the text model on all of them;
    `transform` scores with that model. The Pipeline's feature cache (the search's
    joblib memory) keeps the fitted stacker of each fold, so candidates that differ only
    in the second level's C reuse it.
    """

    def __init__(self, text_pipeline=None, inner_folds=3, random_state=42, n_jobs=1):
        self.text_pipeline = text_pipeline
        self.inner_folds = inner_folds
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _method(self) -> str:
        return "decision_function" if hasattr(self.text_pipeline, "decision_function") \
            else "predict_proba"

    def fit(self, X, y):  # noqa: N803 - scikit-learn's naming
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y=None, **fit_params):  # noqa: N803
        frame = as_frame(X).reset_index(drop=True)
        folds = StratifiedKFold(self.inner_folds, shuffle=True, random_state=self.random_state)
        out_of_fold = cross_val_predict(clone(self.text_pipeline), frame, y, cv=folds,
                                        method=self._method(), n_jobs=self.n_jobs)
        self.text_ = clone(self.text_pipeline).fit(frame, y)
        self.classes_ = self.text_.classes_
        return _stack(_finite_scores(out_of_fold), frame)

    def transform(self, X):  # noqa: N803
        check_is_fitted(self, "text_")
        frame = as_frame(X).reset_index(drop=True)
        scores = getattr(self.text_, self._method())(frame)
        return _stack(np.asarray(scores, dtype=np.float32), frame)


def _stack(scores: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    vectors, present = image_matrix(frame)
    return np.hstack([scores, vectors, present[:, None]])


def reads_images(estimator) -> bool:
    """Whether a fitted model takes the IMAGE_COLUMN (a fusion pipeline) or not."""
    steps = getattr(estimator, "steps", [])
    return any(isinstance(step, TextScoreStacker) for _, step in steps)


def fusion_pipeline(text_pipeline, random_state: int = 42, n_jobs: int = 1,
                    memory=None) -> Pipeline:
    """stack -> scale -> clf (the second level, multinomial LogisticRegression of C)."""
    return Pipeline(
        [
            ("stack", TextScoreStacker(text_pipeline, random_state=random_state, n_jobs=n_jobs)),
            ("scale", StandardScaler()),
            # tol 1e-3: the second level's fit (hundreds of columns x classes) takes a
            # third of the time of the default's, for the same test F1 on the sample.
            ("clf", LogisticRegression(C=0.1, tol=1e-3, max_iter=500,
                                       random_state=random_state)),
        ],
        memory=memory,
    )
