"""config/quality.yaml (rakuten_mlops.quality.config): typed, loaded strictly, every
mistake refused with the file and the key it is about."""

from __future__ import annotations

import pytest

from rakuten_mlops.quality import drift
from rakuten_mlops.quality.config import QualityConfig, load_config
from rakuten_mlops.quality.errors import QualityError
from rakuten_mlops.quality.job import should_retrain
from rakuten_mlops.settings import project_root

CONFIG = project_root() / "config" / "quality.yaml"


def test_the_shipped_thresholds_load():
    config = load_config(CONFIG)
    assert config.drift.threshold_map == {"psi": 0.2, "js_distance": 0.19, "kl_divergence": 0.1}
    assert config.drift.rule == drift.SampleRule(
        min_current=100, min_reference=100, max_bias_fraction=0.5
    )
    assert config.drift.bins == 10 and config.drift.top_tokens == 30
    assert config.drift.epsilon == 1e-4
    assert config.quality.empty_ratio.model_dump() == {
        "designation": 0.01,
        "description": 0.8,
        "image": None,
    }
    assert config.images.max_images == 300
    assert config.source == str(CONFIG)


def test_the_code_defaults_equal_the_shipped_file():
    shipped = load_config(CONFIG)
    assert QualityConfig(source=shipped.source) == shipped


def test_the_drift_thresholds_agree_for_a_small_shift():
    # KL ~ PSI / 2 and JSD ~ PSI / (8 ln 2): the three thresholds flag the same shifts.
    import math

    t = load_config(CONFIG).drift.threshold_map
    assert t["kl_divergence"] == pytest.approx(t["psi"] / 2)
    assert t["js_distance"] == pytest.approx(math.sqrt(t["psi"] / (8 * math.log(2))), abs=0.001)


@pytest.mark.parametrize(
    "body, message",
    [
        # an unknown key, at each level
        ("drift:\n  binz: 10\n", "drift.binz: unknown key"),
        ("drifts: {}\n", "drifts: unknown section"),
        ("source: elsewhere\n", "source: unknown section"),
        ("quality:\n  empty_ratio: {title: 0.1}\n", "quality.empty_ratio.title: unknown key"),
        (
            "drift:\n  thresholds: {wasserstein: 0.1}\n",
            "drift.thresholds.wasserstein: unknown drift statistic",
        ),
        # a value of the wrong type (strict: not converted)
        ("drift:\n  bins: ten\n", r"drift.bins: Input should be a valid integer \(got 'ten'\)"),
        ("drift:\n  bins: '10'\n", "drift.bins: Input should be a valid integer"),
        ("images:\n  max_images: true\n", "images.max_images: Input should be a valid integer"),
        ("quality:\n  duplicate_ratio: lots\n", "quality.duplicate_ratio: "),
        ("drift: [1, 2]\n", "drift: Input should be a valid dictionary"),
        # a drift threshold without a value (a quality threshold of null means "report only")
        ("drift:\n  thresholds:\n    psi:\n", "drift.thresholds.psi: has no value"),
        ("drift:\n  epsilon:\n", "drift.epsilon: has no value"),
        # out of range
        ("drift:\n  bins: 1\n", "drift.bins: Input should be greater than or equal to 2"),
        ("drift:\n  top_tokens: 5000\n", "drift.top_tokens: Input should be less than or equal"),
        ("drift:\n  thresholds: {psi: -0.2}\n", "drift.thresholds.psi: Input should be greater"),
        ("quality:\n  outlier_ratio: 1.5\n", "quality.outlier_ratio: Input should be less"),
        # not YAML, or not sections
        ("drift: [\n", "not valid YAML"),
        ("- drift\n", "expected sections drift, quality, images"),
    ],
)
def test_mistakes_are_refused_naming_the_file_and_the_key(tmp_path, body, message):
    path = tmp_path / "quality.yaml"
    path.write_text(body)
    with pytest.raises(QualityError, match=message) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert "\n" not in str(raised.value)  # one line, for the CLI


def test_every_mistake_of_a_file_is_named_at_once(tmp_path):
    path = tmp_path / "quality.yaml"
    path.write_text("drift:\n  bins: 1\n  thresholds: {psi: }\nimages:\n  max_imgs: 3\n")
    with pytest.raises(QualityError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "drift.bins" in message and "drift.thresholds.psi" in message
    assert "images.max_imgs: unknown key" in message


def test_a_null_quality_threshold_makes_the_statistic_informational(tmp_path):
    path = tmp_path / "quality.yaml"
    path.write_text("quality:\n  duplicate_ratio: null\n  class_imbalance_ratio: null\n")
    config = load_config(path)
    assert config.quality.duplicate_ratio is None
    assert config.quality.class_imbalance_ratio is None
    assert config.quality.outlier_ratio == 0.15  # the others keep their defaults


def test_empty_sections_keep_the_defaults(tmp_path):
    path = tmp_path / "quality.yaml"
    path.write_text("# nothing changed\ndrift:\n  thresholds:\nquality:\nimages:\n")
    assert load_config(path) == QualityConfig(source=str(path))


def test_the_config_cannot_be_changed_after_loading():
    config = load_config(CONFIG)
    with pytest.raises(ValueError, match="frozen"):
        config.drift.bins = 3  # type: ignore[misc]


def test_a_missing_file_is_an_error_not_silent_defaults(tmp_path):
    with pytest.raises(QualityError, match="thresholds file not found"):
        load_config(tmp_path / "nope.yaml")


def test_partial_files_keep_the_other_defaults(tmp_path):
    path = tmp_path / "quality.yaml"
    path.write_text("drift:\n  thresholds: {psi: 0.3}\nquality:\n  empty_ratio: {image: 0.5}\n")
    config = load_config(path)
    assert config.drift.thresholds.psi == 0.3 and config.drift.thresholds.kl_divergence == 0.1
    assert config.quality.empty_ratio.model_dump() == {
        "designation": 0.01,
        "description": 0.8,
        "image": 0.5,
    }


def test_retraining_is_triggered_only_when_enabled_and_breached():
    breached = [{"breached_features": []}, {"breached_features": ["label"]}]
    assert should_retrain(breached, enabled=True)
    assert not should_retrain(breached, enabled=False)
    assert not should_retrain([{"breached_features": []}], enabled=True)
