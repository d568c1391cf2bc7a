"""Training profiles (`config/training/<name>.yaml`), typed: one model, one loader.

A profile says which model families to search, over which grids, with how many
stratified folds, how the winner's scores are calibrated, and the promotion gate's
policy. `load_profile` validates one (by name, path or dict) and returns it as a plain
dict, the form the search and MLflow log; a bad profile raises ProfileError naming the
key, e.g. `profile 'quick': families.svm: unknown family`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rakuten_mlops.errors import ProfileError
from rakuten_mlops.ml.features import ALL_FAMILIES
from rakuten_mlops.settings import project_root

# `calibration: out_of_fold`: the winner's softmax temperature is fitted on its decision
# values for rows each fold's model did not see, so every labelled non-test row can train.
OUT_OF_FOLD = "out_of_fold"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Halving(_Strict):
    factor: int = Field(3, ge=2)
    min_resources: int | Literal["exhaust", "smallest"] = "exhaust"
    aggressive_elimination: bool = False


class Race(_Strict):
    """`search: race` (rakuten_mlops.ml.race): successive halving across the families."""

    factor: int = Field(3, ge=2)
    min_resources: int | Literal["exhaust", "smallest"] = "exhaust"
    aggressive_elimination: bool = False


# Pipeline steps a racing candidate may not set: their output is shared by all of them.
SHARED_STEP_PREFIXES = ("clean__", "tfidf__")


class FamilySpec(_Strict):
    search: Literal["grid", "halving"] = "grid"
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    fixed: dict[str, Any] | None = None
    halving: Halving | None = None
    select_k: int | None = Field(None, ge=1)
    features: dict[str, dict[str, Any] | None] | None = None


class PromotionPolicy(_Strict):
    """How the promotion gate decides (rakuten_mlops.ml.promotion).

    The candidate's weighted-F1 gain over the champion (and over the plain baseline) is a
    paired bootstrap interval on the same test rows, at `confidence`. Clearly better
    (interval above 0): promote; clearly worse (below 0): keep the champion; an interval
    around 0 is noise and gets `within_noise`. A model whose gain over the baseline is
    clearly negative is never promoted.
    """

    resamples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    within_noise: Literal["keep", "promote"] = "keep"
    seed: int = 0


class TrainingProfile(_Strict):
    name: str = "custom"
    cv_folds: int = Field(5, ge=2)
    random_state: int = 42
    n_jobs: int = 2
    train_subsets: list[str] = Field(default_factory=lambda: ["train"], min_length=1)
    features: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    calibration: str = "validation"
    baseline: bool = True
    # per_family: one search per family (its `search:` and `halving:` keys); race: every
    # family's candidates in one successive halving (`race:`; families' own keys ignored).
    search: Literal["per_family", "race"] = "per_family"
    race: Race | None = None
    families: dict[str, FamilySpec] = Field(min_length=1)
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: dict[str, FamilySpec]) -> dict[str, FamilySpec]:
        unknown = sorted(set(families) - set(ALL_FAMILIES))
        if unknown:
            raise ValueError(
                f"unknown family {unknown[0]!r} (expected one of {', '.join(ALL_FAMILIES)})"
            )
        return families

    @model_validator(mode="after")
    def _calibration_on_unseen_rows(self) -> TrainingProfile:
        if self.calibration != OUT_OF_FOLD and self.calibration in self.train_subsets:
            # A temperature fitted on rows the model has learned would make it overconfident.
            raise ValueError(
                f"calibration {self.calibration!r} must not be one of the train_subsets "
                f"{self.train_subsets} (use {OUT_OF_FOLD!r})"
            )
        return self


    @model_validator(mode="after")
    def _racing_families_share_features(self) -> TrainingProfile:
        if self.search != "race":
            if self.race is not None:
                raise ValueError("race: set only with `search: race`")
            return self
        self.race = self.race or Race()
        for name, spec in self.families.items():
            if spec.features:
                raise ValueError(
                    f"families.{name}.features: racing families share the profile's "
                    "features (computed once per fold); move them to `features:` or use "
                    "`search: per_family`"
                )
            keys = [*(spec.grid or {}), *(spec.fixed or {})]
            shared = [key for key in keys if key.startswith(SHARED_STEP_PREFIXES)]
            if shared:
                raise ValueError(
                    f"families.{name}: {shared[0]!r} changes the features all racing "
                    "families share; set it in `features:` or use `search: per_family`"
                )
        return self


def profile_dir() -> Path:
    return project_root() / "config" / "training"


def parse_profile(profile: str | Path | dict) -> TrainingProfile:
    """A profile by name (`quick`, `full`), by path to a YAML file, or as a dict."""
    data = dict(profile) if isinstance(profile, dict) else _read(profile)
    try:
        return TrainingProfile.model_validate(data)
    except ValidationError as exc:
        name = data.get("name", "custom") if isinstance(data, dict) else profile
        raise ProfileError(f"profile {name!r}: {_describe(exc)}") from None


def load_profile(profile: str | Path | dict) -> dict[str, Any]:
    """The validated profile as a plain dict (what the search reads and MLflow logs)."""
    return parse_profile(profile).model_dump()


def promotion_policy(profile: dict[str, Any] | None) -> PromotionPolicy:
    """The gate's policy from a (logged) profile dict; the defaults when it has none."""
    try:
        return PromotionPolicy.model_validate((profile or {}).get("promotion") or {})
    except ValidationError as exc:
        raise ProfileError(f"promotion policy: {_describe(exc)}") from None


def _read(profile: str | Path) -> dict[str, Any]:
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml"):
        path = profile_dir() / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in profile_dir().glob("*.yaml")))
        raise ProfileError(f"training profile {str(profile)!r} not found (known: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"training profile {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"training profile {path}: expected a mapping of keys")
    return data


def _describe(exc: ValidationError) -> str:
    """Each problem as `key.path: message` (pydantic's own words)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
