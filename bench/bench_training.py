"""Benchmark: the full training search on the 57k translated products, next to the seed's.

Prints one JSON object: wall time and peak memory (this process and its workers) per
model family and in total (search, refit and calibration: the whole train stage), the
cross-validated and test weighted F1 of the full profile, the plain TF-IDF + LinearSVC
baseline trained on the same rows, and the same figures for a seed-style search (TF-IDF
limited to 1,000 features, the four families at their default parameters, 3-fold
GridSearchCV, the same rows). Gains on the test split come with a paired-bootstrap 95%
interval. Target: the full train stage under 20 minutes on 2 cores, with the better F1.

The profile's grids are searched both ways in the same run: racing (every candidate of
every family in one successive halving, `search: race`) and family by family (`search:
per_family`, as before racing). Targets of the race: the same winning family, CV weighted
F1 within 0.003 of the per-family winner's, train stage <= 40% of its time
(`race_vs_per_family`; each family's `budget_rows`: the rows each candidate last saw).

    .venv/bin/python bench/bench_training.py            # what `make bench` runs
    BENCH_SEED=0 .venv/bin/python bench/bench_training.py --rows 8000   # a quick check
    BENCH_DATA=rakuten BENCH_SEED=0 .venv/bin/python bench/bench_training.py

Environment: BENCH_DATA (translated | rakuten), BENCH_PROFILE (full), BENCH_SEED
(1: also run the seed-style search), BENCH_LIMIT (as --rows), BENCH_SEARCHES (as
--searches).
Skips (exit 0) when ../shared/data is absent. No stack needed: nothing is logged.
"""

from __future__ import annotations

import argparse
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=int(os.environ.get("BENCH_LIMIT", "0")),
                        help="use a random sample of N products (0: all)")
    parser.add_argument("--searches", default=os.environ.get("BENCH_SEARCHES", "race,per_family"),
                        help="comma-separated: race, per_family (the profile's grids each way)")
    return parser.parse_args(argv)


def train_figures(frame, profile: dict, evaluate) -> tuple[dict, object, object]:
    """One train stage (search, refit, calibration) with the profile, and its figures."""
    from rakuten_mlops.ml.train import train_best

    trained = train_best(frame, profile, report=log)  # what the train stage runs
    result = trained.search
    train_seconds = result.seconds + trained.refit_seconds + trained.calibration_seconds
    test = evaluate(trained.pipeline, frame)
    log(f"{profile['search']}: train stage {train_seconds:.0f}s (refit "
        f"{trained.refit_seconds:.0f}s, calibration {trained.calibration_seconds:.0f}s), "
        f"test weighted F1 {test.f1_weighted:.4f}")
    figures = {
        "search": profile["search"],
        "race": profile.get("race"),
        "n_train": result.n_train,
        "families": {name: family_figures(r) for name, r in result.families.items()},
        "search_seconds": round(result.seconds, 1),
        "refit_seconds": round(trained.refit_seconds, 1),
        "calibration_seconds": round(trained.calibration_seconds, 1),
        "score_temperature": trained.temperature,
        "total_seconds": round(train_seconds, 1),
        "peak_rss_mb": round(result.peak_rss_mb),
        "best_family": result.best.family,
        "best_params": result.best.best_params,
        "cv_f1_weighted": round(result.best.cv_score, 4),
        "test_f1_weighted": round(test.f1_weighted, 4),
        "test_accuracy": round(test.accuracy, 4),
    }
    log(json.dumps(figures, default=str))  # kept even if a later search does not finish
    return figures, test, result


def family_figures(r) -> dict:
    """A family's search; `budget_rows`: the rows each candidate was last scored on."""
    budget = None
    if "n_resources" in r.cv_results:
        last = r.cv_results.groupby(r.cv_results["params"].map(str))["n_resources"].max()
        budget = sorted((int(n) for n in last), reverse=True)
    return {
        "search": r.search,
        "candidates": r.n_candidates,
        "n_fits": r.n_fits,
        "n_resources": r.n_resources or None,
        "budget_rows": budget,
        "cv_f1_weighted": round(r.cv_score, 4),
        "cv_f1_weighted_std": round(r.cv_std, 4),
        "best_params": r.best_params,
        "seconds": round(r.seconds, 1),
        "peak_rss_mb": round(r.peak_rss_mb),
    }


def race_against_per_family(runs: dict[str, dict]) -> dict:
    """The issue's targets: same winning family, CV within 0.003, train stage <= 40%."""
    race, today = runs["race"], runs["per_family"]
    ratio = race["total_seconds"] / today["total_seconds"]
    cv_gap = round(race["cv_f1_weighted"] - today["cv_f1_weighted"], 4)
    same = race["best_family"] == today["best_family"]
    return {
        "train_seconds_ratio": round(ratio, 3),
        "search_seconds_ratio": round(race["search_seconds"] / today["search_seconds"], 3),
        "cv_gap": cv_gap,
        "test_f1_gap": round(race["test_f1_weighted"] - today["test_f1_weighted"], 4),
        "same_winning_family": same,
        "targets_met": same and abs(cv_gap) <= 0.003 and ratio <= 0.40,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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

    profile = load_profile(os.environ.get("BENCH_PROFILE", "full"))
    frame = frame_from_csv(x_csv, y_csv)
    if args.rows:
        frame = frame.sample(n=min(args.rows, len(frame)), random_state=0)
    log(f"{data}: {len(frame)} products {frame['subset'].value_counts().to_dict()}, "
        f"profile {profile['name']}")

    runs, tests, results = {}, {}, {}
    for mode in args.searches.split(","):
        searched = load_profile({**profile, "search": mode,
                                 "race": profile["race"] if mode == "race" else None})
        runs[mode], tests[mode], results[mode] = train_figures(frame, searched, evaluate)
    first = next(iter(runs))
    started = time.perf_counter()
    baseline = baseline_evaluation(frame, profile["train_subsets"])
    baseline_seconds = time.perf_counter() - started
    log(f"baseline test weighted F1 {baseline.f1_weighted:.4f} ({baseline_seconds:.0f}s)")

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
        "searches": runs,
        "target_seconds": TARGET_SECONDS,
        "within_target": {mode: r["total_seconds"] < TARGET_SECONDS for mode, r in runs.items()},
        "baseline_test_f1_weighted": round(baseline.f1_weighted, 4),
        "gain_over_baseline": {mode: gain_figures(f1_gain(test, baseline))
                               for mode, test in tests.items()},
    }
    if {"race", "per_family"} <= set(runs):
        report["race_vs_per_family"] = race_against_per_family(runs)
        log(f"race vs per_family: {report['race_vs_per_family']}")
    if os.environ.get("BENCH_SEED", "1") == "1":
        seed, seed_test = seed_style_search(frame, profile["train_subsets"], profile["n_jobs"])
        report["seed_style"] = seed
        report["gain_over_seed_style"] = gain_figures(f1_gain(tests[first], seed_test))
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
