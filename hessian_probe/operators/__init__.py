"""Matrix-free curvature operators: Hessian and GGN of a Problem's mean loss, dense and shifted."""

from __future__ import annotations

import torch

from ..problem import Problem
from .base import CurvatureOperator, DenseOperator, SampleOperator, ShiftedOperator
from .fisher import EmpiricalFisherOperator, FisherOperator
from .ggn import GGNOperator
from .hessian import HessianOperator
from .settings import ProductSettings, float32_precision

OPERATORS: dict[str, type[SampleOperator]] = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator,
                                              "empirical-fisher": EmpiricalFisherOperator}


def curvature_operator(
    problem: Problem,
    kind: str = "hessian",
    *,
    compile: bool = False,
    tf32: bool = False,
    max_rows: int | None = None,
    hessian_mode: str = "reverse",
    vector_dtype: torch.dtype | None = None,
    settings: ProductSettings | None = None,
) -> SampleOperator:
    """The named curvature operator ('hessian', 'ggn', 'fisher', 'empirical-fisher') of a problem's
    mean loss; the keywords, or ``settings`` whole (which then replaces them), choose how its
    products run (see :class:`ProductSettings`), never what they compute."""
    if kind not in OPERATORS:
        raise ValueError(f"unknown operator {kind!r}: use one of {sorted(OPERATORS)}")
    if settings is None:
        settings = ProductSettings(compile=compile, tf32=tf32, max_rows=max_rows, hessian_mode=hessian_mode,
                                   vector_dtype=vector_dtype)
    return OPERATORS[kind](problem, settings)


__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "OPERATORS",
    "ProductSettings",
    "SampleOperator",
    "ShiftedOperator",
    "curvature_operator",
    "float32_precision",
]
