"""Read what the learning-rate analysis needs from a saved torch optimizer state.

``optimizer.state_dict()`` holds ``param_groups`` (hyperparameters and integer parameter ids in
``model.parameters()`` order) and per-id ``state`` (SGD's ``momentum_buffer``; Adam's ``step``,
``exp_avg``, ``exp_avg_sq``). Ids are mapped to names by that order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..errors import setting
from ..parameters import ParameterSpace
from .adam import SavedAdamState


@dataclass(frozen=True, kw_only=True)
class OptimizerInfo:
    """Hyperparameters found in a checkpoint (None: not there), and Adam's second moments by name."""

    kind: str | None = None  # "adam", "sgd" or None when unknown
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    step: float | None = None
    exp_avg_sq: dict[str, Tensor] | None = field(default=None, repr=False)
    exp_avg: dict[str, Tensor] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()


def read_optimizer_state(state: dict[str, Any] | None, parameter_names: list[str]) -> OptimizerInfo:
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list) or not state["param_groups"]:
        return OptimizerInfo()
    groups = state["param_groups"]
    group = groups[0]
    per_param = state.get("state") or {}
    notes = []
    if len(groups) > 1:
        notes.append(f"the optimizer has {len(groups)} parameter groups; hyperparameters are read from the first")
    adam_like = any("exp_avg_sq" in s for s in per_param.values()) or "betas" in group
    info: dict[str, Any] = dict(
        lr=_number(group.get("lr")),
        weight_decay=_number(group.get("weight_decay")),
        eps=_number(group.get("eps")),
        momentum=_number(group.get("momentum")),
        nesterov=group.get("nesterov"),
        betas=tuple(float(b) for b in group["betas"]) if "betas" in group else None,
    )
    ids = [i for g in groups for i in g.get("params", [])]
    if adam_like:
        moments, firsts, steps = {}, {}, []
        if len(groups) > 1:  # ids follow the groups' order, which need not be the model's
            notes.append(f"Adam's second moments are not used: with {len(groups)} parameter groups their order "
                         "cannot be matched to the model's parameters")
        elif len(ids) == len(parameter_names):
            for pid, name in zip(ids, parameter_names):
                entry = per_param.get(pid, per_param.get(str(pid)))
                if entry and "exp_avg_sq" in entry:
                    moments[name] = entry["exp_avg_sq"].detach().float()
                    if "exp_avg" in entry:
                        firsts[name] = entry["exp_avg"].detach().float()
                    steps.append(float(entry.get("step", 0)))
        else:
            notes.append(f"the optimizer holds {len(ids)} parameters but the model {len(parameter_names)}: "
                         "Adam's second moments are not used")
        if info["weight_decay"]:
            notes.append(f"Adam(W)'s weight decay {info['weight_decay']:g} is not used: the SGD-family thresholds "
                         f"take coupled L2 decay from {setting('weight_decay')}, and the Adam threshold ignores "
                         "weight decay")
        info.update(exp_avg_sq=moments or None, exp_avg=firsts or None, step=max(steps) if steps else None,
                    weight_decay=None)
        return OptimizerInfo(kind="adam", notes=tuple(notes), **info)
    return OptimizerInfo(kind="sgd", notes=tuple(notes), **info)


def optimizer_state_of(state: Any, problem: Any) -> OptimizerInfo:
    """read_optimizer_state for a Problem: ids are mapped to the names of ``problem.module.parameters()``."""
    return read_optimizer_state(state, [name for name, _ in problem.module.named_parameters()])


def _number(value: Any) -> float | None:
    if isinstance(value, Tensor):
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def flat_moments(moments: dict[str, Tensor] | None, space: ParameterSpace) -> Tensor | None:
    """Per-parameter moments (Adam's exp_avg or exp_avg_sq) for the measured parameters, in the
    operator's flat layout; None if any is missing or has another shape."""
    moments = moments or {}
    if any(n not in moments or moments[n].shape != s for n, s in zip(space.names, space.shapes)):
        return None
    return space.flatten(moments)


def flat_second_moments(info: OptimizerInfo, space: ParameterSpace) -> Tensor | None:
    """Adam's exp_avg_sq in the operator's flat layout (see flat_moments)."""
    return flat_moments(info.exp_avg_sq, space)


def found_hyperparameters(info: OptimizerInfo) -> dict[str, Any]:
    """The hyperparameters the learning-rate thresholds take, as found in the checkpoint (None: absent)."""
    return {"momentum": info.momentum, "nesterov": info.nesterov, "weight_decay": info.weight_decay,
            "beta1": info.betas[0] if info.betas else None, "beta2": info.betas[1] if info.betas else None,
            "eps": info.eps}


def saved_adam_state(info: OptimizerInfo, problem: Any) -> SavedAdamState | None:
    """Adam's saved moments in the problem's flat layout, device and dtype (analysis.adam.SavedAdamState),
    or None when the checkpoint has no usable ones (no exp_avg_sq or step, several groups, other shapes)."""
    second = flat_moments(info.exp_avg_sq, problem.space)
    if second is None or not info.step:
        return None
    first = flat_moments(info.exp_avg, problem.space)
    cast = dict(device=problem.device, dtype=problem.dtype)
    return SavedAdamState(exp_avg_sq=second.to(**cast), exp_avg=first.to(**cast) if first is not None else None,
                          step=float(info.step))
