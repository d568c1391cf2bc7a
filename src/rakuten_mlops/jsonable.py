"""Values as JSON can hold them: what results and decisions are stored as (jsonb, JSON
reports). One definition for the data-quality results and the promotion records."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """`value` as JSON can hold it: numpy scalars as Python ones, NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value
