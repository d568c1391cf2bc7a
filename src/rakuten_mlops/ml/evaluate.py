"""Scoring a fitted pipeline once on the held-out test split, and the reference to beat.

Pure functions: a fitted pipeline and a frame in, numbers and a figure out. The test
rows are never used to choose anything; `baseline_pipeline` is the plain word+char
TF-IDF + LinearSVC every model must clearly beat on the same split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import LinearSVC

from rakuten_mlops.errors import EvaluationError
from rakuten_mlops.ml.text import combine
from rakuten_mlops.ml.train import split_xy


@dataclass
class Evaluation:
    f1_weighted: float
    accuracy: float
    f1_macro: float
    n_test: int
    labels: list[int]
    report: dict[str, Any] = field(repr=False)
    confusion: np.ndarray = field(repr=False)
    predict_seconds: float = 0.0
    # Row by row, in the test split's order: what the gain over the baseline resamples.
    truth: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)
    predicted: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), repr=False)

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        return {
            f"{prefix}f1_weighted": self.f1_weighted,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}f1_macro": self.f1_macro,
            f"{prefix}rows": float(self.n_test),
        }

    def report_frame(self, names: dict[int, str] | None = None) -> pd.DataFrame:
        """Per-class precision, recall, F1 and support, with category names."""
        rows = []
        for label in self.labels:
            entry = self.report[str(label)]
            rows.append(
                {
                    "prdtypecode": label,
                    "category": (names or {}).get(label, ""),
                    "precision": entry["precision"],
                    "recall": entry["recall"],
                    "f1": entry["f1-score"],
                    "support": int(entry["support"]),
                }
            )
        return pd.DataFrame(rows)


def evaluate_pipeline(pipeline, frame: pd.DataFrame, subset: str = "test") -> Evaluation:
    """`pipeline` scored on the `subset` rows of `frame`, row by row kept for resampling."""
    rows = frame[frame["subset"] == subset]
    if rows.empty:
        raise EvaluationError(f"no {subset} rows to evaluate on")
    X, y = split_xy(rows)  # noqa: N806 - scikit-learn's naming
    started = time.perf_counter()
    predicted = np.asarray(pipeline.predict(X))
    return score_predictions(y, predicted, time.perf_counter() - started)


def score_predictions(truth, predicted, predict_seconds: float = 0.0) -> Evaluation:
    """The evaluation of `predicted` against `truth` (same rows, same order)."""
    truth = np.asarray(truth, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    if len(truth) == 0 or len(truth) != len(predicted):
        raise EvaluationError(
            f"cannot score {len(predicted)} predictions against {len(truth)} labels"
        )
    labels = sorted(set(truth.tolist()) | set(predicted.tolist()))
    return Evaluation(
        f1_weighted=float(f1_score(truth, predicted, average="weighted")),
        accuracy=float(accuracy_score(truth, predicted)),
        f1_macro=float(f1_score(truth, predicted, average="macro")),
        n_test=len(truth),
        labels=labels,
        report=classification_report(
            truth, predicted, labels=labels, output_dict=True, zero_division=0
        ),
        confusion=confusion_matrix(truth, predicted, labels=labels),
        predict_seconds=predict_seconds,
        truth=truth,
        predicted=predicted,
    )


@dataclass(frozen=True)
class Gain:
    """Weighted F1 of one model minus another's on the same rows, with its interval."""

    f1_weighted: float
    low: float
    high: float

    @property
    def clear(self) -> bool:
        """Better beyond resampling noise: the whole interval is above zero."""
        return self.low > 0

    def __str__(self) -> str:
        return f"{self.f1_weighted:+.4f} (interval {self.low:+.4f} to {self.high:+.4f})"


def f1_gain(
    ours: Evaluation,
    theirs: Evaluation,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Gain:
    """How much `ours` beats `theirs` on the same test rows: the paired bootstrap, with
    its `confidence` percentile interval.

    Each resample draws the test rows with replacement (as multinomial row weights) and
    scores both models on the same draw, so what the two get right together cancels out.
    """
    if not np.array_equal(ours.truth, theirs.truth):
        raise EvaluationError("the two evaluations are not on the same test rows")
    rows = len(ours.truth)
    draws = np.random.default_rng(seed).multinomial(rows, np.full(rows, 1 / rows), resamples)
    gains = resampled_f1_weighted(draws, ours.truth, ours.predicted) - resampled_f1_weighted(
        draws, theirs.truth, theirs.predicted
    )
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(gains, [tail, 100 - tail])
    return Gain(ours.f1_weighted - theirs.f1_weighted, float(low), float(high))


def resampled_f1_weighted(weights: np.ndarray, truth, predicted) -> np.ndarray:
    """Weighted F1 under each row of `weights` (resamples x rows), all at once.

    The same as `f1_score(truth, predicted, average="weighted", sample_weight=w,
    zero_division=0)` for each row w, as three matrix products instead of a thousand calls.
    """
    classes, codes = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
    true_code, predicted_code = codes[: len(truth)], codes[len(truth) :]
    one_hot = np.eye(len(classes))
    support = weights @ one_hot[true_code]
    hits = weights @ (one_hot[true_code] * (true_code == predicted_code)[:, None])
    claimed = weights @ one_hot[predicted_code]
    f1 = np.divide(2 * hits, support + claimed, out=np.zeros_like(hits), where=hits > 0)
    return (support * f1).sum(axis=1) / support.sum(axis=1)


def confusion_figure(evaluation: Evaluation, names: dict[int, str] | None = None, title: str = ""):
    """The row-normalised confusion matrix (recall per true class), counts annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = evaluation.confusion
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)
    size = max(6.0, 0.38 * len(evaluation.labels) + 2)
    # Constrained layout sizes the margins to the tick labels (tight_layout left the
    # longest row labels cut at the figure's left edge).
    figure, axes = plt.subplots(figsize=(size + 4, size), layout="constrained")
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ticks = [
        f"{label} {names[label]}" if names and label in names else str(label)
        for label in evaluation.labels
    ]
    axes.set_xticks(range(len(ticks)), [str(label) for label in evaluation.labels], rotation=90)
    axes.set_yticks(range(len(ticks)), ticks)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            colour = "white" if share[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=6, color=colour)
    axes.set_xlabel("predicted prdtypecode")
    axes.set_ylabel("true prdtypecode")
    axes.set_title(
        title
        or f"test split: weighted F1 {evaluation.f1_weighted:.3f}, "
        f"accuracy {evaluation.accuracy:.3f}, n={evaluation.n_test}"
    )
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    return figure


def baseline_pipeline():
    """The reference: plain word + char TF-IDF and a default LinearSVC on raw text."""
    return Pipeline(
        [
            ("text", FunctionTransformer(_raw_text)),
            (
                "tfidf",
                FeatureUnion(
                    [
                        ("word", TfidfVectorizer()),
                        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5))),
                    ]
                ),
            ),
            ("clf", LinearSVC()),
        ]
    )


def _raw_text(frame: pd.DataFrame) -> np.ndarray:
    return combine(frame).to_numpy(dtype=object)


def baseline_evaluation(
    frame: pd.DataFrame, train_subsets: list[str], subset: str = "test"
) -> Evaluation:
    """`baseline_pipeline` trained on the same training rows, scored on the same split."""
    X, y = split_xy(frame[frame["subset"].isin(train_subsets)])  # noqa: N806
    pipeline = baseline_pipeline().fit(X, y)
    return evaluate_pipeline(pipeline, frame, subset)
