"""Text cleaning for product titles and descriptions, shared by training and serving.

`clean_text` is a pure function; `TextCleaner` wraps it as the first step of every model
pipeline, with the stopword list it was fitted with stored inside it, so a served model
cleans exactly as its training did and needs neither NLTK nor its corpus at prediction time.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

# The catalogue is mostly French, with German and English products.
DEFAULT_LANGUAGES = ("french", "german", "english")
TEXT_COLUMNS = ("designation", "description")

_TAG = re.compile(r"<[^>]*>")
_TOKEN = re.compile(r"\w+")


def remove_accents(text: str) -> str:
    """'Décoration Noël' -> 'Decoration Noel' (ß, æ and other non-decomposable letters stay)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def normalise(text: str, strip_accents: bool = True) -> str:
    """HTML entities decoded, tags stripped, Unicode NFKC, lower case, accents removed."""
    # Entities are sometimes escaped twice (`&amp;eacute;`); a third pass never changes more.
    text = html.unescape(html.unescape(text))
    text = _TAG.sub(" ", text)
    text = unicodedata.normalize("NFKC", text).lower()
    return remove_accents(text) if strip_accents else text


def clean_text(
    text: object, stopwords: frozenset[str] = frozenset(), strip_accents: bool = True
) -> str:
    """One product text, normalised, as space-separated word tokens without stopwords.

    Missing values (None, NaN) give "". Digits stay: sizes, volumes and model numbers
    tell a lot about a product's type.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    tokens = _TOKEN.findall(normalise(str(text), strip_accents))
    return " ".join(token for token in tokens if token not in stopwords)


def nltk_stopwords(
    nltk_data_dir: str | Path, languages: Iterable[str] = DEFAULT_LANGUAGES
) -> list[str]:
    """NLTK's stopword lists, read from the project's own copy of the corpus (never downloaded).

    `nltk_data_dir` must hold `corpora/stopwords.zip`.
    """
    return list(_read_stopwords(str(Path(nltk_data_dir).resolve()), tuple(languages)))


@lru_cache(maxsize=8)
def _read_stopwords(folder: str, languages: tuple[str, ...]) -> tuple[str, ...]:
    if not (Path(folder) / "corpora" / "stopwords.zip").is_file():
        raise FileNotFoundError(
            f"NLTK stopwords corpus not found: expected {folder}/corpora/stopwords.zip "
            "(settings.nltk_data_dir; the project ships it in config/nltk_data)"
        )
    import nltk

    # NLTK only reads data from folders on its search path.
    if folder not in nltk.data.path:
        nltk.data.path.insert(0, folder)
    from nltk.corpus import stopwords

    words: list[str] = []
    for language in languages:
        words.extend(stopwords.words(language))
    return tuple(dict.fromkeys(words))


def combine(frame: pd.DataFrame) -> pd.Series:
    """designation + description as one raw string per product (description may be missing)."""
    description = frame.get("description", "")
    return (
        frame["designation"].fillna("").astype(str)
        + " "
        + pd.Series(description, index=frame.index).fillna("").astype(str)
    )


def normalised_text(text: object, strip_accents: bool = True) -> str:
    """The character view: normalised like `clean_text`, punctuation and stopwords kept."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return ""
    return " ".join(normalise(str(text), strip_accents).split())


class TextCleaner(TransformerMixin, BaseEstimator):
    """Pipeline step: a frame with `designation` (and optionally `description`) -> two views.

    - `words`: word tokens without FR/DE/EN stopwords, for word n-grams;
    - `chars`: the same normalised text with punctuation and stopwords, for character
      n-grams (they score better on it: "l'art", "n°", "3/4" carry signal), cut at
      `max_chars`: the start of a description says what the product is, and the
      n-grams of a 10,000-character description would cost more than they tell;
    - `title`: the normalised designation alone, so a long description cannot drown it.

    Fitting reads the stopword lists once (from `nltk_data_dir`, or the settings' folder)
    and keeps them, normalised like the text, in `stopwords_`.
    """

    def __init__(
        self,
        languages: tuple[str, ...] = DEFAULT_LANGUAGES,
        strip_accents: bool = True,
        nltk_data_dir: str | None = None,
        max_chars: int | None = 500,
    ):
        self.languages = languages
        self.strip_accents = strip_accents
        self.nltk_data_dir = nltk_data_dir
        self.max_chars = max_chars

    def fit(self, X, y=None):  # noqa: N803 - scikit-learn's naming
        folder = self.nltk_data_dir
        if folder is None:
            from rakuten_mlops.settings import get_settings

            settings = get_settings()
            folder = settings.path(settings.nltk_data_dir)
        raw = nltk_stopwords(folder, self.languages) if self.languages else []
        # Stopwords go through the same normalisation as the text they are matched against.
        self.stopwords_ = frozenset(
            token for word in raw for token in _TOKEN.findall(normalise(word, self.strip_accents))
        )
        return self

    def transform(self, X) -> pd.DataFrame:  # noqa: N803
        # Plain lists, one normalisation per text: this runs on every served request,
        # where pandas string methods cost more than the cleaning itself.
        stop, strip, limit = self.stopwords_, self.strip_accents, self.max_chars
        frame = as_frame(X)
        titles = [_as_text(value) for value in frame["designation"].tolist()]
        if "description" in frame:
            descriptions = [_as_text(value) for value in frame["description"].tolist()]
        else:
            descriptions = [""] * len(titles)
        words, chars = [], []
        for title, description in zip(titles, descriptions, strict=True):
            normal = normalise(f"{title} {description}", strip)
            words.append(" ".join(t for t in _TOKEN.findall(normal) if t not in stop))
            chars.append(" ".join(normal.split())[:limit])
        return pd.DataFrame(
            {
                "words": words,
                "chars": chars,
                "title": [" ".join(normalise(title, strip).split()) for title in titles],
            },
            dtype=object,
        )

    def get_feature_names_out(self, input_features=None):
        return np.array(["words", "chars", "title"], dtype=object)


def _as_text(value: object) -> str:
    """A cell as text: missing values (None, NaN, pd.NA) are ""."""
    return "" if value is None or value is pd.NA or value != value else str(value)


def as_frame(X) -> pd.DataFrame:  # noqa: N803
    """Accept a DataFrame, a list of dicts, or bare strings (taken as designations)."""
    if isinstance(X, pd.DataFrame):
        frame = X
    elif isinstance(X, pd.Series):
        frame = X.to_frame("designation")
    else:
        items = list(X)
        if items and isinstance(items[0], dict):
            frame = pd.DataFrame(items)
        else:
            frame = pd.DataFrame({"designation": items})
    if "designation" not in frame:
        raise ValueError(f"expected a `designation` column, got {list(frame.columns)}")
    return frame
