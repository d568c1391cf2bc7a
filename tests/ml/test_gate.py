"""The promotion gate decides on paired-bootstrap intervals, as its policy says.

The cases are real models trained on the shipped sample and scored on its test rows:
a word+char TF-IDF LinearSVC ("good", C=1), the same with C=0.5 (within noise of it),
a five-tree forest on 200 word features ("weak"), and the plain baseline. The pure
decision is checked on their evaluations; then the promote stage runs end to end against
the real MLflow and PostgreSQL on the session's runs trained by the stages
(tests/ml/conftest.py: a model worse than the baseline, then a first champion) and each
decision is found there with its interval.
"""

from __future__ import annotations

import pytest

from rakuten_mlops.ml.evaluate import baseline_evaluation, evaluate_pipeline, f1_gain
from rakuten_mlops.ml.profile import PromotionPolicy, load_profile
from rakuten_mlops.ml.promotion import (
    CLEARLY_BETTER,
    CLEARLY_WORSE,
    FIRST,
    WITHIN_NOISE,
    WORSE_THAN_BASELINE,
    compare,
)
from rakuten_mlops.ml.train import family_pipeline, split_xy
from tests.support.ml import private_model

TRAIN_SUBSETS = ["train", "validation"]
GOOD = {
    "name": "gate-good",
    "cv_folds": 2,
    "train_subsets": TRAIN_SUBSETS,
    "calibration": "out_of_fold",
    "features": {"word": {"ngram_range": [1, 2]}, "char": {"ngram_range": [2, 4], "min_df": 2}},
    "families": {"linear_svc": {"grid": {"C": [1.0]}}},
}
WEAK = {
    "name": "gate-weak",
    "cv_folds": 2,
    "train_subsets": TRAIN_SUBSETS,
    "calibration": "out_of_fold",
    "features": {"word": {"ngram_range": [1, 1]}, "char": None},
    "families": {
        "random_forest": {
            "select_k": 200,
            "fixed": {"n_estimators": 5, "max_depth": 4},
            "grid": {"min_samples_leaf": [1]},
        }
    },
}
KEEP = PromotionPolicy()  # the default: within noise, the champion stays
PROMOTE = PromotionPolicy(within_noise="promote")


def _fitted_evaluation(frame, profile: dict, params: dict | None = None):
    profile = load_profile(profile)
    family = next(iter(profile["families"]))
    pipeline = family_pipeline(family, profile, params)
    X, y = split_xy(frame[frame["subset"].isin(profile["train_subsets"])])  # noqa: N806
    return evaluate_pipeline(pipeline.fit(X, y), frame)


@pytest.fixture(scope="module")
def scored(sample_frame):
    """Evaluations of the real models on the sample's test rows."""
    return {
        "good": _fitted_evaluation(sample_frame, GOOD, {"C": 1.0}),
        "good_c05": _fitted_evaluation(sample_frame, GOOD, {"C": 0.5}),
        "weak": _fitted_evaluation(sample_frame, WEAK),
        "baseline": baseline_evaluation(sample_frame, TRAIN_SUBSETS),
    }


def test_the_default_policy_keeps_the_champion_within_noise():
    assert KEEP.within_noise == "keep" and KEEP.confidence == 0.95 and KEEP.resamples == 1000


def test_clearly_better_is_promoted(scored):
    decision = compare(scored["good"], scored["weak"], scored["baseline"], KEEP)
    assert (decision.promote, decision.outcome) == (True, CLEARLY_BETTER)
    assert decision.vs_champion.low > 0
    assert decision.vs_champion == f1_gain(scored["good"], scored["weak"])
    assert str(decision.vs_champion) in decision.reason


def test_clearly_worse_keeps_the_champion(scored):
    decision = compare(scored["weak"], scored["good"], None, PROMOTE)
    assert (decision.promote, decision.outcome) == (False, CLEARLY_WORSE)
    assert decision.vs_champion.high < 0


def test_within_noise_gets_the_configured_outcome(scored):
    candidate, champion = scored["good"], scored["good_c05"]
    gain = f1_gain(candidate, champion)
    # The case is what it claims: better on the point estimate, but not beyond noise.
    assert gain.f1_weighted > 0 and gain.low <= 0 <= gain.high
    kept = compare(candidate, champion, scored["baseline"], KEEP)
    promoted = compare(candidate, champion, scored["baseline"], PROMOTE)
    assert (kept.promote, kept.outcome) == (False, WITHIN_NOISE)
    assert (promoted.promote, promoted.outcome) == (True, WITHIN_NOISE)
    assert "within_noise=keep" in kept.reason and "within_noise=promote" in promoted.reason
    assert kept.numbers() == promoted.numbers()


