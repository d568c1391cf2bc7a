"""What checking a window produces: plain records, shared by the statistics, the report,
the store and the job (no service, no computation)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from rakuten_mlops.jsonable import json_safe


@dataclass
class ResultRow:
    """One row of quality_results."""

    feature: str
    metric: str
    category: str  # drift | quality | stats
    value: float
    n_current: int
    threshold: float | None = None
    breach: bool = False
    enough_data: bool = True
    n_reference: int | None = None
    bins: int | None = None
    expected_bias: float | None = None
    reason: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Reference:
    kind: str  # champion | lake_train | none
    reference_id: str | None
    note: str
    model_version: str | None = None
    dataset_id: str | None = None
    # The dataset's subsets the champion trained on (its run's `train_subsets`).
    subsets: tuple[str, ...] = ("train",)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Window:
    window_id: str
    kind: str  # load_batch | inference
    window_time: datetime
    batch_id: int | None = None
    interval_start: datetime | None = None
    interval_end: datetime | None = None


@dataclass
class WindowResult:
    """What checking one window produced (also the row of quality_windows)."""

    window: Window
    reference: Reference
    rows: list[ResultRow]
    n_rows: int
    reference_rows: int
    status: str
    report_bucket: str | None = None
    report_key: str | None = None
    dag_run_id: str | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def breaches(self) -> list[ResultRow]:
        return [row for row in self.rows if row.breach]

    @property
    def breached_features(self) -> list[str]:
        return sorted({f"{row.feature}" for row in self.breaches})

    def summary(self) -> dict[str, Any]:
        return {
            "window_id": self.window.window_id,
            "kind": self.window.kind,
            "status": self.status,
            "rows": self.n_rows,
            "reference": self.reference.reference_id,
            "reference_kind": self.reference.kind,
            "breaches": [
                f"{r.feature}.{r.metric}={r.value:.4g} (threshold {r.threshold:g})"
                for r in self.breaches
            ],
            "breached_features": self.breached_features,
            "report": f"s3://{self.report_bucket}/{self.report_key}" if self.report_key else None,
            "seconds": round(self.seconds, 3),
            "timings": self.timings,
        }




def to_json(value: Any) -> str:
    return json.dumps(json_safe(value), indent=2, sort_keys=True, default=str)
