"""config/quality.yaml, typed: the thresholds, bins and sample sizes of the data-quality job.

The file has three sections, each a pydantic model below (defaults = the shipped file, a
test holds them equal): `drift`, `quality`, `images`. A key left out keeps its default;
an unknown key, a value of the wrong type (strict: `bins: "10"` is refused, not
converted), one out of range or a drift threshold without a value is refused with a
`QualityError` naming the file and the key (`drift.thresholds.psi: has no value`).
A quality threshold of null makes its statistic informational (reported, never a breach).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rakuten_mlops.quality.checks import DEFAULT_IQR_K
from rakuten_mlops.quality.drift import DEFAULT_BINS, DEFAULT_EPS, DEFAULT_THRESHOLDS, SampleRule
from rakuten_mlops.quality.errors import QualityError
from rakuten_mlops.quality.signals import TOKENS_KEPT
from rakuten_mlops.settings import Settings

Ratio = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _empty_mapping(cls, value: Any, info) -> Any:
        # `thresholds:` or `empty_ratio:` with only comments under it is YAML null.
        if value is None and isinstance(cls.model_fields[info.field_name].default, BaseModel):
            return {}
        return value


class DriftThresholds(_Section):
    """A window drifts on a feature when a statistic reaches its threshold (drift.py)."""

    psi: float = Field(DEFAULT_THRESHOLDS["psi"], gt=0)
    kl_divergence: float = Field(DEFAULT_THRESHOLDS["kl_divergence"], gt=0)
    js_distance: float = Field(DEFAULT_THRESHOLDS["js_distance"], gt=0, le=1)


class DriftConfig(_Section):
    bins: int = Field(DEFAULT_BINS, ge=2, le=100)
    epsilon: float = Field(DEFAULT_EPS, gt=0, lt=0.01)
    top_tokens: int = Field(30, ge=1, le=TOKENS_KEPT)
    thresholds: DriftThresholds = DriftThresholds()
    min_current: int = Field(100, ge=1)
    min_reference: int = Field(100, ge=1)
    max_bias_fraction: float = Field(0.5, gt=0)

    @property
    def rule(self) -> SampleRule:
        return SampleRule(self.min_current, self.min_reference, self.max_bias_fraction)

    @property
    def threshold_map(self) -> dict[str, float]:
        """metric -> threshold, in drift.METRICS order (the order of the result rows)."""
        return self.thresholds.model_dump()


class EmptyRatio(_Section):
    """Max share of missing/blank values per field (null: report only)."""

    designation: Ratio | None = 0.01
    description: Ratio | None = 0.8
    image: Ratio | None = None


class ChecksConfig(_Section):
    """The `quality` section: statistics of the window itself (checks.py)."""

    min_rows: int = Field(100, ge=1)
    empty_ratio: EmptyRatio = EmptyRatio()
    duplicate_ratio: Ratio | None = 0.05
    outlier_iqr_k: float = Field(DEFAULT_IQR_K, gt=0)
    outlier_ratio: Ratio | None = 0.15
    class_imbalance_ratio: Annotated[float, Field(ge=1)] | None = 50.0
    emptiness_association_margin: Ratio | None = 0.25


class ImagesConfig(_Section):
    max_images: int = Field(300, ge=0)  # images per sample whose brightness is measured


class QualityConfig(_Section):
    drift: DriftConfig = DriftConfig()
    quality: ChecksConfig = ChecksConfig()
    images: ImagesConfig = ImagesConfig()
    source: str = "defaults"  # the file it was read from (not a key of the file)


def load_config(path: str | Path) -> QualityConfig:
    """The thresholds file at `path`, validated; QualityError naming the key otherwise."""
    path = Path(path)
    if not path.is_file():
        raise QualityError(f"thresholds file not found: {path} (setting QUALITY_CONFIG)")
    try:
        body = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise QualityError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise QualityError(f"{path}: expected sections drift, quality, images; got {body!r}")
    if "source" in body:
        raise QualityError(f"{path}: source: unknown section")
    try:
        return QualityConfig.model_validate({**body, "source": str(path)})
    except ValidationError as exc:
        raise QualityError(f"{path}: {'; '.join(_describe(e) for e in exc.errors())}") from None


def settings_config(settings: Settings) -> QualityConfig:
    """The thresholds file the settings name (QUALITY_CONFIG)."""
    return load_config(settings.path(settings.quality_config))


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(str(part) for part in error["loc"])
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"{key}: unknown section (expected drift, quality, images)"
        if loc[:2] == ("drift", "thresholds"):
            return f"{key}: unknown drift statistic (expected {', '.join(DEFAULT_THRESHOLDS)})"
        return f"{key}: unknown key"
    if error.get("input", ...) is None:
        return f"{key}: has no value"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"
