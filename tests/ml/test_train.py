"""Profiles and the cross-validated search, on the real sample (no services needed)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rakuten_mlops.errors import ProfileError
from rakuten_mlops.ml.features import (
    FAMILIES,
    FUSION,
    TREE_FAMILIES,
    build_pipeline,
    pipeline_params,
)
from rakuten_mlops.ml.profile import load_profile
from rakuten_mlops.ml.train import refit, search, training_rows
from tests.support.profiles import TINY_PROFILE


@pytest.mark.parametrize("name", ["quick", "full"])
def test_shipped_profiles_search_every_family_over_a_real_grid(name):
    profile = load_profile(name)
    # Every text family; the image fusion in the profile the sample with images trains.
    assert set(profile["families"]) == set(FAMILIES) | ({FUSION} if name == "quick" else set())
    assert profile["cv_folds"] >= 3
    assert "test" not in profile["train_subsets"]
    for family, spec in profile["families"].items():
        grid = spec["grid"]
        candidates = list(itertools.product(*grid.values()))
        assert len(candidates) >= 2, f"{name}/{family}: one point is not a grid"
        if family in TREE_FAMILIES:
            assert spec["search"] == "halving", f"{name}/{family}: tree families halve"
        # Every key names a real parameter of the family's pipeline.
        pipeline = build_pipeline(family, spec.get("fixed"), profile["features"])
        for values in candidates:
            pipeline.set_params(**pipeline_params(family, dict(zip(grid, values, strict=True))))


def test_the_full_profile_searches_more_than_the_quick_one():
    quick, full = load_profile("quick"), load_profile("full")

    def size(profile, family):
        return len(list(itertools.product(*profile["families"][family]["grid"].values())))

    for family in FAMILIES:
        assert size(full, family) >= size(quick, family)


def test_unknown_profile_and_family_are_refused(tmp_path):
    with pytest.raises(ProfileError, match="known: .*full.*quick"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="families: unknown family 'svm'"):
        load_profile({"families": {"svm": {}}})
    with pytest.raises(ProfileError, match="calibration 'validation' must not be one of"):
        load_profile({"train_subsets": ["train", "validation"], "families": {"logreg": {}}})
    # Errors name the key, nested ones with their path.
    with pytest.raises(ProfileError, match=r"families\.logreg\.serch: Extra inputs"):
        load_profile({"families": {"logreg": {"serch": "grid"}}})
    with pytest.raises(ProfileError, match=r"promotion\.within_noise: Input should be"):
        load_profile({"families": {"logreg": {}}, "promotion": {"within_noise": "maybe"}})


def test_the_shipped_profiles_state_their_promotion_policy():
    for name in ("quick", "full"):
        policy = load_profile(name)["promotion"]
        assert policy["within_noise"] in ("keep", "promote")
        assert 0.5 < policy["confidence"] < 1 and policy["resamples"] >= 100


@pytest.fixture(scope="module")
def tiny_search(sample_frame):
    return search(sample_frame, dict(TINY_PROFILE), report=lambda line: None)


def test_the_train_command_names_an_unknown_profile_without_a_traceback():
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run(
        [sys.executable, "-m", "rakuten_mlops", "train", "--dataset-id", "none",
         "--profile", "no-such-profile"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "train: training profile 'no-such-profile' not found (known: full, quick, smoke)" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr

def test_search_covers_every_family_on_the_training_rows_only(tiny_search, sample_frame):
    assert set(tiny_search.families) == set(FAMILIES)
    assert tiny_search.n_train == (sample_frame["subset"] == "train").sum()
    for result in tiny_search.families.values():
        assert 0.0 < result.cv_score <= 1.0
        assert result.n_candidates == 2
        table = result.cv_results
        assert {"params", "mean_test_score", "std_test_score"} <= set(table.columns)
        if result.search == "halving":
            assert result.n_resources[-1] > result.n_resources[0]
        assert result.seconds > 0 and result.peak_rss_mb > 0
    assert tiny_search.best.cv_score == max(r.cv_score for r in tiny_search.families.values())
    # Linear models win on sparse TF-IDF.
    assert tiny_search.best.family in ("linear_svc", "logreg")


def test_the_best_family_is_refit_and_predicts_the_test_rows(tiny_search, sample_frame):
    from rakuten_mlops.ml.evaluate import evaluate_pipeline as evaluate

    pipeline = refit(sample_frame, tiny_search.best, dict(TINY_PROFILE))
    evaluation = evaluate(pipeline, sample_frame)
    assert evaluation.n_test == (sample_frame["subset"] == "test").sum()
    assert evaluation.f1_weighted > 0.6
    assert evaluation.confusion.sum() == evaluation.n_test


def test_training_rows_never_include_test_rows(sample_frame):
    for name in ("quick", "full"):
        rows = training_rows(sample_frame, load_profile(name))
        assert set(rows["subset"]) == {"train", "validation"}, name
    assert set(training_rows(sample_frame, dict(TINY_PROFILE))["subset"]) == {"train"}


LINEAR_SVC_ONLY = {
    "cv_folds": 3,
    "features": {"word": {"ngram_range": [1, 1]}, "char": {"ngram_range": [2, 3]}},
    "families": {"linear_svc": {"grid": {"C": [0.5, 1.0]}}},
}


def _calibrated(sample_frame, profile):
    """Search, refit and temperature of a LinearSVC-only profile, as the train stage runs them."""
    from rakuten_mlops.ml.train import train_best

    trained = train_best(sample_frame, profile, report=lambda line: None)
    assert trained.calibration_seconds > 0
    return trained.search, trained.pipeline, trained.temperature


def test_out_of_fold_calibration_fits_the_temperature_on_rows_each_model_did_not_learn(
    sample_frame,
):
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    from rakuten_mlops.ml.calibration import fit_temperature
    from rakuten_mlops.ml.train import split_xy

    profile = {
        **LINEAR_SVC_ONLY,
        "train_subsets": ["train", "validation"],
        "calibration": "out_of_fold",
    }
    result, pipeline, temperature = _calibrated(sample_frame, profile)
    assert result.n_train == sample_frame["subset"].isin(["train", "validation"]).sum()
    X, y = split_xy(training_rows(sample_frame, load_profile(profile)))  # noqa: N806
    # Fitted on the rows it scores, the same model looks several times more certain.
    in_sample = fit_temperature(pipeline.decision_function(X), y, pipeline.classes_)
    assert temperature > 2 * in_sample
    # One held-out fold's decision values, from a model of the other folds, agree with it.
    fold_train, fold_held = next(StratifiedKFold(3, shuffle=True, random_state=42).split(X, y))
    model = clone(pipeline).fit(X.iloc[fold_train], y[fold_train])
    held = fit_temperature(model.decision_function(X.iloc[fold_held]), y[fold_held], model.classes_)
    assert held == pytest.approx(temperature, rel=0.35)


def _refitted_folds_temperature(sample_frame, trained, profile, splits):
    """The temperature from the winner fitted again on each of `splits` (nothing recorded)."""
    from rakuten_mlops.ml.calibration import fit_temperature
    from rakuten_mlops.ml.oof import out_of_fold_decisions
    from rakuten_mlops.ml.train import family_pipeline, split_xy

    profile = load_profile(profile)
    X, y = split_xy(training_rows(sample_frame, profile))  # noqa: N806
    best = trained.search.best
    unfitted = family_pipeline(best.family, profile, best.best_params)
    decision, recorded = out_of_fold_decisions(unfitted, X, y, splits(X, y, profile), 2)
    assert recorded == 0
    held_out = ~np.isnan(decision).any(axis=1)
    return fit_temperature(decision[held_out], y[held_out], trained.pipeline.classes_)


@pytest.mark.parametrize("search_mode", ["per_family", "race"])
def test_calibration_reads_the_decision_values_the_search_recorded(sample_frame, search_mode):
    """The search scored the winner on every fold: calibration fits nothing again, and
    its temperature is the one the folds fitted again give."""
    from rakuten_mlops.ml import race
    from rakuten_mlops.ml.train import folds, train_best

    families = {"linear_svc": {"search": "grid", "grid": {"C": [0.5, 1.0]}},
                "logreg": {"search": "grid", "fixed": {"solver": "saga", "max_iter": 5},
                           "grid": {"C": [0.01]}}}
    profile = {**LINEAR_SVC_ONLY, "families": families, "calibration": "out_of_fold",
               "search": search_mode, **({"race": {"factor": 2}} if search_mode == "race" else {})}
    lines = []
    trained = train_best(sample_frame, profile, report=lines.append)
    assert trained.search.best.family == "linear_svc"
    assert "calibration: 3 of 3 folds' decision values were the search's" in lines

    def splits(X, y, loaded):  # noqa: N803
        plain = list(folds(loaded).split(X, y))
        if search_mode == "per_family":
            return plain
        return race.last_rung_splits(plain, loaded["random_state"],
                                     trained.search.best.n_resources[-1], len(y))

    assert trained.temperature == pytest.approx(
        _refitted_folds_temperature(sample_frame, trained, profile, splits), rel=1e-6)


def test_subset_calibration_fits_the_temperature_on_that_subset(sample_frame):
    from rakuten_mlops.ml.calibration import fit_temperature
    from rakuten_mlops.ml.train import split_xy

    profile = {**LINEAR_SVC_ONLY, "train_subsets": ["train"], "calibration": "validation"}
    _, pipeline, temperature = _calibrated(sample_frame, profile)
    X, y = split_xy(sample_frame[sample_frame["subset"] == "validation"])  # noqa: N806
    assert temperature == pytest.approx(
        fit_temperature(pipeline.decision_function(X), y, pipeline.classes_)
    )


def search_workers_running() -> list[str]:
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        # loky's resource tracker ends by itself once the task's process has exited.
        if "loky" in command and "resource_tracker" not in command:
            found.append(f"{child.pid}: {command[:120]}")
    return found


def test_the_train_stage_leaves_no_search_worker_running(sample_frame):
    # The workers would hold the Airflow task's log sockets: its supervisor waits 60 s.
    _calibrated(sample_frame, {**LINEAR_SVC_ONLY, "n_jobs": 2})
    assert search_workers_running() == []


# --------------------------------------------------------------------------- racing

RACE_PROFILE = {**TINY_PROFILE, "name": "tiny-race", "search": "race", "race": {"factor": 3}}


@pytest.fixture(scope="module")
def tiny_race(sample_frame, tmp_path_factory):
    """TINY_PROFILE's families raced, and the joblib cache folder the race filled."""
    cache = tmp_path_factory.mktemp("race_cache")
    return search(sample_frame, dict(RACE_PROFILE), report=lambda line: None,
                  memory=str(cache)), cache


