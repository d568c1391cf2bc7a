"""config/quality.yaml: loaded strictly, and used by the statistics."""

from __future__ import annotations

import pytest

from rakuten_mlops import drift
from rakuten_mlops.monitoring import QualityConfig, QualityError, load_config, should_retrain
from rakuten_mlops.settings import project_root

CONFIG = project_root() / "config" / "quality.yaml"


def test_the_shipped_thresholds_load():
    config = load_config(CONFIG)
    assert config.thresholds == {"psi": 0.2, "js_distance": 0.19, "kl_divergence": 0.1}
    assert config.rule == drift.SampleRule(
        min_current=100, min_reference=100, max_bias_fraction=0.5
    )
    assert config.bins == 10 and config.top_tokens == 30 and config.epsilon == 1e-4
    assert config.empty_ratio == {"designation": 0.01, "description": 0.8, "image": None}
    assert config.source == str(CONFIG)


def test_the_code_defaults_equal_the_shipped_file():
    shipped = load_config(CONFIG)
    assert QualityConfig(source=shipped.source) == shipped


def test_the_drift_thresholds_agree_for_a_small_shift():
    # KL ~ PSI / 2 and JSD ~ PSI / (8 ln 2): the three thresholds flag the same shifts.
    import math

    t = load_config(CONFIG).thresholds
    assert t["kl_divergence"] == pytest.approx(t["psi"] / 2)
    assert t["js_distance"] == pytest.approx(math.sqrt(t["psi"] / (8 * math.log(2))), abs=0.001)


@pytest.mark.parametrize(
    "body, message",
    [
        ("drift:\n  binz: 10\n", "unknown key"),
        ("drifts: {}\n", "unknown section"),
        ("drift:\n  thresholds: {wasserstein: 0.1}\n", "unknown drift statistic"),
        ("drift:\n  bins: 1\n", "bins must be"),
        ("drift:\n  top_tokens: 5000\n", "top_tokens"),
    ],
)
def test_mistakes_are_refused_by_name(tmp_path, body, message):
    path = tmp_path / "quality.yaml"
    path.write_text(body)
    with pytest.raises(QualityError, match=message):
        load_config(path)


def test_a_missing_file_is_an_error_not_silent_defaults(tmp_path):
    with pytest.raises(QualityError, match="thresholds file not found"):
        load_config(tmp_path / "nope.yaml")


def test_partial_files_keep_the_other_defaults(tmp_path):
    path = tmp_path / "quality.yaml"
    path.write_text("drift:\n  thresholds: {psi: 0.3}\nquality:\n  empty_ratio: {image: 0.5}\n")
    config = load_config(path)
    assert config.thresholds["psi"] == 0.3 and config.thresholds["kl_divergence"] == 0.1
    assert config.empty_ratio == {"designation": 0.01, "description": 0.8, "image": 0.5}


def test_retraining_is_triggered_only_when_enabled_and_breached():
    breached = [{"breached_features": []}, {"breached_features": ["label"]}]
    assert should_retrain(breached, enabled=True)
    assert not should_retrain(breached, enabled=False)
    assert not should_retrain([{"breached_features": []}], enabled=True)
