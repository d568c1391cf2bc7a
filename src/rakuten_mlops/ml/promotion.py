"""The promotion gate: does a candidate replace the champion? Decided on evidence.

`decide` is pure. It takes two paired-bootstrap intervals of the weighted-F1 gain on
the same test rows (rakuten_mlops.ml.evaluate.f1_gain): the candidate over the
champion, and over the plain TF-IDF + LinearSVC baseline; the policy comes from the
training profile's `promotion:` block (rakuten_mlops.ml.profile.PromotionPolicy).

1. gain over the baseline clearly below zero (its whole interval < 0): never promoted,
   even with no champion yet;
2. no champion yet: promoted (`first`);
3. gain over the champion clearly above zero: promoted (`clearly_better`);
4. clearly below zero: the champion stays (`clearly_worse`);
5. an interval around zero is resampling noise: the policy's `within_noise` outcome
   (default `keep`: the champion stays unless the candidate is shown to be better).

`record_promotion` writes each decision with its numbers to PostgreSQL
(`model_promotions`, for the Model dashboard); the promote stage also logs them to MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from rakuten_mlops.errors import PromotionError
from rakuten_mlops.jsonable import json_safe
from rakuten_mlops.ml.evaluate import Evaluation, Gain, f1_gain
from rakuten_mlops.ml.profile import PromotionPolicy
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

# Outcomes, as recorded (MLflow tag `gate_outcome`, column `gate_outcome`).
FIRST = "first"
ALREADY_CHAMPION = "already_champion"
CLEARLY_BETTER = "clearly_better"
CLEARLY_WORSE = "clearly_worse"
WITHIN_NOISE = "within_noise"
WORSE_THAN_BASELINE = "worse_than_baseline"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    outcome: str
    reason: str
    vs_champion: Gain | None = None
    vs_baseline: Gain | None = None

    def numbers(self) -> dict[str, float]:
        """The intervals behind the decision, flat (MLflow metrics, table columns)."""
        found: dict[str, float] = {}
        for prefix, gain in (("gain_vs_champion", self.vs_champion),
                             ("gain_vs_baseline", self.vs_baseline)):
            if gain is not None:
                found.update({prefix: gain.f1_weighted, f"{prefix}_low": gain.low,
                              f"{prefix}_high": gain.high})
        return found


def decide(
    vs_champion: Gain | None,
    vs_baseline: Gain | None,
    policy: PromotionPolicy,
    confidence: float | None = None,
) -> GateDecision:
    """The gate's decision from the candidate's gains (None: no champion / no baseline)."""
    level = f"{round(100 * (confidence or policy.confidence))}% interval"
    if vs_baseline is not None and vs_baseline.high < 0:
        return GateDecision(
            False, WORSE_THAN_BASELINE,
            f"clearly worse than the plain baseline: weighted F1 {vs_baseline} ({level}); "
            "never promoted",
            vs_champion, vs_baseline,
        )
    if vs_champion is None:
        return GateDecision(True, FIRST, "first registered model: promoted", None, vs_baseline)
    if vs_champion.low > 0:
        return GateDecision(
            True, CLEARLY_BETTER,
            f"clearly better than the champion: weighted F1 {vs_champion} ({level}): promoted",
            vs_champion, vs_baseline,
        )
    if vs_champion.high < 0:
        return GateDecision(
            False, CLEARLY_WORSE,
            f"clearly worse than the champion: weighted F1 {vs_champion} ({level}): "
            "stays a challenger",
            vs_champion, vs_baseline,
        )
    promote = policy.within_noise == "promote"
    return GateDecision(
        promote, WITHIN_NOISE,
        f"within resampling noise of the champion: weighted F1 {vs_champion} ({level}); "
        f"policy within_noise={policy.within_noise}: "
        + ("promoted" if promote else "stays a challenger"),
        vs_champion, vs_baseline,
    )


def compare(
    candidate: Evaluation,
    champion: Evaluation | None,
    baseline: Evaluation | None,
    policy: PromotionPolicy,
) -> GateDecision:
    """`decide` on the paired bootstraps of `candidate` against the other two."""

    def gain(other: Evaluation | None) -> Gain | None:
        if other is None:
            return None
        return f1_gain(candidate, other, resamples=policy.resamples, seed=policy.seed,
                       confidence=policy.confidence)

    return decide(gain(champion), gain(baseline), policy)


# --------------------------------------------------------------------------- records


@dataclass
class Promotion:
    """One promote stage's outcome, as returned, logged and recorded."""

    model_name: str
    version: str
    run_id: str
    promoted: bool
    alias: str
    reason: str
    test_f1_weighted: float
    champion_version: str | None = None
    champion_f1_weighted: float | None = None
    comparison: str | None = None  # how the champion was scored
    gate_outcome: str | None = None
    gain_vs_champion: float | None = None
    gain_vs_champion_low: float | None = None
    gain_vs_champion_high: float | None = None
    gain_vs_baseline: float | None = None
    gain_vs_baseline_low: float | None = None
    gain_vs_baseline_high: float | None = None
    exported: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = (
    "model_name", "version", "run_id", "alias", "promoted", "test_f1_weighted",
    "cv_f1_weighted", "best_family", "dataset_id", "reason", "decided_at", "details",
    "gate_outcome", "gain_vs_champion", "gain_vs_champion_low", "gain_vs_champion_high",
    "gain_vs_baseline", "gain_vs_baseline_low", "gain_vs_baseline_high",
)
_UPSERT = (
    f"INSERT INTO model_promotions ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_COLUMNS))}) "
    "ON CONFLICT (model_name, version, alias) DO UPDATE SET "
    + ", ".join(
        f"{column} = EXCLUDED.{column}"
        for column in _COLUMNS
        if column not in ("model_name", "version", "alias", "decided_at")
    )
    + ", updated_at = now()"
)


def record_promotion(settings_or_conn: Settings | psycopg.Connection,
                     promotion: Mapping[str, Any]) -> None:
    """Record one gate decision in model_promotions (Grafana reads PostgreSQL, not MLflow).

    `settings_or_conn`: a Settings (a connection to its lake is opened and committed) or
    an open psycopg connection (the caller commits). `promotion` needs model_name,
    version, run_id, alias, promoted; the gate's numbers and the rest are optional; the
    whole mapping is kept in `details`. Upserted on (model_name, version, alias): a
    retried promote task records the same decision once and keeps its first decided_at.
    """
    missing = [k for k in ("model_name", "version", "run_id", "alias", "promoted")
               if promotion.get(k) is None]
    if missing:
        raise PromotionError(f"promotion lacks {', '.join(missing)}")
    decided_at = promotion.get("decided_at") or datetime.now(UTC)
    if isinstance(decided_at, str):
        decided_at = datetime.fromisoformat(decided_at)
    values = tuple(_value(column, promotion, decided_at) for column in _COLUMNS)
    if isinstance(settings_or_conn, Settings):
        with connect(settings_or_conn) as conn:
            conn.execute(_UPSERT, values)
        return
    settings_or_conn.execute(_UPSERT, values)


def _value(column: str, promotion: Mapping[str, Any], decided_at: datetime):
    if column == "decided_at":
        return decided_at
    if column == "details":
        return Jsonb(json_safe(dict(promotion)))
    if column == "promoted":
        return bool(promotion["promoted"])
    if column in ("model_name", "version", "run_id", "alias"):
        return str(promotion[column])
    if column == "reason":
        return str(promotion.get("reason") or "")
    value = promotion.get(column)
    if column in ("best_family", "dataset_id", "gate_outcome"):
        return value
    return None if value is None else float(value)

