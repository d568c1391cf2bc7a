"""Auth against the running service: open routes, 401 without or with a bad key, 403 for
the wrong role, and what each role may do."""

from __future__ import annotations

import pytest

from tests.support.serving import ADMIN, ADMIN_KEY, CLIENT, CLIENT_KEY

pytestmark = pytest.mark.stack

PREDICT = {"designation": "Peluche Donald"}
PROTECTED = [
    ("POST", "/predict", PREDICT),
    ("POST", "/predict/batch", {"items": [PREDICT]}),
    ("GET", "/model", None),
    ("POST", "/admin/reload", None),
    ("GET", "/admin/inference-log", None),
]
ADMIN_ONLY = [route for route in PROTECTED if route[1].startswith("/admin/")]
BAD_KEYS = {
    "missing": None,
    "empty": "",
    "wrong": "not-a-key",
    "client key with a suffix": CLIENT_KEY + "x",
    "admin key truncated": ADMIN_KEY[:-1],
    "key in the wrong header": "Authorization",
}


def call(api, method: str, path: str, body, headers: dict | None):
    if method == "GET":
        return api.get(path, headers=headers or {})
    return api.post(path, json=body, headers=headers or {})


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/openapi.json", "/docs"])
def test_open_routes_need_no_key(api, path):
    assert api.get(path).status_code == 200


@pytest.mark.parametrize("method,path,body", PROTECTED)
@pytest.mark.parametrize("case", BAD_KEYS)
def test_no_or_bad_key_is_401(api, method, path, body, case):
    key = BAD_KEYS[case]
    if key is None:
        headers = None
    elif key == "Authorization":
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    else:
        headers = {"X-API-Key": key}
    response = call(api, method, path, body, headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "X-API-Key"
    assert "API key" in response.json()["detail"] or "X-API-Key" in response.json()["detail"]


@pytest.mark.parametrize("method,path,body", ADMIN_ONLY)
def test_client_key_on_admin_routes_is_403(api, method, path, body):
    response = call(api, method, path, body, CLIENT)
    assert response.status_code == 403
    assert response.json() == {"detail": "this route needs the admin role"}


@pytest.mark.parametrize("method,path,body", PROTECTED)
def test_admin_may_do_everything(api, method, path, body):
    assert call(api, method, path, body, ADMIN).status_code == 200


@pytest.mark.parametrize("method,path,body", [r for r in PROTECTED if r not in ADMIN_ONLY])
def test_client_may_predict_and_read_the_model(api, method, path, body):
    assert call(api, method, path, body, CLIENT).status_code == 200


def test_auth_is_checked_before_validation(api):
    """An anonymous caller learns nothing about the request schema."""
    response = api.post("/predict", json={"designation": ""})
    assert response.status_code == 401
