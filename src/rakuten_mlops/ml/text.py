"""Product text, the one definition of each step: normalise, stopwords, language guess.

Shared by training (rakuten_mlops.ml.features.TextCleaner), serving (the inference
log's language guess) and the data-quality job. Light on purpose (no scikit-learn, no
NLTK import): the quality job and the API import it on their hot paths.

* `normalise`: HTML entities decoded, tags stripped, NFKC, lower case, accents removed;
* `read_stopwords`: NLTK's stopword lists read straight from the project's copy of the
  corpus zip (what `nltk.corpus.stopwords.words` returns, without importing NLTK);
* `LanguageGuesser`: 'fr', 'de', 'en' or 'unknown' from stopword hits and accents.
"""

from __future__ import annotations

import html
import re
import unicodedata
import zipfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

# The catalogue is mostly French, with German and English products.
DEFAULT_LANGUAGES = ("french", "english", "german")
TEXT_COLUMNS = ("designation", "description")

_TAG = re.compile(r"<[^>]*>")
TOKEN = re.compile(r"\w+")


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
    tokens = TOKEN.findall(normalise(str(text), strip_accents))
    return " ".join(token for token in tokens if token not in stopwords)


def read_stopwords(
    nltk_data_dir: str | Path, languages: Iterable[str] = DEFAULT_LANGUAGES
) -> list[str]:
    """NLTK's stopword lists, in order, first occurrence kept, from `corpora/stopwords.zip`
    under `nltk_data_dir` (the project ships it in config/nltk_data; never downloaded).

    One word per non-blank line, as `nltk.corpus.stopwords.words(language)` reads them,
    without importing NLTK: a task process would spend seconds on it for three lists.
    """
    return list(_read_stopwords(str(Path(nltk_data_dir).resolve()), tuple(languages)))


@lru_cache(maxsize=8)
def _read_stopwords(folder: str, languages: tuple[str, ...]) -> tuple[str, ...]:
    archive_path = Path(folder) / "corpora" / "stopwords.zip"
    if not archive_path.is_file():
        raise FileNotFoundError(
            f"NLTK stopwords corpus not found: expected {archive_path} "
            "(settings.nltk_data_dir; the project ships it in config/nltk_data)"
        )
    words: list[str] = []
    with zipfile.ZipFile(archive_path) as archive:
        for language in languages:
            text = archive.read(f"stopwords/{language}").decode("utf-8")
            words.extend(line for line in text.splitlines() if line.strip())
    return tuple(dict.fromkeys(words))


def stopword_set(nltk_data_dir: str | Path, languages: Iterable[str] = DEFAULT_LANGUAGES):
    """The stopwords of `languages`, lower-cased, as a set (accents kept)."""
    return frozenset(word.lower() for word in read_stopwords(nltk_data_dir, languages))


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


def as_text(value: object) -> str:
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


# --------------------------------------------------------------------------- language

LANGUAGES = {"fr": "french", "de": "german", "en": "english"}
# Letters that, beside stopwords, point at a language.
LETTER_HINTS = {"fr": set("éèêëàâçùûôîïœ"), "de": set("äöüß")}
GUESS_CHARS = 300


class LanguageGuesser:
    """'fr', 'de', 'en' or 'unknown' from stopword hits and accented letters.

    A cheap heuristic for monitoring the mix of languages, not a language identifier:
    short titles without stopwords or accents are 'unknown'. It reads the first
    GUESS_CHARS characters only (a few microseconds instead of a few hundred on long
    descriptions). Without `nltk_data_dir` it guesses from letters alone.
    """

    def __init__(self, nltk_data_dir: str | Path | None = None):
        self.stopwords: dict[str, frozenset[str]] = {}
        if nltk_data_dir is None:
            return
        for code, language in LANGUAGES.items():
            # Both spellings: as written, and without accents (as often typed).
            self.stopwords[code] = frozenset(
                token
                for word in read_stopwords(nltk_data_dir, (language,))
                for form in (word.lower(), normalise(word))
                for token in TOKEN.findall(form)
            )

    def guess(self, text: str) -> str:
        lowered = text[:GUESS_CHARS].lower()
        tokens = TOKEN.findall(lowered)
        scores = {code: 0 for code in LANGUAGES}
        for code, words in self.stopwords.items():
            scores[code] = sum(token in words for token in tokens)
        letters = set(lowered)
        for code, hints in LETTER_HINTS.items():
            scores[code] += 2 * len(letters & hints)
        ranked = sorted(scores.items(), key=lambda item: item[1], reverse=True)
        (best, top), (_, second) = ranked[0], ranked[1]
        return best if top > 0 and top > second else "unknown"
