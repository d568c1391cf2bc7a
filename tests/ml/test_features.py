"""One pipeline per family: its steps, its parameter paths, and that it predicts codes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from rakuten_mlops.ml.features import (
    FAMILIES,
    LabelEncodedClassifier,
    build_pipeline,
    make_features,
    pipeline_params,
)
from rakuten_mlops.ml.train import split_xy

CHEAP = {"word": {"ngram_range": [1, 1]}, "char": {"ngram_range": [2, 3], "min_df": 2}}
CHEAP_PARAMS = {
    "linear_svc": {"C": 0.5},
    "logreg": {"C": 10.0, "solver": "saga", "max_iter": 10, "tol": 0.01},
    "random_forest": {"n_estimators": 5},
    "xgboost": {"n_estimators": 3, "max_depth": 2, "max_bin": 16},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_one_pipeline_from_raw_text_to_product_codes(family, sample_frame, nltk_dir):
    pipeline = build_pipeline(
        family, CHEAP_PARAMS[family], CHEAP, select_k=300, nltk_data_dir=nltk_dir
    )
    assert isinstance(pipeline, Pipeline)
    expected = (
        ["clean", "tfidf", "select", "clf"]
        if family in ("random_forest", "xgboost")
        else ["clean", "tfidf", "clf"]
    )
    assert [name for name, _ in pipeline.steps] == expected
    train = sample_frame[sample_frame["subset"] == "train"].head(600)
    X, y = split_xy(train)  # noqa: N806
    pipeline.fit(X, y)
    predicted = pipeline.predict(split_xy(sample_frame.head(50))[0])
    # Product type codes as loaded (10, 2583, ...), never 0..k-1 indices.
    assert set(predicted) <= set(y)
    assert [int(code) for code in pipeline.classes_] == sorted(set(y))


def test_short_grid_keys_map_to_the_estimator_of_each_family():
    assert pipeline_params("linear_svc", {"C": 1, "select__k": 5}) == {"clf__C": 1, "select__k": 5}
    assert pipeline_params("xgboost", {"max_depth": 4}) == {"clf__estimator__max_depth": 4}
    pipeline = build_pipeline("xgboost", {"max_depth": 4, "select__k": 77})
    assert pipeline.get_params()["clf__estimator__max_depth"] == 4
    assert pipeline.get_params()["select__k"] == 77


def test_feature_parts_can_be_changed_or_left_out():
    features = make_features({"char": None, "title": {"column": "title", "analyzer": "char_wb"}})
    assert [(name, column) for name, _, column in features.transformers] == [
        ("word", "words"),
        ("title", "title"),
    ]
    with pytest.raises(ValueError, match="no TF-IDF part"):
        make_features({"word": None, "char": None})


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'svm'"):
        build_pipeline("svm")


def test_label_encoding_survives_classes_missing_from_a_subsample():
    from sklearn.tree import DecisionTreeClassifier

    X = np.arange(12).reshape(-1, 1)  # noqa: N806
    y = np.array([10, 10, 40, 40, 2583, 2583] * 2)
    model = LabelEncodedClassifier(DecisionTreeClassifier(random_state=0)).fit(X[:8], y[:8])
    assert list(model.classes_) == [10, 40, 2583]
    assert set(model.predict(X)) <= {10, 40, 2583}
    assert model.predict_proba(X).shape == (12, 3)
