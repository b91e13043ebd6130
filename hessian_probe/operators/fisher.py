"""Fisher matrices: the GGN's J^T (.) J with another output-space matrix in the middle.

- Fisher of the model's predictive distribution (Amari 1998; Martens 2020, "New insights and
  perspectives on the natural gradient method"): F = J^T E_{y ~ p(y|f)}[g g^T] J with g the
  gradient of the loss in the outputs f, read as a negative log-likelihood. For a loss whose
  outputs are the natural parameters (softmax cross-entropy, MSE, BCE on logits) the middle
  matrix is the loss's output Hessian, so F = GGN exactly; for BCE on probabilities p it is
  diag(1 / (p (1 - p))) / numel, the expected output Hessian (losses.py).
- Empirical Fisher (Kunstner, Hennig & Balles 2019, "Limitations of the empirical Fisher
  approximation"): the uncentred covariance of the examples' gradients at the data's labels,
  which is not F. The mean loss averages M = N D terms, D per example (Loss.terms_per_example:
  positions for cross-entropy, outputs for MSE and BCE, 1 for a user's loss); example n's
  negative log-likelihood is the sum of its terms, D l_n, so that
  E = (1/M) sum_n grad(D l_n) grad(D l_n)^T = (D/N) sum_n grad l_n grad l_n^T has the Fisher's
  normalisation: its expectation over labels drawn from the model is F. With
  L_b = (1/|b|) sum_n l_n and l_n depending on example n's outputs only, g_n = grad_{f_n} l_n =
  |b| grad_{f_n} L_b (one backward pass of the batch loss), and E_b = J^T S J with
  S U = (D/|b|) sum_n g_n <g_n, U_n>.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor
from torch.func import grad

from ..errors import UsageError
from ..problem import Problem
from .ggn import GGNOperator
from .settings import ProductSettings


def takes_targets(method) -> bool:
    """Does a Loss method take ``targets=`` (added with labels -100; a user's older Loss may not)?"""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "targets" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class FisherOperator(GGNOperator):
    """F = sum_b (|b|/N) J_b^T E_y[g g^T] J_b: the Fisher of the loss's predictive distribution."""

    name = "fisher"

    def __init__(self, problem: Problem, settings: ProductSettings | None = None) -> None:
        if not problem.loss.has_fisher:
            raise UsageError("the Fisher needs the predictive distribution the loss is the negative log-likelihood "
                             f"of, and the loss {problem.loss.name!r} does not say it: use the empirical Fisher (the "
                             "gradients' covariance at the data's labels) or the GGN")
        super().__init__(problem, settings)

    def output_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        loss = self.problem.loss
        if self._passes_targets:
            return loss.output_fisher_matmat(outputs, U, targets=targets)
        return loss.output_fisher_matmat(outputs, U)  # a user's Loss written before targets were passed

    @functools.cached_property
    def _passes_targets(self) -> bool:  # read once, not per product
        return takes_targets(self.problem.loss.output_fisher_matmat)


class EmpiricalFisherOperator(GGNOperator):
    """E = (D/N) sum_n grad l_n grad l_n^T: the examples' gradients' uncentred covariance, per term."""

    name = "empirical-fisher"

    @functools.cached_property
    def _passes_targets(self) -> bool:  # read once, not per product
        return takes_targets(self.problem.loss.terms_per_example)

    def output_matmat(self, outputs: Tensor, targets: Tensor, U: Tensor) -> Tensor:
        n = len(outputs)
        with torch.enable_grad():
            per_example = grad(lambda o: self.problem.loss(o, targets))(outputs) * n  # g_n = |b| grad_{f_n} L_b
        overlaps = (U * per_example).flatten(2).sum(2)  # <g_n, U_n>: (k, |b|)
        loss = self.problem.loss
        terms = (loss.terms_per_example(outputs, targets=targets) if self._passes_targets
                 else loss.terms_per_example(outputs))
        return per_example * overlaps.reshape(*overlaps.shape, *[1] * (outputs.ndim - 1)) * (terms / n)
