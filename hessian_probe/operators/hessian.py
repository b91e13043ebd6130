"""Hessian of the mean loss: products with k tangents sharing one primal pass per batch.

Two exact ways to get H_b v, chosen by ``ProductSettings.hessian_mode``:

- reverse-over-reverse (default): H_b v = vjp(grad L_b, w)(v), the pullback of the gradient
  map, valid because H_b is symmetric. The gradient's graph is built once and pulled back for
  the k vectors (vmapped); fastest on CPU (1.5 gradient-costs per vector at k = 8 on the
  digits MLP, against 2.3 forward-over-reverse: benchmarks/RESULTS.md).
- forward-over-reverse: H_b v = jvp(grad L_b, w, v), vmapped over the tangents.

One vector runs without vmap; in reverse mode it uses plain autograd double backward, which
skips torch.func's per-operation overhead (2.6 against 3.6 gradient-costs on the digits MLP).

And one approximate way, for layers torch gives no second derivative (a backward marked
``once_differentiable``, a fused kernel), ``hessian_mode='finite-difference'``, as
hessian-eigenthings offers: central differences of the gradient,

    H_b v ~ (grad L_b(w + h v) - grad L_b(w - h v)) / (2h),   h = eps^(1/3) (1 + ||w||) / ||v||,

two gradients per vector. Its truncation error is at most (h^2 / 6) M3 ||v||^3 (M3 bounds the
third derivative along v) and its rounding error about eps ||grad L_b|| / h; this h balances them
at O(eps^(2/3)) relative to the curvature's scale: ~4e-11 in float64, ~2e-5 in float32 (Nocedal &
Wright, Numerical Optimization, 2nd ed., section 8.1). h is the same for every batch, so the
product is still one linear map of v up to that error.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from ..errors import setting
from .base import SampleOperator


def finite_difference_note(op: object) -> str | None:
    """What a run of finite-difference Hessian products says about its accuracy (None: exact)."""
    settings = getattr(op, "settings", None)
    if getattr(settings, "hessian_mode", None) != "finite-difference":
        return None
    dtype = getattr(op, "product_dtype", op.dtype)
    eps = torch.finfo(dtype).eps
    return (f"Hessian products by central differences of gradients ({setting('hessian_mode')} finite-difference): "
            "not exact, relative "
            f"error about eps^(2/3) = {eps ** (2 / 3):.0e} in {str(dtype).removeprefix('torch.')}")


class HessianOperator(SampleOperator):
    """H = sum_b (|b|/N) hess L_b(w) over the problem's batches."""

    name = "hessian"

    def batch_matmat(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        problem = self.problem
        if self.settings.hessian_mode == "finite-difference":
            return self._finite_difference(x, y, tangents)
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

    def _finite_difference(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        """H_b v by central differences of the gradient, one vector at a time (module docstring)."""
        params = self.problem.params

        def grad_fn(at: dict[str, Tensor]) -> dict[str, Tensor]:  # plain autograd: any autograd.Function works
            leaves = {n: t.detach().requires_grad_() for n, t in at.items()}
            with torch.enable_grad():
                loss = self.problem.batch_loss(leaves, x, y)
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            return {n: torch.zeros_like(t) if g is None else g for (n, t), g in zip(leaves.items(), grads)}

        scale = 1 + float(torch.sqrt(sum((p.double() ** 2).sum() for p in params.values())))
        step0 = torch.finfo(self.product_dtype).eps ** (1 / 3) * scale
        rows = []
        for j in range(next(iter(tangents.values())).shape[0]):
            v = {n: t[j] for n, t in tangents.items()}
            norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in v.values())))
            if norm == 0:
                rows.append({n: torch.zeros_like(t) for n, t in v.items()})
                continue
            h = step0 / norm
            plus = grad_fn({n: p + h * v[n] for n, p in params.items()})
            minus = grad_fn({n: p - h * v[n] for n, p in params.items()})
            rows.append({n: (plus[n] - minus[n]) / (2 * h) for n in params})
        return {n: torch.stack([r[n] for r in rows]) for n in params}
