"""Benchmark: the full training search on the 57k translated products, next to the seed's.

Prints one JSON object: wall time and peak memory (this process and its workers) per
model family and in total (search, refit and calibration: the whole train stage), the
cross-validated and test weighted F1 of the full profile, the plain TF-IDF + LinearSVC
baseline trained on the same rows, and the same figures for a seed-style search (TF-IDF
limited to 1,000 features, the four families at their default parameters, 3-fold
GridSearchCV, the same rows). Gains on the test split come with a paired-bootstrap 95%
interval. Target: the full train stage under 20 minutes on 2 cores, with the better F1.

    .venv/bin/python bench/bench_training.py            # what `make bench` runs
    BENCH_DATA=rakuten BENCH_SEED=0 .venv/bin/python bench/bench_training.py

Environment: BENCH_DATA (translated | rakuten), BENCH_PROFILE (full), BENCH_SEED
(1: also run the seed-style search), BENCH_LIMIT (use only N products: quick checks).
Skips (exit 0) when ../shared/data is absent. No stack needed: nothing is logged.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "translated": ("translated/X_train_translated.csv", "translated/Y_train_translated.csv"),
    "rakuten": ("rakuten/X_train_sample.csv", "rakuten/Y_train_sample.csv"),
}
TARGET_SECONDS = 20 * 60
SEED_FOLDS = 3


def log(line: str) -> None:
    print(f"[bench_training] {line}", file=sys.stderr, flush=True)


def seed_style_search(frame, train_subsets: list[str], n_jobs: int):
    """What the seed projects ran: 1,000 TF-IDF features, each family at its defaults.

    Its figures, and the test evaluation of its best family."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import LinearSVC
    from xgboost import XGBClassifier

    from rakuten_mlops.ml.evaluate import _raw_text
    from rakuten_mlops.ml.evaluate import evaluate_pipeline as evaluate
    from rakuten_mlops.ml.features import LabelEncodedClassifier
    from rakuten_mlops.ml.train import PeakMemory, split_xy

    families = {
        "logreg": LogisticRegression(max_iter=1000),
        "linear_svc": LinearSVC(),
        "random_forest": RandomForestClassifier(n_jobs=1, random_state=42),
        "xgboost": LabelEncodedClassifier(XGBClassifier(n_jobs=1, random_state=42)),
    }
    X, y = split_xy(frame[frame["subset"].isin(train_subsets)])  # noqa: N806
    cv = StratifiedKFold(SEED_FOLDS, shuffle=True, random_state=42)
    results, fitted = {}, {}
    started_all = time.perf_counter()
    with PeakMemory() as total_peak:
        for name, estimator in families.items():
            pipeline = Pipeline([
                ("text", FunctionTransformer(_raw_text)),
                ("tfidf", TfidfVectorizer(max_features=1000)),
                ("clf", estimator),
            ])
            searcher = GridSearchCV(pipeline, {}, scoring="f1_weighted", cv=cv, n_jobs=n_jobs)
            log(f"seed-style {name}")
            with PeakMemory() as peak:
                started = time.perf_counter()
                searcher.fit(X, y)
                seconds = time.perf_counter() - started
            results[name] = {
                "cv_f1_weighted": round(float(searcher.best_score_), 4),
                "seconds": round(seconds, 1),
                "peak_rss_mb": round(peak.mb),
            }
            fitted[name] = searcher.best_estimator_
            log(f"  {results[name]}")
    best = max(results, key=lambda n: results[n]["cv_f1_weighted"])
    test = evaluate(fitted[best], frame)
    return {
        "families": results,
        "seconds": round(time.perf_counter() - started_all, 1),
        "peak_rss_mb": round(total_peak.mb),
        "best_family": best,
        "cv_f1_weighted": results[best]["cv_f1_weighted"],
        "test_f1_weighted": round(test.f1_weighted, 4),
        "test_accuracy": round(test.accuracy, 4),
    }, test


def gain_figures(gain) -> dict:
    return {
        "f1_weighted": round(gain.f1_weighted, 4),
        "interval_95": [round(gain.low, 4), round(gain.high, 4)],
        "clear": gain.clear,
    }


