"""What the data-quality job measures on products and predictions: features and profiles.

A **profile** is everything the statistics need from one sample (the reference, a load
batch, an inference window): one row of features per product or prediction, the image
features of the products that have one, and the sample's token counts.

Features of a product (designation d, description e, text t = d + "\\n" + e, as the
inference log hashes it; a missing description is ""):

* designation_chars, description_chars: length in Unicode code points (Python `len`);
* designation_words, description_words: whitespace-separated words (`str.split()`);
* digit_ratio: decimal digits (Unicode Nd) in t / code points of t;
* uppercase_ratio: uppercase letters (Unicode Lu) in t / code points of t;
* has_html: t holds an HTML tag or entity (the inference log's own pattern);
* language: 'fr', 'de', 'en' or 'unknown', the inference log's LanguageGuesser on t;
* label / predicted_class: the product type (labelled products) / the served top-1;
* image_width, image_height, image_bytes: from the lake's image catalogue;
* image_brightness: mean luma (ITU-R 601-2, PIL mode "L") of the JPEG decoded at about
  1/8 scale, / 255 (0 black, 1 white), on at most `max_images` images per sample;
* tokens: letter runs (Unicode L) of lower-cased t with HTML tags and entities blanked,
  of 2+ letters, minus the NLTK French/English/German stopwords.

The inference log records only some of these (lengths, word counts, has_html,
language, the predicted class, a hash of the text): an inference window is compared on
those. The signals themselves are computed column-wise in `signals`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rakuten_mlops.quality.signals import TOKENS_KEPT, text_features, token_counts

FEATURES_VERSION = 1  # part of the reference cache key: bump when a definition changes

TEXT_NUMERIC = (
    "designation_chars",
    "description_chars",
    "designation_words",
    "description_words",
    "digit_ratio",
    "uppercase_ratio",
)
IMAGE_NUMERIC = ("image_width", "image_height", "image_bytes", "image_brightness")
CATEGORICAL = ("language", "has_html")
LENGTH_FEATURES = ("designation_chars", "description_chars")  # IQR outliers
IMAGE_SIZE_FEATURES = ("image_width", "image_height", "image_bytes")
# inference_log column -> feature (rakuten_mlops/sql/002_serving.sql)
INFERENCE_COLUMNS = {
    "designation_chars": "designation_chars",
    "description_chars": "description_chars",
    "designation_words": "designation_words",
    "description_words": "description_words",
    "has_html": "has_html",
    "language": "language",
    "prdtypecode": "predicted_class",
    "confidence": "confidence",
    "text_sha256": "text_key",
}


@dataclass
class Profile:
    """One sample, ready for the statistics.

    features: one row per product (or prediction): the feature columns it has, plus
      `designation_empty`, `description_empty` (bool), `text_key` (sha256 of t) and, for
      products, `has_image`.
    images: one row per product with an image: IMAGE_NUMERIC (brightness NaN where not
      measured).
    tokens: token -> count, the TOKENS_KEPT most frequent; token_total counts every kept
      token occurrence (so "other" = token_total - the top tokens' counts).
    """

    features: pd.DataFrame
    images: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(IMAGE_NUMERIC)))
    tokens: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))
    token_total: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.features)

    @property
    def texts(self) -> int:
        """Products whose text was tokenised (0 for an inference window)."""
        return int(self.meta.get("texts", 0))

    # -- serialisation (the reference cache in S3): parquet + JSON, never pickle

    def to_objects(self) -> dict[str, bytes]:
        return {
            "features.parquet": _parquet(self.features),
            "images.parquet": _parquet(self.images),
            "profile.json": json.dumps(
                {
                    # pairs, most frequent first: the order is the ranking
                    "tokens": [[str(k), int(v)] for k, v in self.tokens.items()],
                    "token_total": int(self.token_total),
                    "meta": self.meta,
                },
                sort_keys=True,
            ).encode(),
        }

    @classmethod
    def from_objects(cls, objects: dict[str, bytes]) -> Profile:
        body = json.loads(objects["profile.json"])
        pairs = body["tokens"]
        tokens = pd.Series([c for _, c in pairs], index=[t for t, _ in pairs], dtype="int64")
        return cls(
            features=pd.read_parquet(io.BytesIO(objects["features.parquet"])),
            images=pd.read_parquet(io.BytesIO(objects["images.parquet"])),
            tokens=tokens,
            token_total=int(body["token_total"]),
            meta=body["meta"],
        )


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def product_profile(
    products: pd.DataFrame,
    images: pd.DataFrame | None = None,
    guesser=None,
    stopwords: frozenset[str] = frozenset(),
    meta: dict | None = None,
    keep_tokens: int | None = TOKENS_KEPT,
) -> Profile:
    """Profile of products (productid, designation, description[, prdtypecode])."""
    features = text_features(products["designation"], products["description"], guesser)
    features.insert(0, "productid", products["productid"].to_numpy())
    if "prdtypecode" in products:
        features["label"] = pd.array(products["prdtypecode"], dtype="Int64")
    images = _image_frame(images)
    features["has_image"] = features["productid"].isin(images["productid"]).to_numpy()
    tokens, total = token_counts(
        products["designation"], products["description"], stopwords, keep_tokens
    )
    return Profile(features, images, tokens, total, {**(meta or {}), "texts": len(products)})


def inference_profile(log: pd.DataFrame, meta: dict | None = None) -> Profile:
    """Profile of inference_log rows (its columns, renamed to feature names)."""
    features = log[[c for c in INFERENCE_COLUMNS if c in log]].rename(columns=INFERENCE_COLUMNS)
    features = features.reset_index(drop=True)
    features["predicted_class"] = pd.array(features["predicted_class"], dtype="Int64")
    features["designation_empty"] = features["designation_chars"].to_numpy() == 0
    features["description_empty"] = features["description_chars"].to_numpy() == 0
    return Profile(features, meta={**(meta or {}), "texts": 0})


# --------------------------------------------------------------------------- images


def _image_frame(images: pd.DataFrame | None) -> pd.DataFrame:
    columns = ["productid", *IMAGE_NUMERIC]
    if images is None or images.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    frame = images.rename(
        columns={
            "width": "image_width",
            "height": "image_height",
            "size_bytes": "image_bytes",
            "brightness": "image_brightness",
        }
    )
    if "image_brightness" not in frame:
        frame["image_brightness"] = np.nan
    return frame[columns].reset_index(drop=True)
