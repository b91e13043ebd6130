"""Generalised Gauss-Newton matrix: G = J^T S J, no second derivatives of the network.

G_b v = J_b^T (S_b (J_b v)): one jvp of the network (vmapped over the k tangents), the small
output-space loss Hessian S_b (see losses.py), one vjp (vmapped over the k cotangents).
G is positive semi-definite whenever S is (cross-entropy, MSE).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
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
        output_curvature = self.output_matmat(outputs.detach(), y, jacobian_tangents)
        return vmap(lambda u: pullback(u)[0])(output_curvature)

    def output_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        """S U for the block U (k, *outputs.shape): here S is the loss's output Hessian; the Fisher
        operators (fisher.py) put another PSD matrix there."""
        return self.problem.loss.output_hessian_matmat(outputs, targets, U)


SQUASHING = (nn.Sigmoid, nn.Softmax, nn.LogSoftmax, nn.Tanh)


def final_module(module: nn.Module) -> nn.Module:
    """The model's last layer as registered (the last child, followed down Sequentials)."""
    while True:
        children = list(module.children())
        if not children:
            return module
        module = children[-1]


MIDDLE = {"ggn": "the output Hessian", "fisher": "the expected output Hessian (y ~ p(y|x))",
          "empirical-fisher": "the outer products of the output gradients at the labels"}


def split_description(problem: Any, kind: str = "ggn") -> tuple[str, str | None]:
    """Where G = J^T S J (or a Fisher, fisher.py) is split, in words, and a warning when the model
    ends in a squashing layer (its curvature then sits in J, not in S: G is taken at the squashed
    outputs and is not the Hessian's PSD part at the logits; issue 19, item 5)."""
    middle = MIDDLE.get(kind, "the operator's output-space matrix")
    where = f"at the model's outputs, with S {middle} of the loss {problem.loss.name!r}"
    last = final_module(problem.module)
    if not isinstance(last, SQUASHING):
        return where, None
    kind = type(last).__name__
    return where + f" (after the model's final {kind})", (
        f"the model ends in {kind}, so the GGN is taken at its outputs: the {kind}'s curvature is left out and the GGN "
        "is not the Hessian's PSD part at the logits; to split there, drop the final layer and use a loss on logits "
        "(`loss` bce_with_logits, cross_entropy)")
