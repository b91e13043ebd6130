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
    if isinstance(value, torch.dtype):  # e.g. ProductSettings.vector_dtype
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    value = python_number(value)
    return None if isinstance(value, float) and not math.isfinite(value) else value


def python_number(value: Any) -> Any:
    """A Python or numpy bool, int or float as Python's own; anything else unchanged."""
    for kinds, python in (((bool, np.bool_), bool), ((int, np.integer), int), ((float, np.floating), float)):
        if isinstance(value, kinds):
            return python(value)
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


# --- safe saved state: results as plain containers and tensors, never pickled objects ----------

RESULT_TYPES: dict[str, type] = {}


def saveable(cls: type) -> type:
    """Class decorator: instances may be saved by :func:`to_state` and rebuilt by :func:`from_state`."""
    RESULT_TYPES[cls.__name__] = cls
    return cls


def to_state(value: Any) -> Any:
    """``value`` as dicts, lists, strings, numbers and tensors only, which ``torch.load(weights_only=True)``
    reads back without running any code. Registered dataclasses, numpy arrays and tuples are tagged
    so that :func:`from_state` rebuilds them exactly (float64 arrays bit for bit)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if RESULT_TYPES.get(name) is not type(value):
            raise TypeError(f"{name} is not a saveable result type")
        fields = {f.name: to_state(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__result__": name, "fields": fields}
    if isinstance(value, np.ndarray):
        return {"__array__": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {"__dict__": [[to_state(k), to_state(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [to_state(v) for v in value]}
    if isinstance(value, list):
        return [to_state(v) for v in value]
    value = python_number(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__}")


def from_state(state: Any) -> Any:
    """The value :func:`to_state` saved; only registered result types are ever constructed."""
    if isinstance(state, list):
        return [from_state(v) for v in state]
    if not isinstance(state, dict):
        return state
    if "__array__" in state:
        return state["__array__"].numpy()
    if "__tuple__" in state:
        return tuple(from_state(v) for v in state["__tuple__"])
    if "__dict__" in state:
        return {from_state(k): from_state(v) for k, v in state["__dict__"]}
    if "__result__" in state:
        cls = RESULT_TYPES.get(state["__result__"])
        if cls is None:
            raise ValueError(f"unknown result type {state['__result__']!r} in saved state")
        return cls(**{k: from_state(v) for k, v in state["fields"].items()})
    raise ValueError("malformed saved state")