def test_the_race_scores_every_candidate_of_every_family_at_the_first_rung(tiny_race):
    raced, _ = tiny_race
    assert set(raced.families) == set(FAMILIES)
    first_rung = min(min(r.n_resources) for r in raced.families.values())
    for family, result in raced.families.items():
        table = result.cv_results
        assert result.search == "race"
        at_first = table[table["iter"] == 0]
        assert len(at_first) == result.n_candidates == 2, family
        assert set(at_first["n_resources"]) == {first_rung}, family


def test_the_race_stops_losing_families_early_and_gives_each_candidate_its_budget(
    tiny_race, sample_frame
):
    raced, _ = tiny_race
    top_rung = max(max(r.n_resources) for r in raced.families.values())
    # The winner is scored on (nearly) all training rows; at least one family stopped at
    # a rung `factor` times smaller, its every candidate with that budget.
    assert top_rung > 0.99 * raced.n_train
    assert raced.best.n_resources[-1] == top_rung
    stopped = [r for r in raced.families.values() if r.n_resources[-1] < top_rung]
    assert stopped, "no family stopped early"
    for result in stopped:
        assert result.cv_results["n_resources"].max() * 3 <= top_rung
        assert result.cv_score < raced.best.cv_score
    # Budgets: one row per candidate and rung it ran, and its rows.
    budgets = raced.best.cv_results.groupby(raced.best.cv_results["params"].map(str))
    assert budgets["n_resources"].max().max() == top_rung
    assert raced.summary()["best_family"] == raced.best.family == raced.winner


