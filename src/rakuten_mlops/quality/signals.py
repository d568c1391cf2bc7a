"""Signals of product texts and images, column-wise: what profiles are built from.

Definitions (designation d, description e, text t = d + "\\n" + e, as the inference
log hashes it; a missing description is ""): see rakuten_mlops.quality.features. Text
columns are processed with pyarrow's RE2 kernels (the word-count pattern reproduces
`str.split()`'s whitespace), the language guess per row as the inference log's guesser
does, image brightness from JPEGs decoded at about 1/8 scale.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from rakuten_mlops.ml.text import GUESS_CHARS, LANGUAGES, LETTER_HINTS

TOKENS_KEPT = 1000  # a profile keeps its most frequent tokens; top_tokens must not exceed it

_WHITESPACE = r"\s\x{0b}\x{1c}-\x{1f}\x{85}\p{Z}"  # Python's str.split() whitespace, in RE2
_WORD = f"[^{_WHITESPACE}]+"
_BLANK = f"^[{_WHITESPACE}]*$"
# rakuten_mlops.serving.inference_log._HTML, in RE2 syntax (the same language)
_HTML = r"<[a-zA-Z/!][^>]*>|&(?:[a-zA-Z]{2,8}|#\d{2,5}|#x[0-9a-fA-F]{2,4});"
_MARKUP = r"<[^>]*>|&#?[0-9a-zA-Z]+;"
_NON_LETTERS = r"[^\p{L}]+"


# --------------------------------------------------------------------------- text


def _large_strings(values: Sequence | pd.Series):
    import pyarrow as pa

    series = pd.Series(values, dtype=object) if not isinstance(values, pd.Series) else values
    series = series.astype(object).where(series.notna(), "")
    return pa.array(series.to_numpy(dtype=object), type=pa.large_string())


def text_features(
    designation: Sequence | pd.Series,
    description: Sequence | pd.Series,
    guesser=None,
) -> pd.DataFrame:
    """The text features of each product (see the module docstring), in input order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    des, dsc = _large_strings(designation), _large_strings(description)
    text = pc.binary_join_element_wise(des, dsc, pa.scalar("\n", pa.large_string()))
    chars = pc.utf8_length(text).to_numpy().astype(float)
    denominator = np.maximum(chars, 1.0)
    frame = pd.DataFrame(
        {
            "designation_chars": pc.utf8_length(des).to_numpy().astype("int64"),
            "description_chars": pc.utf8_length(dsc).to_numpy().astype("int64"),
            "designation_words": pc.count_substring_regex(des, _WORD).to_numpy().astype("int64"),
            "description_words": pc.count_substring_regex(dsc, _WORD).to_numpy().astype("int64"),
            "digit_ratio": pc.count_substring_regex(text, r"\p{Nd}").to_numpy() / denominator,
            "uppercase_ratio": pc.count_substring_regex(text, r"\p{Lu}").to_numpy() / denominator,
            "has_html": pc.match_substring_regex(text, _HTML).to_numpy(zero_copy_only=False),
            "designation_empty": pc.match_substring_regex(des, _BLANK).to_numpy(
                zero_copy_only=False
            ),
            "description_empty": pc.match_substring_regex(dsc, _BLANK).to_numpy(
                zero_copy_only=False
            ),
        }
    )
    strings = text.to_pylist()
    frame["text_key"] = [
        hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest() for s in strings
    ]
    if guesser is not None:
        frame["language"] = guess_languages(text, guesser.stopwords)
    return frame