def test_worse_than_the_baseline_is_never_promoted_not_even_first(scored):
    first = compare(scored["weak"], None, scored["baseline"], PROMOTE)
    assert (first.promote, first.outcome) == (False, WORSE_THAN_BASELINE)
    assert first.vs_baseline.high < 0 and first.vs_champion is None
    # Even against a champion it beats clearly.
    worse_champion = scored["weak"]
    assert compare(scored["weak"], worse_champion, scored["baseline"], PROMOTE).outcome == (
        WORSE_THAN_BASELINE
    )


def test_a_first_model_not_clearly_worse_than_the_baseline_is_promoted(scored):
    decision = compare(scored["good"], None, scored["baseline"], KEEP)
    assert (decision.promote, decision.outcome) == (True, FIRST)
    assert decision.vs_baseline.low <= 0 <= decision.vs_baseline.high or decision.vs_baseline.clear
    assert set(decision.numbers()) == {"gain_vs_baseline", "gain_vs_baseline_low",
                                       "gain_vs_baseline_high"}


def test_a_stricter_confidence_widens_the_interval(scored):
    wide = compare(scored["good"], scored["good_c05"], None, PromotionPolicy(confidence=0.99))
    narrow = compare(scored["good"], scored["good_c05"], None, KEEP)
    assert wide.vs_champion.low < narrow.vs_champion.low
    assert wide.vs_champion.high > narrow.vs_champion.high


# ------------------------------------------------------------------ recorded, end to end


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def gate_settings(stack, settings, shared_dataset, tmp_path_factory):
    """A model name of the test's own, deleted with its records afterwards; the runs it
    promotes are the session's (tests/ml/conftest.py), on the shared dataset."""
    folder = tmp_path_factory.mktemp("gate_settings")
    processed = shared_dataset.settings.processed_data_dir
    with private_model(settings, folder, "test-gate", processed) as own:
        yield own


def _recorded(gate_settings, version: str):
    from rakuten_mlops.storage import connect

    with connect(gate_settings) as conn:
        return conn.execute(
            "SELECT alias, promoted, gate_outcome, gain_vs_champion, gain_vs_champion_low,"
            " gain_vs_champion_high, gain_vs_baseline, gain_vs_baseline_low,"
            " gain_vs_baseline_high, reason FROM model_promotions"
            " WHERE model_name = %s AND version = %s",
            (gate_settings.model_name, version),
        ).fetchall()


@pytest.mark.stack
def test_decisions_are_recorded_with_their_intervals(gate_settings, worse_run, tiny_run):
    from rakuten_mlops.ml import registry
    from rakuten_mlops.ml.stages import promote

    client = registry.client(gate_settings)
    name = gate_settings.model_name

    # 1. Worse than the baseline (a five-tree forest), with no champion yet: not promoted.
    weak_run = worse_run
    weak = promote(gate_settings, weak_run, export=False)
    assert (weak.promoted, weak.alias, weak.gate_outcome) == (
        False, "challenger", WORSE_THAN_BASELINE)
    assert registry.champion(gate_settings) is None
    run = client.get_run(weak_run)
    assert run.data.tags["gate_outcome"] == WORSE_THAN_BASELINE
    assert run.data.metrics["gate_gain_vs_baseline_high"] == pytest.approx(
        weak.gain_vs_baseline_high) and weak.gain_vs_baseline_high < 0
    ((alias, promoted, outcome, *numbers, reason),) = _recorded(gate_settings, weak.version)
    assert (alias, promoted, outcome) == ("challenger", False, WORSE_THAN_BASELINE)
    assert numbers[:3] == [None, None, None]  # no champion to compare with
    assert numbers[3:] == pytest.approx(
        [weak.gain_vs_baseline, weak.gain_vs_baseline_low, weak.gain_vs_baseline_high])
    assert reason == weak.reason

    # 2. A good model (every family searched, a linear one wins) is the first champion.
    good_run, _ = tiny_run
    good = promote(gate_settings, good_run, export=False)
    assert (good.promoted, good.alias, good.gate_outcome) == (True, "champion", FIRST)
    assert registry.champion(gate_settings).version == good.version

    assert len(client.search_model_versions(f"name='{name}'")) == 2
    ((alias, promoted, outcome, *numbers, _),) = _recorded(gate_settings, good.version)
    assert (alias, promoted, outcome) == ("champion", True, FIRST)
    assert numbers[:3] == [None, None, None]
    assert numbers[3:] == pytest.approx(
        [good.gain_vs_baseline, good.gain_vs_baseline_low, good.gain_vs_baseline_high])
    assert good.gain_vs_baseline_high >= 0  # not clearly worse than the baseline
