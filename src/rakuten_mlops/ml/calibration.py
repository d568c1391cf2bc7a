"""Scores as probabilities for a margin classifier: softmax with a fitted temperature.

Pure: arrays in, numbers out. Training fits the temperature on decision values of rows
the model did not learn (rakuten_mlops.ml.train.score_temperature) and logs it as
`score_temperature`; serving reads it back (`temperature_of`) and applies `softmax`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar


def softmax(scores: np.ndarray) -> np.ndarray:
    if scores.ndim == 1:  # binary decision_function: score of the positive class
        scores = np.column_stack([-scores, scores])
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(decision: np.ndarray, labels: np.ndarray, classes) -> float:
    """The temperature T minimising the log-loss of softmax(decision / T) on held-out rows.

    Temperature scaling (Guo et al., 2017): one parameter, so it calibrates the scores
    of a margin classifier (LinearSVC) without changing its ranking. `decision` is the
    model's decision_function on rows it was not fitted on, `labels` their classes.
    For the training pipeline to call and log as `score_temperature`.
    """
    decision = np.asarray(decision, dtype=float)
    index = {code: i for i, code in enumerate(classes)}
    truth = np.array([index[label] for label in labels])

    def log_loss(log_t: float) -> float:
        scaled = decision / np.exp(log_t)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(truth)), truth]))

    result = minimize_scalar(log_loss, bounds=(-6.0, 6.0), method="bounded")
    return float(np.exp(result.x))


def temperature_of(*sources: dict) -> float | None:
    for source in sources:
        value = source.get("score_temperature")
        if value is not None:
            try:
                temperature = float(value)
            except (TypeError, ValueError):
                continue
            if temperature > 0 and np.isfinite(temperature):
                return temperature
    return None
