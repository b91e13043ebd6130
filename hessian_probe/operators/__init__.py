"""Matrix-free curvature operators: Hessian and GGN of a Problem's mean loss, dense and shifted."""

from __future__ import annotations

from ..problem import Problem
from .base import CurvatureOperator, DenseOperator, SampleOperator, ShiftedOperator
from .ggn import GGNOperator
from .hessian import HessianOperator

OPERATORS: dict[str, type[SampleOperator]] = {"hessian": HessianOperator, "ggn": GGNOperator}


def curvature_operator(problem: Problem, kind: str = "hessian") -> SampleOperator:
    """The named curvature operator ('hessian' or 'ggn') of a problem's mean loss."""
    if kind not in OPERATORS:
        raise ValueError(f"unknown operator {kind!r}: use one of {sorted(OPERATORS)}")
    return OPERATORS[kind](problem)


__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "GGNOperator",
    "HessianOperator",
    "OPERATORS",
    "SampleOperator",
    "ShiftedOperator",
    "curvature_operator",
]
