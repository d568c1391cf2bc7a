"""Validation against the running service: every bad input is a 4xx naming the field,
never a 500. The server's limits: designation 300 chars, description 12,000, batch 64."""

from __future__ import annotations

import pytest

from tests.support.serving import CLIENT

pytestmark = pytest.mark.stack

OK = {"designation": "Peluche Donald"}

# (case, path, json body, field named in the error)
INVALID = [
    ("empty designation", "/predict", {"designation": ""}, "designation"),
    ("whitespace designation", "/predict", {"designation": " \t\n "}, "designation"),
    ("missing designation", "/predict", {"description": "x"}, "designation"),
    ("null designation", "/predict", {"designation": None}, "designation"),
    ("designation a number", "/predict", {"designation": 42}, "designation"),
    ("designation a list", "/predict", {"designation": ["a"]}, "designation"),
    ("description a number", "/predict", {**OK, "description": 3.5}, "description"),
    ("description an object", "/predict", {**OK, "description": {"a": 1}}, "description"),
    ("unknown field", "/predict", {**OK, "price": 3}, "price"),
    ("designation too long", "/predict", {"designation": "a" * 301}, "designation"),
    ("description too long", "/predict", {**OK, "description": "b" * 12001}, "description"),
    ("top_k zero", "/predict", {**OK, "top_k": 0}, "top_k"),
    ("top_k too large", "/predict", {**OK, "top_k": 28}, "top_k"),
    ("top_k a string", "/predict", {**OK, "top_k": "3"}, "top_k"),
    ("top_k a fraction", "/predict", {**OK, "top_k": 2.5}, "top_k"),
    ("top_k a boolean", "/predict", {**OK, "top_k": True}, "top_k"),
    ("batch over the limit", "/predict/batch", {"items": [OK] * 65}, "items"),
    ("empty batch", "/predict/batch", {"items": []}, "items"),
    ("batch not a list", "/predict/batch", {"items": OK}, "items"),
    ("batch without items", "/predict/batch", {}, "items"),
    (
        "blank item in a batch",
        "/predict/batch",
        {"items": [OK, {"designation": " "}]},
        "items.1.designation",
    ),
    (
        "long item in a batch",
        "/predict/batch",
        {"items": [{"designation": "a" * 301}]},
        "items.0.designation",
    ),
    ("unknown field in an item", "/predict/batch", {"items": [{**OK, "x": 1}]}, "items.0.x"),
    ("unknown field in a batch", "/predict/batch", {"items": [OK], "extra": 1}, "extra"),
    ("body a list", "/predict", [OK], "body"),
    ("body a string", "/predict", "Peluche", "body"),
]


@pytest.mark.parametrize("path,body,field", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_request_is_422_naming_the_field(api, path, body, field):
    response = api.post(path, json=body, headers=CLIENT)
    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert field in [problem["field"] for problem in problems], problems
    assert all(problem["msg"].startswith(f"{problem['field']}: ") for problem in problems)


RAW = [
    ("malformed JSON", b'{"designation": "x"', "application/json"),
    ("trailing garbage", b'{"designation": "x"} x', "application/json"),
    ("not UTF-8", b'{"designation": "\xff\xfe"}', "application/json"),
    ("empty body", b"", "application/json"),
    ("form instead of JSON", b"designation=x", "application/x-www-form-urlencoded"),
    ("no content type", b'{"designation": "x"}', None),
    ("huge number", b'{"designation": "x", "top_k": 1e400}', "application/json"),
    ("deep nesting", b'{"designation": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
]


@pytest.mark.parametrize("content,content_type", [c[1:] for c in RAW], ids=[c[0] for c in RAW])
def test_unparseable_bodies_are_4xx(api, content, content_type):
    headers = {**CLIENT, **({"Content-Type": content_type} if content_type else {})}
    response = api.post("/predict", content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


def test_lone_surrogates_are_422_naming_the_field(api):
    """JSON may escape lone UTF-16 surrogates, which are no text: refused, never echoed."""
    raw = b'{"designation": "Peluche \\ud800 Donald", "description": "\\udfff"}'
    response = api.post(
        "/predict", content=raw, headers={**CLIENT, "Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert {p["field"] for p in response.json()["detail"]} == {"designation", "description"}
    assert "ud800" not in response.text


@pytest.mark.parametrize(
    "query,field", [("limit=0", "limit"), ("limit=abc", "limit"), ("limit=1001", "limit")]
)
def test_invalid_query_parameters_are_422(api, query, field):
    from tests.support.serving import ADMIN

    response = api.get(f"/admin/inference-log?{query}", headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == field


def test_unknown_route_and_method_are_4xx(api):
    assert api.get("/nope", headers=CLIENT).status_code == 404
    assert api.get("/predict", headers=CLIENT).status_code == 405


def test_validation_errors_are_counted(api):
    def count() -> float:
        for line in api.get("/metrics").text.splitlines():
            if line.startswith('rakuten_api_errors_total{kind="validation"}'):
                return float(line.split()[-1])
        return 0.0

    before = count()
    api.post("/predict", json={"designation": ""}, headers=CLIENT)
    assert count() == before + 1


def test_bodies_larger_than_any_valid_request_are_413(api):
    from rakuten_mlops.serving.app import max_body_bytes
    from rakuten_mlops.settings import get_settings

    # One byte over the largest valid body (it grows with API_MAX_IMAGE_BYTES).
    huge = b'{"designation": "' + b"a" * (max_body_bytes(get_settings()) + 1) + b'"}'
    headers = {**CLIENT, "Content-Type": "application/json"}
    declared = api.post("/predict", content=huge, headers=headers)
    assert declared.status_code == 413 and declared.json() == {"detail": "request body too large"}

    def chunks():  # no Content-Length: counted while it streams in
        for start in range(0, len(huge), 1 << 20):
            yield huge[start : start + (1 << 20)]

    streamed = api.post("/predict", content=chunks(), headers=headers)
    assert streamed.status_code == 413
    assert api.post("/predict", json=OK, headers=CLIENT).status_code == 200