def test_the_race_computes_the_features_once_per_fold_and_rung(tiny_race):
    """Every candidate of every family reads the same cached cleaning and TF-IDF: the
    cache holds one entry per fold and rung for each, plus the tree families' selection."""
    raced, cache = tiny_race
    folds_, rungs_ = raced.cv_folds, len(raced.best.n_resources)
    entries = list(cache.glob("joblib/sklearn/pipeline/*/*/output.pkl"))
    selections = sum(len(raced.families[f].n_resources) for f in TREE_FAMILIES) * folds_
    assert len(entries) == 2 * rungs_ * folds_ + selections


def test_the_race_winner_is_refit_and_scores_like_the_per_family_winner(
    tiny_race, tiny_search, sample_frame
):
    from rakuten_mlops.ml.evaluate import evaluate_pipeline as evaluate

    raced, _ = tiny_race
    assert raced.best.family == tiny_search.best.family
    assert raced.best.cv_score == pytest.approx(tiny_search.best.cv_score, abs=0.01)
    raced_test = evaluate(refit(sample_frame, raced.best, dict(RACE_PROFILE)), sample_frame)
    per_family_test = evaluate(refit(sample_frame, tiny_search.best, dict(TINY_PROFILE)),
                               sample_frame)
    assert raced_test.f1_weighted == pytest.approx(per_family_test.f1_weighted, abs=0.01)


def test_the_full_profile_races_and_a_bad_racing_profile_is_refused():
    full = load_profile("full")
    assert full["search"] == "race" and full["race"]["factor"] >= 2
    assert load_profile("quick")["search"] == "per_family" and load_profile("quick")["race"] is None
    racing = {"search": "race", "families": {"logreg": {}}}
    with pytest.raises(ProfileError, match=r"race\.factor: Input should be greater than or"):
        load_profile({**racing, "race": {"factor": 1}})
    with pytest.raises(ProfileError, match=r"search: Input should be 'per_family' or 'race'"):
        load_profile({**racing, "search": "racing"})
    with pytest.raises(ProfileError, match="race: set only with `search: race`"):
        load_profile({"race": {"factor": 3}, "families": {"logreg": {}}})
    with pytest.raises(ProfileError, match=r"families\.logreg\.features: racing families share"):
        load_profile({**racing, "families": {"logreg": {"features": {"char": None}}}})
    with pytest.raises(ProfileError, match="'clean__max_chars' changes the features all racing"):
        load_profile({**racing, "families": {"logreg": {"grid": {"clean__max_chars": [100]}}}})
