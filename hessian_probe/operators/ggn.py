"""Generalised Gauss-Newton matrix: G = J^T S J, no second derivatives of the network.

G_b v = J_b^T (S_b (J_b v)): one jvp of the network (vmapped over the k tangents), the small
output-space loss Hessian S_b (see losses.py), one vjp (vmapped over the k cotangents).
G is positive semi-definite whenever S is (cross-entropy, MSE).
"""

from __future__ import annotations

from torch import Tensor
from torch.func import jvp, vjp, vmap

from .base import SampleOperator


class GGNOperator(SampleOperator):
    """G = sum_b (|b|/N) J_b^T S_b J_b over the problem's batches."""

    name = "ggn"

    def batch_matmat(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        problem = self.problem

        def network(p: dict[str, Tensor]) -> Tensor:
            return problem.forward(p, x)

        outputs, pullback = vjp(network, problem.params)
        jacobian_tangents = vmap(lambda t: jvp(network, (problem.params,), (t,))[1])(tangents)
        output_curvature = problem.loss.output_hessian_matmat(outputs.detach(), y, jacobian_tangents)
        return vmap(lambda u: pullback(u)[0])(output_curvature)
