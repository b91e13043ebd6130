"""The optimizer hyperparameters: those a divergence threshold depends on (Hyperparameters, with
where each came from) and those a validating run trains with (validate.TrainingRecipe) are the
same fields, declared once here."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, setting
from ..results import saveable

HYPERPARAMETER_KEYS = ("momentum", "nesterov", "weight_decay", "beta1", "beta2", "eps")  # what resolve reads
UPPER_BOUNDS = {"momentum": 1.0, "weight_decay": math.inf, "beta1": 1.0, "beta2": 1.0, "eps": math.inf}  # [0, bound)


@dataclass(frozen=True, kw_only=True)
class OptimizerHyperparameters:
    """torch.optim's hyperparameters of SGD with (Nesterov) momentum and of Adam: heavy-ball rho,
    coupled L2 weight decay (the SGD family), Adam's beta1, beta2 and eps."""

    momentum: float = 0.9
    weight_decay: float = 0.0  # coupled L2 for the SGD family, as in the thresholds 2/(lambda' + wd)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def optimizer_values(self) -> dict[str, float]:
        """These fields alone, to carry into another OptimizerHyperparameters (dataclasses.replace)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(OptimizerHyperparameters)}


@saveable
@dataclass(frozen=True, kw_only=True)
class Hyperparameters(OptimizerHyperparameters):
    """What the thresholds depend on, and where each value came from ('checkpoint' or 'option')."""

    nesterov: bool = False
    safety: float = 1.0
    sources: dict | None = None

    @classmethod
    def resolve(cls, given: Mapping[str, Any], found: Mapping[str, Any], safety: float = 1.0) -> Hyperparameters:
        """Each of momentum, nesterov, weight_decay, beta1, beta2, eps: the value ``given``
        explicitly, else the one ``found`` in the checkpoint (a zero momentum counts as absent),
        else the default; ``sources`` records which."""
        defaults = cls()
        values, sources = {}, {}
        for key in HYPERPARAMETER_KEYS:
            mine, saved = given.get(key), found.get(key)
            if mine is not None:
                values[key] = mine
                sources[key] = "option" + (f" (checkpoint had {saved})" if saved is not None else "")
            elif saved is not None and (key != "momentum" or saved != 0):
                if key != "nesterov" and not in_range(key, saved):
                    raise InputError(f"the checkpoint's optimizer state has {key} = {saved!r}, outside "
                                     f"[0, {UPPER_BOUNDS[key]:g}): pass {setting(key)} to set it")
                values[key], sources[key] = saved, "checkpoint"
            else:
                values[key], sources[key] = getattr(defaults, key), "default"
        return cls(**values, safety=safety, sources=sources)


def in_range(key: str, value: Any) -> bool:
    """A finite number in [0, UPPER_BOUNDS[key])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return 0 <= value < UPPER_BOUNDS[key]
