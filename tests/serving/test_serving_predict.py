"""Predictions from the running service: correct top-k on real products, lifecycle routes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.support.serving import CLIENT

pytestmark = pytest.mark.stack


def _frame(products: pd.DataFrame) -> pd.DataFrame:
    return products[["designation", "description"]].astype(object).where(products.notna(), None)


def _body(row) -> dict:
    body = {"designation": row.designation}
    if isinstance(row.description, str):
        body["description"] = row.description
    return body


def test_health_ready_and_model(api, registered):
    assert api.get("/health").json() == {"status": "ok"}
    ready = api.get("/ready").json()
    assert ready["ready"] is True and ready["fallback"] is False
    assert ready["model"] == {"name": registered["name"], "version": "1", "source": "registry"}
    info = api.get("/model", headers=CLIENT).json()
    assert (info["name"], info["version"], info["alias"]) == (registered["name"], "1", "champion")
    assert info["run_id"] == registered["run_ids"][0]
    assert info["score"] == "predict_proba"
    assert 0 < info["metrics"]["holdout_accuracy"] <= 1
    assert info["params"]["alpha"] == "1e-05"
    (dataset,) = info["training_data"]["datasets"]
    assert dataset["name"] == "X_train_sample" and dataset["context"] == {
        "mlflow.data.context": "training"
    }
    assert info["training_data"]["run_tags"]["data.rows"] == info["params"]["train_rows"]
    assert len(info["classes"]) == 27


def test_top_k_on_held_out_real_products(api, split, pipelines, sample):
    """The service's top-k is the model's own, with names, on products it never saw."""
    _, x_test, _, y_test = split
    _, _, names = sample
    pipeline = pipelines["1"]
    products = x_test.iloc[:60]
    expected = pipeline.predict_proba(_frame(products))
    classes = pipeline.classes_
    hits_top1 = hits_top3 = 0
    for (_, row), truth, proba in zip(products.iterrows(), y_test.iloc[:60], expected, strict=True):
        response = api.post("/predict", json={**_body(row), "top_k": 3}, headers=CLIENT)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 3
        order = np.argsort(-proba, kind="stable")[:3]
        assert [p["prdtypecode"] for p in predictions] == [int(classes[i]) for i in order]
        assert [p["probability"] for p in predictions] == pytest.approx(proba[order], abs=1e-9)
        assert all(p["category"] == names[p["prdtypecode"]] for p in predictions)
        hits_top1 += predictions[0]["prdtypecode"] == truth
        hits_top3 += truth in [p["prdtypecode"] for p in predictions]
    # A model trained on 1,844 real products: far above chance (1/27) on held-out ones.
    assert hits_top1 / len(products) > 0.5
    assert hits_top3 / len(products) > 0.7


def test_obvious_products(api):
    cases = {
        "Piscine tubulaire ronde 3,66 x 0,76 m avec pompe de filtration": 2583,
        "Chaussettes enfant coton lot de 6 paires taille 27-30": 1301,
    }
    for designation, code in cases.items():
        top = api.post("/predict", json={"designation": designation}, headers=CLIENT).json()
        assert code in [p["prdtypecode"] for p in top["predictions"]], (designation, top)


def test_top_k_bounds_and_default(api):
    default = api.post("/predict", json={"designation": "Jeu PS4"}, headers=CLIENT).json()
    assert len(default["predictions"]) == 3
    integral = api.post("/predict", json={"designation": "Jeu", "top_k": 2.0}, headers=CLIENT)
    assert len(integral.json()["predictions"]) == 2  # JSON Schema's integer includes 2.0
    every = api.post(
        "/predict", json={"designation": "Jeu PS4", "top_k": 27}, headers=CLIENT
    ).json()["predictions"]
    assert len(every) == 27 and sum(p["probability"] for p in every) == pytest.approx(1.0)
    probabilities = [p["probability"] for p in every]
    assert probabilities == sorted(probabilities, reverse=True)


def test_batch_matches_single_predictions(api, split):
    _, x_test, _, _ = split
    rows = [_body(row) for _, row in x_test.iloc[60:100].iterrows()]
    batch = api.post("/predict/batch", json={"items": rows, "top_k": 2}, headers=CLIENT)
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert body["model"]["version"] == "1" and len(body["results"]) == len(rows)
    for row, result in zip(rows, body["results"], strict=True):
        single = api.post("/predict", json={**row, "top_k": 2}, headers=CLIENT).json()
        assert [p["prdtypecode"] for p in result["predictions"]] == [
            p["prdtypecode"] for p in single["predictions"]
        ]
        assert [p["probability"] for p in result["predictions"]] == pytest.approx(
            [p["probability"] for p in single["predictions"]], abs=1e-9
        )


def test_odd_but_valid_texts_are_classified(api):
    for body in (
        {"designation": "x"},
        {"designation": "   padded   ", "description": "   "},
        {"designation": "<b>HTML</b> &amp; entités &eacute;", "description": "<p>é</p>"},
        {"designation": "\u0000\u200b\U0001f600 emoji", "description": None},
        {"designation": "日本語の商品名"},
        {"designation": "a" * 300, "description": "b" * 12000},
    ):
        response = api.post("/predict", json=body, headers=CLIENT)
        assert response.status_code == 200, (body, response.text)
        assert len(response.json()["predictions"]) == 3
