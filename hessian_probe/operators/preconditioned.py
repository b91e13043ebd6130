"""Diagonally preconditioned curvature: D^-1/2 A D^-1/2, whose eigenvalues are those of D^-1 A.

With Adam's D = diag(sqrt(v_hat) + eps) this is the curvature Adam's update actually sees;
its top eigenvalue is Adam's "preconditioned sharpness" (Cohen et al. 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import CurvatureOperator


class PreconditionedOperator(CurvatureOperator):
    """D^-1/2 A D^-1/2 for a positive diagonal D given as a length-P vector (symmetric, like A)."""

    def __init__(self, base: CurvatureOperator, diagonal: Tensor) -> None:
        if diagonal.shape != (base.size,):
            raise ValueError(f"the preconditioner needs {base.size} entries, got {tuple(diagonal.shape)}")
        if not bool((diagonal > 0).all()):
            raise ValueError("the preconditioner diagonal must be positive")
        self.base = base
        self.inv_sqrt = diagonal.to(device=base.device, dtype=base.dtype).rsqrt()

    size = property(lambda self: self.base.size)
    dtype = property(lambda self: self.base.dtype)
    device = property(lambda self: self.base.device)

    @property
    def name(self) -> str:
        return f"preconditioned {getattr(self.base, 'name', 'operator')}"

    def _matmat(self, V: Tensor) -> Tensor:
        return self.base.matmat(V * self.inv_sqrt) * self.inv_sqrt


def adam_preconditioner(exp_avg_sq: Tensor, step: float, beta2: float, eps: float) -> Tensor:
    """D = sqrt(v_hat) + eps with Adam's bias correction v_hat = v / (1 - beta2^step)."""
    v_hat = exp_avg_sq / (1.0 - beta2 ** float(step))
    return torch.sqrt(v_hat) + eps
