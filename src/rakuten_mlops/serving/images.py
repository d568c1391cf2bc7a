"""Images at the API: an uploaded one checked and described, the lake's looked up.

`/predict` takes an optional `image_base64` (JSON): it must decode as base64, be at most
API_MAX_IMAGE_BYTES, start like a JPEG or PNG, pass Pillow's `verify()` and decode whole
(a truncated or garbled file fails there); each refusal is an HTTP 4xx naming what was
wrong. The accepted image becomes the same vector training used
(rakuten_mlops.ml.image_features). `/predict/batch` items and batch predictions name a
`productid` instead: its image vector is the one the lake cached (ml/image_stage.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging

import numpy as np
import psycopg
from fastapi import HTTPException
from PIL import Image

from rakuten_mlops.ml.image_features import (
    EXTRACTOR_VERSION,
    UndecodableImage,
    from_bytes,
    image_vector,
)
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.serving.images")
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}


def image_kind(data: bytes) -> str | None:
    return next((kind for magic, kind in _MAGIC.items() if data.startswith(magic)), None)


def _refuse(code: int, detail: str) -> HTTPException:
    return HTTPException(code, detail=detail)


def uploaded_vector(encoded: str | None, max_bytes: int) -> np.ndarray | None:
    """The feature vector of a base64 image (None without one); HTTPException if bad."""
    if encoded is None:
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _refuse(422, f"image_base64 is not valid base64 ({exc})") from exc
    if len(data) > max_bytes:
        raise _refuse(413,
                      f"the image is {len(data):,} bytes, above API_MAX_IMAGE_BYTES={max_bytes:,}")
    kind = image_kind(data)
    if kind is None:
        raise _refuse(415,
                      f"the image is not a JPEG or PNG file (it starts with {data[:8].hex()})")
    try:
        with Image.open(io.BytesIO(data), formats=(kind,)) as image:
            image.verify()
    except Exception as exc:  # noqa: BLE001 - a parser fed untrusted bytes: any error is the file's
        detail = f"the {kind} image is corrupt: {type(exc).__name__}: {exc}"
        raise _refuse(422, detail[:300]) from exc
    try:
        return image_vector(data)
    except UndecodableImage as bad:
        code = 413 if bad.reason == "decompression_bomb" else 422
        raise _refuse(code, f"the {kind} image cannot be decoded (truncated or corrupt): "
                            f"{bad.detail}"[:300]) from bad


def lake_vectors(conn, productids: list[int]) -> dict[int, np.ndarray]:
    """{productid: cached vector} of the products whose image the lake described."""
    rows = conn.execute(
        "SELECT i.productid, f.vector FROM images i JOIN image_features f USING (sha256)"
        " WHERE i.productid = ANY(%s) AND f.extractor_version = %s AND f.vector IS NOT NULL",
        (productids, EXTRACTOR_VERSION),
    ).fetchall()
    return {int(productid): from_bytes(blob) for productid, blob in rows}


def stored_vectors(settings: Settings, model, items) -> list[np.ndarray | None]:
    """The lake's image vector of each batch item that names a `productid` (None for the
    others, and for all when the model takes no images: no query then)."""
    wanted = [item.productid for item in items if item.productid is not None]
    if not (model.reads_images and wanted):
        return [None] * len(items)
    try:
        with connect(settings, connect_timeout=3) as conn:
            found = lake_vectors(conn, wanted)
    except psycopg.Error as exc:  # the text still classifies: answer without images
        log.warning("no stored image vectors (%s): %s", type(exc).__name__, exc)
        return [None] * len(items)
    return [found.get(item.productid) for item in items]
