"""Frozen result records and their JSON form.

Every kernel returns a frozen dataclass deriving from :class:`KernelResult`, so a careful reader
always gets the cost (operator products, wall time) next to the numbers and their error bars.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import PurePath
from typing import Any

import numpy as np
import torch


def to_jsonable(value: Any) -> Any:
    """Convert results, arrays and tensors to plain JSON values (non-finite floats become None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.metadata.get("json", True)
        }
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):  # TOML dates in a config
        return value.isoformat()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def not_serialised() -> Any:
    """Dataclass field option for heavy payloads (eigenvectors, bases) kept out of JSON."""
    return dataclasses.field(default=None, repr=False, compare=False, metadata={"json": False})


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelResult:
    """Base of all kernel results: the cost of producing them."""

    n_products: int
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)