def guess_languages(texts, stopwords: dict[str, frozenset[str]]) -> np.ndarray:
    """`LanguageGuesser.guess` of the inference log on every text, column-wise.

    The same rule on the same stopword sets: the first GUESS_CHARS characters, lower-cased
    (U+0130 mapped first to what Python's `str.lower` gives, "i" + combining dot), split
    into `\\w+` words; a language scores one per word in its stopwords, two per distinct
    accented letter of its own among the text's letters; the unique best score above 0
    wins, else 'unknown'. About 10x faster than calling `guess` per row (tests hold the
    two equal on the whole catalogue).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    sliced = pc.utf8_slice_codeunits(texts, 0, GUESS_CHARS)
    lowered = pc.utf8_lower(pc.replace_substring(sliced, "\u0130", "i\u0307"))
    words = pc.split_pattern_regex(lowered, r"[^\p{L}\p{N}_]+")
    parents = pc.list_parent_indices(words).to_numpy()
    flat = pc.list_flatten(words)
    n = len(texts)
    codes = list(LANGUAGES)
    scores = np.zeros((n, len(codes)), dtype=np.int64)
    for column, code in enumerate(codes):
        vocabulary = stopwords.get(code)
        if vocabulary:
            hit = pc.is_in(flat, pa.array(sorted(vocabulary), type=pa.large_string()))
            hit = hit.to_numpy(zero_copy_only=False)
            scores[:, column] += np.bincount(parents[hit], minlength=n)
    # Accented letters: one pass finds the texts that have any; sets only for those.
    every_hint = "".join(sorted(set().union(*LETTER_HINTS.values())))
    hinted = np.flatnonzero(
        pc.match_substring_regex(lowered, f"[{every_hint}]").to_numpy(zero_copy_only=False)
    )
    if hinted.size:
        texts_with_hints = lowered.take(pa.array(hinted)).to_pylist()
        for column, code in enumerate(codes):
            hints = LETTER_HINTS.get(code)
            if hints:
                scores[hinted, column] += [2 * len(set(t) & hints) for t in texts_with_hints]
    top = scores.max(axis=1)
    unique = (scores == top[:, None]).sum(axis=1) == 1
    best = np.array(codes, dtype=object)[scores.argmax(axis=1)]
    return np.where((top > 0) & unique, best, "unknown").astype(object)


def token_counts(
    designation: Sequence | pd.Series,
    description: Sequence | pd.Series,
    stopwords: frozenset[str] = frozenset(),
    keep: int | None = TOKENS_KEPT,
) -> tuple[pd.Series, int]:
    """(token -> count, most frequent first, ties by token; total count of kept tokens)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    des, dsc = _large_strings(designation), _large_strings(description)
    text = pc.binary_join_element_wise(des, dsc, pa.scalar("\n", pa.large_string()))
    lowered = pc.utf8_lower(pc.replace_substring_regex(text, _MARKUP, " "))
    tokens = pc.list_flatten(pc.split_pattern_regex(lowered, _NON_LETTERS))
    tokens = tokens.filter(pc.greater_equal(pc.utf8_length(tokens), 2))
    if stopwords:
        tokens = tokens.filter(
            pc.invert(pc.is_in(tokens, pa.array(sorted(stopwords), type=pa.large_string())))
        )
    counted = pc.value_counts(tokens)
    counts = pd.DataFrame(
        {
            "token": counted.field("values").to_pylist(),
            "count": counted.field("counts").to_numpy(),
        }
    ).sort_values(["count", "token"], ascending=[False, True], kind="stable")
    total = int(counts["count"].sum())
    if keep is not None:
        counts = counts.head(keep)
    return pd.Series(
        counts["count"].to_numpy(), index=counts["token"].to_numpy(), dtype="int64"
    ), total


def brightness(jpeg: bytes) -> float:
    """Mean luma of a JPEG decoded at reduced size, in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("L", (max(1, image.width // 8), max(1, image.height // 8)))
        gray = np.asarray(image.convert("L"), dtype=float)
    return float(gray.mean() / 255.0)


def measure_brightness(
    images: pd.DataFrame, fetch: Callable[[str, str], bytes], max_images: int, workers: int = 8
) -> pd.DataFrame:
    """`images` (bucket, s3_key, ...) with `brightness` on a seeded sample of max_images rows."""
    from concurrent.futures import ThreadPoolExecutor

    frame = images.sort_values("productid").reset_index(drop=True)
    frame["brightness"] = np.nan
    if frame.empty or max_images <= 0:
        return frame
    chosen = frame.sample(n=min(max_images, len(frame)), random_state=0).index

    def one(index: int) -> float:
        return brightness(fetch(frame.at[index, "bucket"], frame.at[index, "s3_key"]))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        values = list(pool.map(one, chosen))
    frame.loc[chosen, "brightness"] = values
    return frame
