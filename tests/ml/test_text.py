"""Text cleaning: exact outputs on hand-written inputs, and the stopwords' provenance."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from rakuten_mlops.ml.features import TextCleaner
from rakuten_mlops.ml.text import (
    LanguageGuesser,
    clean_text,
    normalise,
    normalised_text,
    read_stopwords,
)


@pytest.fixture(scope="module")
def stop(nltk_dir):
    return TextCleaner(nltk_data_dir=nltk_dir).fit(pd.DataFrame({"designation": ["x"]})).stopwords_


def test_html_entities_are_decoded_and_tags_stripped():
    assert normalise("<b>Caf&eacute;</b><br>cr&egrave;me") == " cafe  creme"
    # Entities escaped twice, as scraped descriptions often are.
    assert normalise("Br&amp;eacute;sil &amp;amp; Co") == "bresil & co"
    assert normalise('<span class="vga_style2">Taille</span>') == " taille "


def test_unicode_is_normalised_and_lower_cased():
    assert normalise("ＰＬＡＹＳＴＡＴＩＯＮ ﬁlm Ⅳ") == "playstation film iv"
    assert normalise("Noël À Paris", strip_accents=False) == "noël à paris"
    assert normalise("Noël À Paris") == "noel a paris"
    assert normalise("Straße") == "straße"  # no decomposition: stays as written


def test_stopwords_of_the_three_languages_are_removed(stop):
    assert clean_text("Le Livre de la Cuisine", stop) == "livre cuisine"
    assert clean_text("Der Hund und die Katze", stop) == "hund katze"
    assert clean_text("The Book of the Dead", stop) == "book dead"


def test_digits_and_accents_inside_words_are_handled(stop):
    assert clean_text("Journal Des Arts N° 133 Du 28/09/2001 - L'Hiver Éternel", stop) == (
        "journal arts 133 28 09 2001 hiver eternel"
    )
    # Stopwords are normalised like the text: "été" (been, and summer) is one of them.
    assert clean_text("Robe d'Été", stop) == "robe"


def test_missing_text_is_empty():
    assert clean_text(None) == ""
    assert clean_text(float("nan")) == ""
    assert normalised_text(None) == ""


def test_cleaning_is_idempotent(stop):
    text = "<p>Lot de 3 Peluches &quot;Disney&quot; - Mickey &amp; Minnie pour les enfants</p>"
    once = clean_text(text, stop)
    assert clean_text(once, stop) == once
    assert once == "lot 3 peluches disney mickey minnie enfants"


def test_stopwords_come_from_the_projects_own_corpus(nltk_dir, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("no download at run time"))
    words = read_stopwords(nltk_dir)
    assert {"le", "der", "the", "und", "pour"} <= set(words)
    assert len(words) > 450  # french 157 + german 232 + english 179, minus duplicates


def test_the_stopword_reader_reads_what_nltk_reads(nltk_dir, monkeypatch):
    """The one reader opens the corpus zip itself; NLTK's own reader agrees word for word."""
    import nltk
    from nltk.corpus import stopwords

    monkeypatch.setattr(nltk.data, "path", [nltk_dir])
    for language in ("french", "english", "german"):
        assert read_stopwords(nltk_dir, (language,)) == stopwords.words(language)


def test_one_language_guesser_for_serving_and_the_quality_job(nltk_dir):
    guesser = LanguageGuesser(nltk_dir)
    assert guesser.guess("Le livre de la cuisine pour les enfants") == "fr"
    assert guesser.guess("Das Buch für die Kinder und der Hund") == "de"
    assert guesser.guess("The book for the kids and their dog") == "en"
    assert guesser.guess("PS4 1To") == "unknown"
    # Without stopwords it still reads accents: the API's fallback when the corpus is gone.
    assert LanguageGuesser().guess("Größe") == "de"
    assert LanguageGuesser().guess("PS4 neuf") == "unknown"


def test_a_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpora/stopwords.zip"):
        read_stopwords(tmp_path)


def test_the_cleaner_outputs_three_views(nltk_dir):
    frame = pd.DataFrame(
        {
            "designation": ["Le Petit Prince", "Console PS4"],
            "description": ["<p>Un livre pour les enfants.</p>", None],
        }
    )
    views = TextCleaner(nltk_data_dir=nltk_dir, max_chars=20).fit(frame).transform(frame)
    assert list(views.columns) == ["words", "chars", "title"]
    assert views["words"].tolist() == ["petit prince livre enfants", "console ps4"]
    assert views["chars"].tolist() == ["le petit prince un l", "console ps4"]
    assert views["title"].tolist() == ["le petit prince", "console ps4"]


def test_the_fitted_cleaner_needs_no_corpus_and_accepts_plain_inputs(nltk_dir, tmp_path):
    frame = pd.DataFrame({"designation": ["Le Petit Prince"], "description": [np.nan]})
    cleaner = pickle.loads(pickle.dumps(TextCleaner(nltk_data_dir=nltk_dir).fit(frame)))
    cleaner.nltk_data_dir = str(tmp_path)  # nothing there: transform must not read it
    expected = cleaner.transform(frame)
    pd.testing.assert_frame_equal(cleaner.transform(["Le Petit Prince"]), expected)
    pd.testing.assert_frame_equal(
        cleaner.transform([{"designation": "Le Petit Prince", "description": None}]), expected
    )
    with pytest.raises(ValueError, match="designation"):
        cleaner.transform(pd.DataFrame({"title": ["x"]}))


def test_the_cleaners_views_are_the_pure_functions_on_every_real_product(nltk_dir, sample_frame):
    from rakuten_mlops.ml.text import combine

    cleaner = TextCleaner(nltk_data_dir=nltk_dir, max_chars=300).fit(sample_frame)
    views = cleaner.transform(sample_frame)
    texts = combine(sample_frame)
    stop = cleaner.stopwords_
    assert views["words"].tolist() == [clean_text(text, stop) for text in texts]
    assert views["chars"].tolist() == [normalised_text(text)[:300] for text in texts]
    assert views["title"].tolist() == [normalised_text(t) for t in sample_frame["designation"]]
