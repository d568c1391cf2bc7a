"""One scikit-learn `Pipeline` per model family: cleaning -> TF-IDF -> [reduction] -> estimator.

Everything a prediction needs lives in the pipeline, so the artifact that is searched,
logged, registered and served is the same object, and serving can never apply other
features than training did.

    raw frame (designation, description)
      -> clean      TextCleaner (HTML, Unicode, lower case, FR/DE/EN stopwords)
      -> tfidf      word n-grams + character n-grams, each TF-IDF, stacked
      -> select     (tree families only) chi2 SelectKBest: a few thousand columns, not 10^5
      -> clf        LinearSVC | LogisticRegression | RandomForest | XGBoost
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.feature_selection import SelectKBest, chi2
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.validation import check_is_fitted

from rakuten_mlops.ml.fusion import fusion_pipeline
from rakuten_mlops.ml.text import (
    DEFAULT_LANGUAGES,
    TOKEN,
    as_frame,
    as_text,
    normalise,
    read_stopwords,
)
from rakuten_mlops.settings import get_settings

FAMILIES = ("linear_svc", "logreg", "random_forest", "xgboost")  # the text families
# Issue 17: `fusion` stacks FUSION_TEXT_FAMILY's out-of-fold scores with the image vector
# (rakuten_mlops.ml.fusion); its text part's parameters are `stack__text_pipeline__...`.
FUSION = "fusion"
FUSION_TEXT_FAMILY = "linear_svc"
ALL_FAMILIES = (*FAMILIES, FUSION)
TREE_FAMILIES = frozenset({"random_forest", "xgboost"})

# Feature settings every family starts from; a profile may override any of them.
DEFAULT_FEATURES: dict[str, Any] = {
    "word": {"ngram_range": (1, 2), "min_df": 1, "sublinear_tf": True},
    "char": {"analyzer": "char", "ngram_range": (1, 5), "min_df": 2, "sublinear_tf": True},
}
# Parts a profile can add, e.g. `title: {analyzer: char_wb, ngram_range: [2, 5]}`: each
# names the cleaner's column it reads (`words`, `chars` or `title`) with `column:`.


class TextCleaner(TransformerMixin, BaseEstimator):
    """Pipeline step: a frame with `designation` (and optionally `description`) -> two views.

    - `words`: word tokens without FR/DE/EN stopwords, for word n-grams;
    - `chars`: the same normalised text with punctuation and stopwords, for character
      n-grams (they score better on it: "l'art", "n°", "3/4" carry signal), cut at
      `max_chars`: the start of a description says what the product is, and the
      n-grams of a 10,000-character description would cost more than they tell;
    - `title`: the normalised designation alone, so a long description cannot drown it.

    Fitting reads the stopword lists once (from `nltk_data_dir`, or the settings' folder)
    and keeps them, normalised like the text, in `stopwords_`.
    """

    def __init__(
        self,
        languages: tuple[str, ...] = DEFAULT_LANGUAGES,
        strip_accents: bool = True,
        nltk_data_dir: str | None = None,
        max_chars: int | None = 500,
    ):
        self.languages = languages
        self.strip_accents = strip_accents
        self.nltk_data_dir = nltk_data_dir
        self.max_chars = max_chars

    def fit(self, X, y=None):  # noqa: N803 - scikit-learn's naming
        folder = self.nltk_data_dir
        if folder is None:
            settings = get_settings()
            folder = settings.path(settings.nltk_data_dir)
        raw = read_stopwords(folder, self.languages) if self.languages else []
        # Stopwords go through the same normalisation as the text they are matched against.
        self.stopwords_ = frozenset(
            token for word in raw for token in TOKEN.findall(normalise(word, self.strip_accents))
        )
        return self

    def transform(self, X) -> pd.DataFrame:  # noqa: N803
        # Plain lists, one normalisation per text: this runs on every served request,
        # where pandas string methods cost more than the cleaning itself.
        stop, strip, limit = self.stopwords_, self.strip_accents, self.max_chars
        frame = as_frame(X)
        titles = [as_text(value) for value in frame["designation"].tolist()]
        if "description" in frame:
            descriptions = [as_text(value) for value in frame["description"].tolist()]
        else:
            descriptions = [""] * len(titles)
        words, chars = [], []
        for title, description in zip(titles, descriptions, strict=True):
            normal = normalise(f"{title} {description}", strip)
            words.append(" ".join(t for t in TOKEN.findall(normal) if t not in stop))
            chars.append(" ".join(normal.split())[:limit])
        return pd.DataFrame(
            {
                "words": words,
                "chars": chars,
                "title": [" ".join(normalise(title, strip).split()) for title in titles],
            },
            dtype=object,
        )

    def get_feature_names_out(self, input_features=None):
        return np.array(["words", "chars", "title"], dtype=object)



class LabelEncodedClassifier(ClassifierMixin, BaseEstimator):
    """Fits `estimator` on 0..k-1 and predicts the original labels.

    XGBoost only accepts labels 0..k-1 present in the data; wrapping it keeps the whole
    pipeline predicting product type codes, and lets successive halving fit it on
    subsamples where a rare class is absent.
    """

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y, **fit_params):  # noqa: N803 - scikit-learn's naming
        self.encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.encoder_.classes_
        self.estimator_ = clone(self.estimator).fit(X, self.encoder_.transform(y), **fit_params)
        return self

    def predict(self, X):  # noqa: N803
        check_is_fitted(self, "estimator_")
        return self.encoder_.inverse_transform(np.asarray(self.estimator_.predict(X), dtype=int))

    def predict_proba(self, X):  # noqa: N803
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(X)


def make_estimator(family: str, random_state: int = 42, n_jobs: int = 1):
    """The family's estimator with the project's fixed defaults (grids override the rest)."""
    if family == "linear_svc":
        from sklearn.svm import LinearSVC

        return LinearSVC(random_state=random_state)
    if family == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=300, random_state=random_state)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_jobs=n_jobs, random_state=random_state)
    if family == "xgboost":
        from xgboost import XGBClassifier

        xgb = XGBClassifier(
            tree_method="hist", n_jobs=n_jobs, random_state=random_state, verbosity=0
        )
        return LabelEncodedClassifier(xgb)
    raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")


def make_features(settings: dict[str, Any] | None = None) -> ColumnTransformer:
    """Word TF-IDF on the cleaned words, character TF-IDF on the normalised text, stacked.

    A part set to None is left out.
    """
    merged = merge_features(DEFAULT_FEATURES, settings or {})
    parts = []
    for name, params in merged.items():
        if params is None:
            continue
        params = {
            key: tuple(value) if key == "ngram_range" else value for key, value in params.items()
        }
        column = params.pop("column", None) or (
            "words" if params.get("analyzer", "word") == "word" else "chars"
        )
        parts.append((name, TfidfVectorizer(dtype=np.float32, **params), column))
    if not parts:
        raise ValueError("no TF-IDF part left: at least one of word/char must be configured")
    return ColumnTransformer(parts, sparse_threshold=1.0)


def merge_features(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = deepcopy(base)
    for name, params in override.items():
        if params is None:
            merged[name] = None
        else:
            merged[name] = {**(merged.get(name) or {}), **params}
    return merged


def estimator_prefix(family: str) -> str:
    """Where a family's estimator parameters live inside the pipeline."""
    return "clf__estimator__" if family == "xgboost" else "clf__"


def pipeline_params(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """Short grid keys (`C`, `max_depth`) -> pipeline paths; keys with `__` stay as they are."""
    prefix = estimator_prefix(family)
    return {key if "__" in key else prefix + key: value for key, value in params.items()}


def build_pipeline(
    family: str,
    params: dict[str, Any] | None = None,
    features: dict[str, Any] | None = None,
    *,
    select_k: int | None = None,
    random_state: int = 42,
    n_jobs: int = 1,
    memory=None,
    nltk_data_dir: str | None = None,
) -> Pipeline:
    """The complete, unfitted model of one family.

    `params` are set on the pipeline (short estimator keys or full paths); `features`
    overrides the TF-IDF settings; tree families get a chi2 selection of `select_k`
    columns (default 20,000) in front of the estimator.
    """
    if family not in ALL_FAMILIES:
        raise ValueError(
            f"unknown model family {family!r}; expected one of {', '.join(ALL_FAMILIES)}"
        )
    if family == FUSION:
        text = build_pipeline(FUSION_TEXT_FAMILY, None, features, random_state=random_state,
                              nltk_data_dir=nltk_data_dir)
        pipeline = fusion_pipeline(text, random_state=random_state, n_jobs=n_jobs, memory=memory)
        return pipeline.set_params(**pipeline_params(family, params)) if params else pipeline
    steps: list[tuple[str, Any]] = [
        ("clean", TextCleaner(nltk_data_dir=nltk_data_dir)),
        ("tfidf", make_features(features)),
    ]
    if family in TREE_FAMILIES:
        steps.append(("select", SelectKBest(chi2, k=select_k or 20_000)))
    steps.append(("clf", make_estimator(family, random_state=random_state, n_jobs=n_jobs)))
    pipeline = Pipeline(steps, memory=memory)
    if params:
        pipeline.set_params(**pipeline_params(family, params))
    return pipeline
