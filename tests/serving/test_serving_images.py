"""/predict with an image, against the session's API (a text model: it reads no image).

Every bad image is refused with a 4xx that names the problem, before the model runs; a
good one is accepted and the answer says it was not used. A fused model reading the
image: tests/ml/test_fusion.py.
"""

from __future__ import annotations

import base64
import os

import pytest

from tests.support.lake import jpeg_bytes, png_bytes
from tests.support.serving import CLIENT, SAMPLE_DATA

pytestmark = pytest.mark.stack

PRODUCT = {"designation": "Peluche Donald - Disneyland"}
TWO_MIB = 2 * 1024 * 1024  # API_MAX_IMAGE_BYTES's default, the session API's setting


def sample_photo() -> bytes:
    return sorted((SAMPLE_DATA / "images" / "image_train").glob("*.jpg"))[0].read_bytes()


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_IMAGES = [
    # (case, image_base64, status, words of the error)
    ("not base64", "not base64 at all!", 422, "image_base64: not valid base64"),
    ("empty", "", 422, "image_base64: not valid base64"),
    ("a text file", encoded(b"<html><body>not a photo</body></html>"), 415, "not a JPEG or PNG"),
    ("a GIF", encoded(b"GIF89a" + bytes(64)), 415, "not a JPEG or PNG"),
    ("oversized", encoded(b"\xff\xd8\xff" + os.urandom(TWO_MIB)), 413, "API_MAX_IMAGE_BYTES"),
    ("truncated JPEG", encoded(sample_photo()[:3000]), 422, "truncated or corrupt"),
    ("truncated PNG", encoded(png_bytes()[:40]), 422, "PNG image is corrupt"),
]


@pytest.mark.parametrize("image,code,words", [c[1:] for c in BAD_IMAGES],
                         ids=[c[0] for c in BAD_IMAGES])
def test_a_bad_image_is_a_4xx_naming_the_problem(api, image, code, words):
    response = api.post("/predict", json={**PRODUCT, "image_base64": image}, headers=CLIENT)
    assert response.status_code == code, response.text
    detail = response.json()["detail"]
    if isinstance(detail, list):  # a field the schema refused: each problem's message
        detail = "; ".join(problem["msg"] for problem in detail)
    assert words in detail


@pytest.mark.parametrize("image", [sample_photo(), jpeg_bytes((40, 30)), png_bytes()],
                         ids=["sample photo", "small JPEG", "PNG"])
def test_a_good_image_is_accepted_and_a_text_model_says_it_did_not_use_it(api, image):
    with_image = api.post("/predict", json={**PRODUCT, "image_base64": encoded(image)},
                          headers=CLIENT)
    without = api.post("/predict", json=PRODUCT, headers=CLIENT)
    assert with_image.status_code == 200 == without.status_code, with_image.text
    assert with_image.json()["image_used"] is False is without.json()["image_used"]
    assert with_image.json()["predictions"] == without.json()["predictions"]
