"""Features and profiles (rakuten_mlops.quality.features, .signals) on the real shipped sample.

The reference's features are computed column-wise (pyarrow); the inference log's row by
row in the API (serving.inference_log.features). Both sides of an inference-window
comparison must mean the same thing, so each feature is checked against the plain
Python definition and against what the inference log writes for the same product.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from rakuten_mlops.quality import features as qf
from rakuten_mlops.quality import signals
from tests.support.quality import SAMPLE


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    x = pd.read_csv(SAMPLE / "X_train_update.csv", index_col=0)
    x = x.astype({"designation": object, "description": object})
    return x.assign(description=x["description"].where(x["description"].notna(), None))


@pytest.fixture(scope="module")
def guesser(settings):
    from rakuten_mlops.serving.inference_log import language_guesser

    return language_guesser(settings)


def test_text_features_follow_their_python_definitions(sample):
    features = signals.text_features(sample["designation"], sample["description"])
    designation = sample["designation"].tolist()
    description = [d or "" for d in sample["description"]]
    text = [f"{a}\n{b}" for a, b in zip(designation, description, strict=True)]
    assert features["designation_chars"].tolist() == [len(s) for s in designation]
    assert features["description_chars"].tolist() == [len(s) for s in description]
    assert features["designation_words"].tolist() == [len(s.split()) for s in designation]
    assert features["description_words"].tolist() == [len(s.split()) for s in description]
    digits = [sum(unicodedata.category(c) == "Nd" for c in s) / max(len(s), 1) for s in text]
    upper = [sum(unicodedata.category(c) == "Lu" for c in s) / max(len(s), 1) for s in text]
    assert features["digit_ratio"].to_numpy() == pytest.approx(digits)
    assert features["uppercase_ratio"].to_numpy() == pytest.approx(upper)
    assert features["description_empty"].tolist() == [not s.strip() for s in description]
    assert features["text_key"].tolist() == [hashlib.sha256(s.encode()).hexdigest() for s in text]


def test_word_counts_split_on_pythons_whitespace():
    odd = ["a\u00a0b", "a\x1cb", "a\u2003b", "a\vb", "  lead  trail ", "", "x\u200by"]
    features = signals.text_features(odd, [None] * len(odd))
    assert features["designation_words"].tolist() == [len(s.split()) for s in odd]


def test_features_equal_what_the_inference_log_records(sample, guesser, settings):
    from rakuten_mlops.serving.inference_log import COLUMNS, Entry, features

    rows = sample.iloc[:300]
    ours = signals.text_features(rows["designation"], rows["description"], guesser)
    for i, (designation, description) in enumerate(
        zip(rows["designation"], rows["description"], strict=True)
    ):
        entry = Entry(
            "00000000-0000-0000-0000-000000000000",
            0,
            datetime.now(UTC),
            "predict",
            "client",
            "m",
            "1",
            "registry",
            [(10, 0.9)],
            designation,
            description,
            1,
            1.0,
        )
        recorded = dict(zip(COLUMNS, features(entry, guesser), strict=True))
        job = ours.iloc[i]
        expected = {
            "designation_chars": job["designation_chars"],
            "description_chars": job["description_chars"],
            "designation_words": job["designation_words"],
            "description_words": job["description_words"],
            "has_html": job["has_html"],
            "language": job["language"],
            "text_sha256": job["text_key"],
        }
        assert {name: recorded[name] for name in expected} == expected, i


def test_token_counts_follow_their_definition(sample):
    stopwords = frozenset({"de", "la", "le", "et"})
    counts, total = signals.token_counts(
        sample["designation"], sample["description"], stopwords, keep=None
    )
    expected: dict[str, int] = {}
    for designation, description in zip(sample["designation"], sample["description"], strict=True):
        text = re.sub(r"<[^>]*>|&#?[0-9a-zA-Z]+;", " ", f"{designation}\n{description or ''}")
        letters = "".join(c if unicodedata.category(c)[0] == "L" else " " for c in text.lower())
        for token in letters.split():
            if len(token) >= 2 and token not in stopwords:
                expected[token] = expected.get(token, 0) + 1
    assert total == sum(expected.values())
    assert counts.to_dict() == expected
    ranked = counts.index.tolist()
    assert ranked[:5] == sorted(expected, key=lambda t: (-expected[t], t))[:5]
    top, _ = signals.token_counts(sample["designation"], sample["description"], stopwords, keep=30)
    assert len(top) == 30 and top.to_dict() == {t: expected[t] for t in ranked[:30]}


def test_a_profile_survives_its_serialisation(sample, guesser):
    images = pd.DataFrame(
        {
            "productid": sample["productid"].iloc[:3],
            "width": [500] * 3,
            "height": [500] * 3,
            "size_bytes": [1000, 2000, 3000],
            "brightness": [0.2, np.nan, 0.9],
        }
    )
    products = sample.iloc[:50].assign(prdtypecode=10)
    profile = qf.product_profile(products, images, guesser, frozenset(), {"k": "v"})
    assert profile.features["has_image"].sum() == 3 and profile.texts == 50
    back = qf.Profile.from_objects(profile.to_objects())
    pd.testing.assert_frame_equal(back.features, profile.features)
    pd.testing.assert_frame_equal(back.images, profile.images)
    pd.testing.assert_series_equal(back.tokens, profile.tokens)
    assert back.token_total == profile.token_total and back.meta == profile.meta


def _jpeg(color) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_brightness_is_the_mean_luma():
    assert signals.brightness(_jpeg((255, 255, 255))) == pytest.approx(1.0, abs=0.01)
    assert signals.brightness(_jpeg((0, 0, 0))) == pytest.approx(0.0, abs=0.01)
    # ITU-R 601-2: L = 0.299 R + 0.587 G + 0.114 B
    assert signals.brightness(_jpeg((200, 30, 30))) == pytest.approx(
        (0.299 * 200 + 0.587 * 30 + 0.114 * 30) / 255, abs=0.02
    )


def test_brightness_is_measured_on_a_seeded_sample():
    images = pd.DataFrame(
        {"productid": range(10), "bucket": "b", "s3_key": [f"k{i}" for i in range(10)]}
    )
    fetched = []

    def fetch(bucket, key):
        fetched.append(key)
        return _jpeg((255, 255, 255))

    first = signals.measure_brightness(images, fetch, max_images=4)
    assert first["brightness"].notna().sum() == 4 and len(fetched) == 4
    again = signals.measure_brightness(images.sample(frac=1, random_state=3), fetch, max_images=4)
    assert again["brightness"].notna().tolist() == first["brightness"].notna().tolist()


def _translated_texts(limit: int = 20000) -> list[str]:
    from tests.support.lake import PROJECT

    path = PROJECT.parent / "shared" / "data" / "translated" / "X_train_translated.csv"
    if not path.exists():
        return []
    frame = pd.read_csv(path, index_col=0, nrows=limit)
    return [f"{d}\n" for d in frame["designation"].astype(str)]


def test_column_wise_language_guess_equals_the_inference_logs_guess(guesser):
    import pyarrow as pa

    texts = []
    for name in ("X_train_update.csv", "X_test_update.csv"):
        frame = pd.read_csv(SAMPLE / name, index_col=0)
        texts += [
            f"{d}\n{e if isinstance(e, str) else ''}"
            for d, e in zip(frame["designation"], frame["description"], strict=True)
        ]
    texts += _translated_texts()  # English machine translations, when the shared data is here
    texts += [
        "",
        "ÉTÉ À LA PLAGE",
        "İN THE BOX",
        "und der die",
        "the and",
        "le la les the",
        "ßüöä",
        "x" * 400 + " le la",
        "Le_la de-la l'été",
        "١٢٣ le",
        "ǅemal and",
    ]
    expected = [guesser.guess(t) for t in texts]
    got = signals.guess_languages(pa.array(texts, type=pa.large_string()), guesser.stopwords)
    mismatches = [(t[:60], e, g) for t, e, g in zip(texts, expected, got, strict=True) if e != g]
    assert not mismatches, mismatches[:10]
    assert {"fr", "en", "de", "unknown"} <= set(expected)
