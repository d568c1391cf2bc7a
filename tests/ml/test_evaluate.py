"""Test-split scoring and the gain over the plain baseline (no services needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from rakuten_mlops.errors import EvaluationError
from rakuten_mlops.ml.evaluate import (
    Evaluation,
    baseline_evaluation,
    confusion_figure,
    evaluate_pipeline,
    f1_gain,
    resampled_f1_weighted,
)

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "figures"


def _evaluation(truth, predicted) -> Evaluation:
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return Evaluation(
        f1_weighted=float(f1_score(truth, predicted, average="weighted")),
        accuracy=float(np.mean(truth == predicted)),
        f1_macro=float(f1_score(truth, predicted, average="macro")),
        n_test=len(truth),
        labels=sorted(set(truth) | set(predicted)),
        report={},
        confusion=np.zeros((0, 0)),
        truth=truth,
        predicted=predicted,
    )


def test_resampled_f1_is_sklearns_weighted_f1_under_each_draw():
    rng = np.random.default_rng(0)
    truth = rng.choice([10, 40, 50, 2583], 200, p=[0.1, 0.2, 0.3, 0.4])
    predicted = np.where(rng.random(200) < 0.6, truth, rng.choice([10, 40, 60], 200))
    draws = rng.multinomial(200, np.full(200, 1 / 200), 5)
    expected = [
        f1_score(truth, predicted, average="weighted", sample_weight=w, zero_division=0)
        for w in draws
    ]
    assert resampled_f1_weighted(draws, truth, predicted) == pytest.approx(expected, abs=1e-12)
    ones = np.ones((1, 200))
    assert resampled_f1_weighted(ones, truth, predicted)[0] == pytest.approx(
        f1_score(truth, predicted, average="weighted")
    )


def test_a_model_against_itself_gains_nothing():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 5, 400)
    predicted = np.where(rng.random(400) < 0.7, truth, rng.integers(0, 5, 400))
    gain = f1_gain(_evaluation(truth, predicted), _evaluation(truth, predicted))
    assert (gain.f1_weighted, gain.low, gain.high) == (0.0, 0.0, 0.0)
    assert not gain.clear


def test_the_gain_is_the_f1_difference_and_its_interval_narrows_with_more_rows():
    rng = np.random.default_rng(2)

    def pair(rows):
        truth = rng.integers(0, 8, rows)
        noise = rng.integers(0, 8, rows)
        draw = rng.random(rows)
        ours = np.where(draw < 0.80, truth, noise)
        theirs = np.where(draw < 0.77, truth, noise)  # wrong on 3% more of the same rows
        return _evaluation(truth, ours), _evaluation(truth, theirs)

    few, many = (f1_gain(*pair(rows)) for rows in (300, 9000))
    ours, theirs = pair(500)
    gain = f1_gain(ours, theirs)
    assert gain.f1_weighted == pytest.approx(ours.f1_weighted - theirs.f1_weighted)
    assert gain.low < gain.f1_weighted < gain.high
    assert many.high - many.low < (few.high - few.low) / 3
    assert many.clear and many.low > 0.01


def test_a_noisy_lead_is_not_clear():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 8, 300)
    ours = np.where(rng.random(300) < 0.75, truth, rng.integers(0, 8, 300))
    theirs = np.where(rng.random(300) < 0.74, truth, rng.integers(0, 8, 300))  # independent errors
    gain = f1_gain(_evaluation(truth, ours), _evaluation(truth, theirs))
    assert gain.low < 0 < gain.high and not gain.clear


def test_evaluations_on_different_rows_are_refused():
    one = _evaluation([1, 2, 3], [1, 2, 2])
    other = _evaluation([1, 2, 2], [1, 2, 2])
    with pytest.raises(EvaluationError, match="not on the same test rows"):
        f1_gain(one, other)


def test_the_baseline_is_scored_on_the_same_test_rows(sample_frame):
    baseline = baseline_evaluation(sample_frame, ["train", "validation"])
    assert baseline.n_test == (sample_frame["subset"] == "test").sum()
    assert 0.5 < baseline.f1_weighted < 0.9
    again = evaluate_pipeline(_Constant(int(baseline.truth[0])), sample_frame)
    assert np.array_equal(again.truth, baseline.truth)  # same rows, same order
    gain = f1_gain(baseline, again)
    assert gain.clear  # a real model clearly beats predicting one class


class _Constant:
    def __init__(self, label: int):
        self.label = label

    def predict(self, X):  # noqa: N803 - scikit-learn's naming
        return np.full(len(X), self.label)

CATEGORY_NAMES = ROOT / "raw_data" / "category_names.csv"


def test_the_confusion_matrix_shows_every_label_whole():
    """All 27 challenge classes with their full names: every tick label is drawn inside
    the saved image (none cut at an edge). The PNG is kept for a person to look at."""
    import pandas as pd

    names = pd.read_csv(CATEGORY_NAMES).set_index("prdtypecode")["category"].to_dict()
    labels = sorted(names)
    confusion = np.eye(len(labels), dtype=int) * 50 + 1
    evaluation = Evaluation(0.9, 0.9, 0.9, int(confusion.sum()), labels, {}, confusion)
    figure = confusion_figure(evaluation, names)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUTPUT / "confusion_matrix.png")  # draws it, as mlflow.log_figure does

    axes = figure.axes[0]
    page = figure.bbox
    rows = [label.get_text() for label in axes.get_yticklabels()]
    assert rows == [f"{code} {names[code]}" for code in labels]
    for label in [*axes.get_yticklabels(), *axes.get_xticklabels()]:
        box = label.get_window_extent()
        inside = box.x0 >= page.x0 and box.x1 <= page.x1 and box.y0 >= page.y0 and box.y1 <= page.y1
        assert inside, f"tick label {label.get_text()!r} is cut at the image's edge: {box}"