def main() -> int:
    data = os.environ.get("BENCH_DATA", "translated")
    if not SHARED_DATA.is_dir():
        print(json.dumps({"benchmark": "training", "skipped": f"{SHARED_DATA} is absent: "
                          "no shared data on this machine, nothing to measure"}))
        return 0
    x_csv, y_csv = (SHARED_DATA / part for part in DATASETS[data])
    if not x_csv.is_file():
        print(json.dumps({"benchmark": "training", "skipped": f"{x_csv} is absent"}))
        return 0
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the search's worker processes too
    from rakuten_mlops.ml.dataset import frame_from_csv
    from rakuten_mlops.ml.evaluate import baseline_evaluation, f1_gain
    from rakuten_mlops.ml.evaluate import evaluate_pipeline as evaluate
    from rakuten_mlops.ml.profile import load_profile
    from rakuten_mlops.ml.train import train_best

    profile = load_profile(os.environ.get("BENCH_PROFILE", "full"))
    frame = frame_from_csv(x_csv, y_csv)
    if limit := int(os.environ.get("BENCH_LIMIT", "0")):
        frame = frame.sample(n=min(limit, len(frame)), random_state=0)
    log(f"{data}: {len(frame)} products {frame['subset'].value_counts().to_dict()}, "
        f"profile {profile['name']}")

    trained = train_best(frame, profile, report=log)  # what the train stage runs
    result, refit_seconds, calibration_seconds = (
        trained.search, trained.refit_seconds, trained.calibration_seconds)
    train_seconds = result.seconds + refit_seconds + calibration_seconds
    test = evaluate(trained.pipeline, frame)
    log(f"refit {refit_seconds:.0f}s, calibration {calibration_seconds:.0f}s, "
        f"test weighted F1 {test.f1_weighted:.4f}")
    started = time.perf_counter()
    baseline = baseline_evaluation(frame, profile["train_subsets"])
    baseline_seconds = time.perf_counter() - started
    gain = f1_gain(test, baseline)
    log(f"baseline test weighted F1 {baseline.f1_weighted:.4f} ({baseline_seconds:.0f}s); "
        f"gain {gain}")

    report = {
        "benchmark": "training",
        "data": data,
        "products": len(frame),
        "subsets": {k: int(v) for k, v in frame["subset"].value_counts().items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "profile": profile["name"],
        "cv_folds": profile["cv_folds"],
        "train_subsets": profile["train_subsets"],
        "n_train": result.n_train,
        "families": {
            name: {
                "search": r.search,
                "candidates": r.n_candidates,
                "n_resources": r.n_resources or None,
                "cv_f1_weighted": round(r.cv_score, 4),
                "cv_f1_weighted_std": round(r.cv_std, 4),
                "best_params": r.best_params,
                "seconds": round(r.seconds, 1),
                "peak_rss_mb": round(r.peak_rss_mb),
            }
            for name, r in result.families.items()
        },
        "search_seconds": round(result.seconds, 1),
        "refit_seconds": round(refit_seconds, 1),
        "calibration": profile["calibration"],
        "calibration_seconds": round(calibration_seconds, 1),
        "score_temperature": trained.temperature,
        "total_seconds": round(train_seconds, 1),
        "peak_rss_mb": round(result.peak_rss_mb),
        "target_seconds": TARGET_SECONDS,
        "within_target": train_seconds < TARGET_SECONDS,
        "best_family": result.best.family,
        "best_params": result.best.best_params,
        "cv_f1_weighted": round(result.best.cv_score, 4),
        "test_f1_weighted": round(test.f1_weighted, 4),
        "test_accuracy": round(test.accuracy, 4),
        "baseline_test_f1_weighted": round(baseline.f1_weighted, 4),
        "gain_over_baseline": gain_figures(gain),
    }
    if os.environ.get("BENCH_SEED", "1") == "1":
        seed, seed_test = seed_style_search(frame, profile["train_subsets"], profile["n_jobs"])
        report["seed_style"] = seed
        report["gain_over_seed_style"] = gain_figures(f1_gain(test, seed_test))
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
