"""An image's feature vector: bytes in, a fixed-length float32 vector out (pure).

Classical and CPU-fast, so the whole lake can be described on a laptop core:

- colour: a joint HSV histogram (8 hue x 3 saturation x 3 value bins) of a 64x64
  thumbnail, as fractions of its pixels. Hue separates what RGB mixes with brightness
  (a blue pool item and a dark-blue book cover share little hue-saturation mass);
- shape: HOG (scikit-image) of the grey thumbnail, 9 orientations over 16x16-pixel
  cells, 2x2-cell blocks: outlines (a console, a figurine, a rug) survive the size cut;
- size: log width, log height and log aspect ratio of the original.

JPEGs are decoded in Pillow's draft mode: the decoder itself scales by 1/2, 1/4 or 1/8
(DCT scaling) to the smallest size still at least the thumbnail's, so a 500x500
product photo costs about a quarter of a full decode. Any change to what is computed
must change EXTRACTOR_VERSION: cached vectors are keyed by it (ml/image_stage.py).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image
from skimage.feature import hog

EXTRACTOR_VERSION = "hsv8x3x3-hog64-size-v1"
THUMBNAIL = 64  # pixels per side of the square thumbnail every descriptor reads
HUE_BINS, SATURATION_BINS, VALUE_BINS = 8, 3, 3
HOG_ORIENTATIONS, HOG_CELL, HOG_BLOCK = 9, 16, 2
# Refused before decoding: a header declaring more pixels is a decompression bomb.
MAX_PIXELS = 40_000_000

_COLOUR_LENGTH = HUE_BINS * SATURATION_BINS * VALUE_BINS
_CELLS = THUMBNAIL // HOG_CELL
_HOG_LENGTH = (_CELLS - HOG_BLOCK + 1) ** 2 * HOG_BLOCK**2 * HOG_ORIENTATIONS
FEATURE_LENGTH = _COLOUR_LENGTH + _HOG_LENGTH + 3


class UndecodableImage(ValueError):
    """Bytes that are not a whole, decodable JPEG or PNG; `reason` is a short code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_thumbnail(data: bytes) -> tuple[Image.Image, tuple[int, int]]:
    """The THUMBNAIL x THUMBNAIL RGB thumbnail and the original (width, height)."""
    if not data:
        raise UndecodableImage("empty_image", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
            size = image.size
            if size[0] * size[1] > MAX_PIXELS:
                raise UndecodableImage("decompression_bomb", f"declares {size[0]}x{size[1]}")
            image.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG only; a no-op for PNG
            # convert() decodes everything: a truncated or garbled file fails here.
            thumbnail = image.convert("RGB").resize(
                (THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR
            )
    except UndecodableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - a decoder fed untrusted bytes: any error is the file's
        raise UndecodableImage("undecodable_image", f"{type(exc).__name__}: {exc}"[:300]) from exc
    return thumbnail, size


def colour_histogram(thumbnail: Image.Image) -> np.ndarray:
    """Joint HSV histogram, as fractions of the thumbnail's pixels."""
    hsv = np.asarray(thumbnail.convert("HSV"), dtype=np.int32)
    hue = hsv[..., 0] * HUE_BINS // 256
    saturation = hsv[..., 1] * SATURATION_BINS // 256
    value = hsv[..., 2] * VALUE_BINS // 256
    bins = (hue * SATURATION_BINS + saturation) * VALUE_BINS + value
    counts = np.bincount(bins.ravel(), minlength=_COLOUR_LENGTH)
    return (counts / bins.size).astype(np.float32)


def shape_descriptor(thumbnail: Image.Image) -> np.ndarray:
    grey = np.asarray(thumbnail.convert("L"), dtype=np.float32) / 255.0
    return hog(
        grey,
        orientations=HOG_ORIENTATIONS,
        pixels_per_cell=(HOG_CELL, HOG_CELL),
        cells_per_block=(HOG_BLOCK, HOG_BLOCK),
        feature_vector=True,
    ).astype(np.float32)


def size_descriptor(width: int, height: int) -> np.ndarray:
    return np.array(
        [math.log(width), math.log(height), math.log(width / height)], dtype=np.float32
    )


def image_vector(data: bytes) -> np.ndarray:
    """FEATURE_LENGTH float32 values describing the image `data` (UndecodableImage if it
    is not one)."""
    thumbnail, (width, height) = decode_thumbnail(data)
    return np.concatenate(
        [colour_histogram(thumbnail), shape_descriptor(thumbnail), size_descriptor(width, height)]
    )


def to_bytes(vector: np.ndarray) -> bytes:
    """The stored form of a vector: float32, little-endian."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")
