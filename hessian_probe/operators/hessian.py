"""Hessian of the mean loss: products with k tangents sharing one primal pass per batch.

Two exact ways to get H_b v, chosen by ``ProductSettings.hessian_mode``:

- reverse-over-reverse (default): H_b v = vjp(grad L_b, w)(v), the pullback of the gradient
  map, valid because H_b is symmetric. The gradient's graph is built once and pulled back for
  the k vectors (vmapped); fastest on CPU (1.5 gradient-costs per vector at k = 8 on the
  digits MLP, against 2.3 forward-over-reverse: benchmarks/RESULTS.md).
- forward-over-reverse: H_b v = jvp(grad L_b, w, v), vmapped over the tangents.

One vector runs without vmap; in reverse mode it uses plain autograd double backward, which
skips torch.func's per-operation overhead (2.6 against 3.6 gradient-costs on the digits MLP).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from .base import SampleOperator


class HessianOperator(SampleOperator):
    """H = sum_b (|b|/N) hess L_b(w) over the problem's batches."""

    name = "hessian"

    def batch_matmat(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        problem = self.problem
        single = next(iter(tangents.values())).shape[0] == 1
        if single and self.settings.hessian_mode == "reverse" and not self.settings.compile:
            return {n: t.unsqueeze(0) for n, t in self._double_backward(x, y, tangents).items()}
        grad_fn = grad(lambda p: problem.batch_loss(p, x, y))
        if self.settings.hessian_mode == "forward":
            product = lambda t: jvp(grad_fn, (problem.params,), (t,))[1]  # noqa: E731
        else:
            _, pullback = vjp(grad_fn, problem.params)
            product = lambda t: pullback(t)[0]  # noqa: E731
        if single:
            return {n: t.unsqueeze(0) for n, t in product({n: t[0] for n, t in tangents.items()}).items()}
        return vmap(product)(tangents)

    def _double_backward(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        """H_b v for one vector v (tangents of shape (1, *shape)) by autograd: grad of <grad L_b, v>."""
        params = {n: p.detach().requires_grad_() for n, p in self.problem.params.items()}
        leaves = list(params.values())
        with torch.enable_grad():
            loss = self.problem.batch_loss(params, x, y)
            gradient = torch.autograd.grad(loss, leaves, create_graph=True)
            if not any(g.requires_grad for g in gradient):
                raise RuntimeError("the gradient has no graph to differentiate (a backward marked once_differentiable, "
                                   "or a loss linear in the weights): the Hessian product cannot be taken")
            products = torch.autograd.grad(gradient, leaves, grad_outputs=[tangents[n][0] for n in params],
                                           allow_unused=True)
        if all(h is None for h in products):
            # the gradient depends on the weights, but no second derivative reaches them: a layer's
            # backward is not itself differentiable (an autograd.Function marked once_differentiable)
            raise RuntimeError("the gradient's graph does not reach the weights (a backward marked "
                               "once_differentiable): the Hessian product would read as zero")
        return {n: torch.zeros_like(p) if h is None else h for (n, p), h in zip(params.items(), products)}
