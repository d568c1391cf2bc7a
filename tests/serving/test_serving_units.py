"""The serving package's pure parts, in-process: scores, top-k, the input contract,
language guessing, inference-log rows, keys, request limits, model export formats."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from rakuten_mlops.ml.calibration import fit_temperature
from rakuten_mlops.ml.calibration import softmax as _softmax
from rakuten_mlops.ml.export import write_export
from rakuten_mlops.serving.auth import KeyRing, MissingKeysError, Role
from rakuten_mlops.serving.fastpath import top_k
from rakuten_mlops.serving.inference_log import COLUMNS, Entry, features, language_guesser
from rakuten_mlops.serving.model import (
    LoadedModel,
    ModelLoadError,
    load_exported,
)
from rakuten_mlops.serving.schemas import request_models
from rakuten_mlops.settings import Mode
from tests.support.serving import ADMIN_KEY, CLIENT_KEY, SAMPLE_DATA, project_pipeline

TEXTS = [
    ("Piscine gonflable ronde", 2583),
    ("Pompe de filtration pour piscine", 2583),
    ("Livre de cuisine occasion", 10),
    ("Roman policier livre poche", 10),
    ("Jeu PS4 neuf sous blister", 40),
    ("Jeu Xbox One neuf", 40),
]


def fitted(final, frame: bool = True):
    designations = [text for text, _ in TEXTS]
    codes = [code for _, code in TEXTS]
    if frame:  # the training pipeline's own text steps
        return project_pipeline(final).fit(pd.DataFrame({"designation": designations}), codes)
    return Pipeline([("tfidf", TfidfVectorizer()), ("clf", final)]).fit(designations, codes)


def loaded(estimator, categories=None) -> LoadedModel:
    return LoadedModel(
        name="m",
        version="1",
        alias="champion",
        source="export",
        estimator=estimator,
        categories=categories or {},
    ).prepare()


# ------------------------------------------------------------------ scores and top-k


def test_softmax_exact_values():
    scores = _softmax(np.array([[0.0, math.log(3.0)], [5.0, 5.0]]))
    assert scores.ravel().tolist() == pytest.approx([0.25, 0.75, 0.5, 0.5])
    binary = _softmax(np.array([0.0, math.log(2.0) / 2]))
    assert binary[1].tolist() == pytest.approx([1 / 3, 2 / 3])


def test_top_k_orders_clips_and_bounds():
    scores = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 1.0000000002]])
    top = top_k(scores, (10, 40, 2583), 2)
    assert top == [[(40, 0.6), (2583, 0.3)], [(2583, 1.0), (10, 0.5)]]
    assert len(top_k(scores, (10, 40, 2583), 27)[0]) == 3
    ties = top_k(np.array([[0.5, 0.5]]), (7, 3), 2)
    assert [code for code, _ in ties[0]] == [7, 3]  # stable: class order on ties


def test_predict_proba_model_through_a_frame():
    model = loaded(fitted(LogisticRegression()), {2583: "Piscine et accessoires"})
    assert (model.input_kind, model.score, model.classes) == (
        "frame",
        "predict_proba",
        (10, 40, 2583),
    )
    prediction = model.predict(["Grande piscine gonflable"], [None], 3)
    (top,) = prediction.top
    assert top[0][0] == 2583 and sum(p for _, p in top) == pytest.approx(1.0)
    assert prediction.preprocess_seconds > 0 and prediction.inference_seconds > 0
    assert model.category(2583) == "Piscine et accessoires" and model.category(10) is None


def test_decision_function_model_gets_a_softmax_score():
    svc = fitted(LinearSVC())
    model = loaded(svc)
    assert model.score == "softmax(decision_function)"
    (top,) = model.predict(["Jeu PS4 FIFA neuf"], [None], 3).top
    decision = svc.decision_function(pd.DataFrame({"designation": ["Jeu PS4 FIFA neuf"]}))
    assert [code for code, _ in top] == [int(svc.classes_[i]) for i in np.argsort(-decision[0])]
    assert sum(p for _, p in top) == pytest.approx(1.0)


def test_the_project_pipeline_is_served_by_its_own_steps_without_the_machinery():
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer as Tfidf

    from rakuten_mlops.ml.train import split_xy
    from rakuten_mlops.serving.fastpath import DirectSteps

    sample = pd.read_csv(SAMPLE_DATA / "X_train_update.csv", index_col=0).head(300)
    labels = pd.read_csv(SAMPLE_DATA / "Y_train_CVw08PX.csv", index_col=0)["prdtypecode"]
    sample = sample.assign(prdtypecode=labels.loc[sample.index])
    X, y = split_xy(sample)  # noqa: N806 - scikit-learn's naming
    pipeline = project_pipeline(LinearSVC())
    pipeline.set_params(tfidf=ColumnTransformer(
        [("word", Tfidf(), "words"), ("char", Tfidf(analyzer="char", ngram_range=(2, 4)), "chars")]
    )).fit(X, y)
    model = loaded(pipeline)
    direct, final = model._steps
    assert isinstance(direct, DirectSteps)
    np.testing.assert_array_equal(
        final.decision_function(direct.transform(X)), pipeline.decision_function(X)
    )
    # What the direct path cannot reproduce (a remainder passed through) is left to sklearn.
    pipeline.set_params(tfidf__remainder="passthrough")
    assert DirectSteps.wrap(pipeline[:-1]) is None


def test_fit_temperature_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    decision = rng.normal(0, 3, size=(20000, 5))
    probabilities = _softmax(decision / 2.5)
    labels = np.array([rng.choice(5, p=row) for row in probabilities]) * 10
    assert fit_temperature(decision, labels, classes=[0, 10, 20, 30, 40]) == pytest.approx(
        2.5, rel=0.05
    )


def test_a_calibrated_margin_model_scales_its_softmax(tmp_path, settings):

    svc = fitted(LinearSVC())
    local = settings.model_copy(update={"models_dir": tmp_path})
    write_export(local, svc, {"score_temperature": 0.5})
    model = load_exported(local, None).prepare()
    assert model.temperature == 0.5
    frame = pd.DataFrame({"designation": ["Jeu PS4 FIFA neuf"]})
    expected = _softmax(svc.decision_function(frame) / 0.5)[0]
    (top,) = model.predict(["Jeu PS4 FIFA neuf"], [None], 3).top
    assert [p for _, p in top] == pytest.approx(sorted(expected, reverse=True))


def test_raw_string_pipelines_are_detected():
    model = loaded(fitted(LogisticRegression(), frame=False))
    assert model.input_kind == "text"
    (top,) = model.predict(["Roman livre"], ["occasion"], 1).top
    assert top[0][0] == 10


def test_a_model_without_scores_or_classes_is_refused():
    from sklearn.cluster import KMeans

    with pytest.raises(ModelLoadError, match="neither predict_proba nor decision_function"):
        loaded(
            Pipeline([("tfidf", TfidfVectorizer()), ("k", KMeans(2, n_init=1))]).fit(
                ["piscine pompe", "livre roman", "jeu console"]
            )
        )


# ------------------------------------------------------------------ export formats


def test_the_export_written_by_the_promote_stage_is_served(tmp_path, settings):
    local = settings.model_copy(update={"models_dir": tmp_path})
    metadata = {"version": "4", "metrics": {"f1": 0.5, "note": "x"}}
    write_export(local, fitted(LogisticRegression()), metadata)
    model = load_exported(local, fallback_reason="MLflow down").prepare()
    assert (model.version, model.source, model.metrics) == ("4", "export", {"f1": 0.5})
    assert model.fallback_reason == "MLflow down"
    assert model.predict(["Piscine"], [None], 1).top[0][0][0] == 2583


def test_a_missing_or_broken_export_is_explained(tmp_path, settings):
    local = settings.model_copy(update={"models_dir": tmp_path / "missing"})
    with pytest.raises(ModelLoadError, match="no exported model: .* does not exist"):
        load_exported(local, None)
    local = settings.model_copy(update={"models_dir": tmp_path})
    model_file = write_export(local, fitted(LogisticRegression()), {"version": "1"})
    model_file.unlink()
    with pytest.raises(ModelLoadError, match=f"names {model_file}, which does not exist"):
        load_exported(local, None)


# ------------------------------------------------------------------ inference log rows


@pytest.fixture(scope="module")
def guesser(settings):
    return language_guesser(settings)


@pytest.mark.parametrize(
    "text,language",
    [
        ("Lot de 3 livres de cuisine pour les enfants", "fr"),
        ("Décoration de Noël", "fr"),
        ("Kinderspielzeug aus Holz für das Kinderzimmer", "de"),
        ("Socks for the garden with the best pool", "en"),
        ("PS4 FIFA 2019", "unknown"),
        ("", "unknown"),
    ],
)
def test_language_guess(guesser, text, language):
    assert guesser.guess(text) == language


def test_inference_log_row_holds_features_not_text(guesser):
    entry = Entry(
        request_id="00000000-0000-0000-0000-000000000001",
        item=0,
        predicted_at=datetime(2026, 1, 1, tzinfo=UTC),
        endpoint="predict",
        client_role="client",
        model_name="m",
        model_version="3",
        model_source="registry",
        top=[(2583, 1.0000001), (10, 0.1)],
        designation="Piscine &amp; pompe",
        description=None,
        batch_size=1,
        latency_ms=2.5,
    )
    row = dict(zip(COLUMNS, features(entry, guesser), strict=True))
    assert row["prdtypecode"] == 2583 and row["confidence"] == 1.0  # clipped
    assert json.loads(row["top_k"]) == [
        {"prdtypecode": 2583, "probability": 1.0},
        {"prdtypecode": 10, "probability": 0.1},
    ]
    assert (row["designation_chars"], row["description_chars"]) == (19, 0)
    assert (row["designation_words"], row["description_words"], row["has_html"]) == (3, 0, True)
    import hashlib

    assert row["text_sha256"] == hashlib.sha256(b"Piscine &amp; pompe\n").hexdigest()
    assert "Piscine" not in json.dumps(row, default=str).replace(row["text_sha256"], "")


# ------------------------------------------------------------------ keys and settings


def test_keyring_roles_and_constant_time_lookup():
    ring = KeyRing({Role.CLIENT: "c" * 20, Role.ADMIN: "a" * 20})
    assert ring.role_of("c" * 20) is Role.CLIENT and ring.role_of("a" * 20) is Role.ADMIN
    assert (
        ring.role_of("c" * 19) is None and ring.role_of("") is None and ring.role_of(None) is None
    )
    with pytest.raises(MissingKeysError, match="must differ"):
        KeyRing({Role.CLIENT: "same-key-1234", Role.ADMIN: "same-key-1234"})


def test_missing_keys_are_named(settings):
    with pytest.raises(MissingKeysError, match="API_ADMIN_KEY"):
        KeyRing.from_settings(settings.model_copy(update={"api_admin_key": None}))


def test_compose_mode_refuses_placeholder_api_keys():
    from cryptography.fernet import Fernet

    from rakuten_mlops.settings import Settings

    strong = {
        name: f"{name}-" + "x" * 20
        for name in (
            "postgres_password",
            "s3_secret_key",
            "airflow_admin_password",
            "airflow_api_secret_key",
            "airflow_jwt_secret",
        )
    }
    strong["airflow_fernet_key"] = Fernet.generate_key().decode()
    with pytest.raises(ValidationError, match="API_CLIENT_KEY"):
        Settings(_env_file=None, rakuten_mode="compose", api_client_key="change-me", **strong)


def test_request_limits_come_from_the_settings():
    models = request_models(max_designation_chars=5, max_description_chars=7, max_batch_size=2)
    schema = models.BatchRequest.model_json_schema()
    product = schema["$defs"]["Product"]["properties"]
    assert (
        product["designation"]["maxLength"] == 5 and schema["properties"]["items"]["maxItems"] == 2
    )
    pattern = product["designation"]["pattern"]
    # The documented pattern and the validator agree on what is blank (the fuzzer sends
    # U+001D as a schema-valid designation when the pattern is a bare \S).
    for text in ["\x1d", " \x85\t", "\u3000", "a", "\x1d a"]:
        accepted = True
        try:
            models.PredictRequest(designation=text)
        except ValidationError:
            accepted = False
        assert accepted == bool(re.search(pattern, text)), repr(text)
    with pytest.raises(ValidationError):
        models.PredictRequest(designation="abcdef")


def test_outside_local_mode_the_spec_needs_a_key(settings):
    from rakuten_mlops.serving.app import create_app

    production = settings.model_copy(
        update={
            "rakuten_mode": Mode.PRODUCTION,
            "api_client_key": SecretStr(CLIENT_KEY),
            "api_admin_key": SecretStr(ADMIN_KEY),
        }
    )
    client = TestClient(create_app(production))  # no lifespan: no model, no writer
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers={"X-API-Key": CLIENT_KEY}).status_code == 200
    assert client.get("/docs").status_code == 404
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503
