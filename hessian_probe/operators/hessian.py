"""Hessian of the mean loss: forward-over-reverse products, vmapped over k tangents.

H_b v = d/dt grad L_b(w + t v) |_{t=0} = jvp(grad L_b, w, v). vmap over the tangents shares
the primal forward and backward passes between the k vectors.
"""

from __future__ import annotations

from torch import Tensor
from torch.func import grad, jvp, vmap

from .base import SampleOperator


class HessianOperator(SampleOperator):
    """H = sum_b (|b|/N) hess L_b(w) over the problem's batches."""

    name = "hessian"

    def batch_matmat(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        problem = self.problem
        grad_fn = grad(lambda p: problem.batch_loss(p, x, y))
        return vmap(lambda t: jvp(grad_fn, (problem.params,), (t,))[1])(tangents)
