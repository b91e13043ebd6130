"""Ground truth independent of the operators: dense float64 Hessians, RMT laws, brief training."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian


def dense_hessian(model: nn.Module, loss_fn, inputs: Tensor, targets: Tensor, names: list[str] | None = None) -> Tensor:
    """torch.func.hessian of the mean loss over all examples at once, as a P x P matrix.

    ``names`` restricts to a parameter subset (the rest held fixed), in the given order.
    """
    every = {n: p.detach() for n, p in model.named_parameters()}
    names = names or list(every)
    buffers = dict(model.named_buffers())

    def loss(params: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, ({**every, **params}, buffers), (inputs,)), targets)

    blocks = hessian(loss)({n: every[n] for n in names})
    sizes = [every[n].numel() for n in names]
    return torch.cat(
        [torch.cat([blocks[a][b].reshape(sa, sb) for b, sb in zip(names, sizes)], dim=1)
         for a, sa in zip(names, sizes)],
        dim=0,
    )


def adam_steps(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn, steps: int, lr: float = 0.01,
               **adam: object) -> torch.optim.Adam:
    """``steps`` full-batch Adam steps (``adam``: its other options), seeded by the caller; the optimizer,
    whose state a checkpoint carries."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, **adam)
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimiser.step()
    return optimiser


def train_briefly(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn, steps: int = 150,
                  lr: float = 0.01) -> nn.Module:
    """Full-batch Adam, seeded by the caller: a point that is trained but not at a minimum."""
    adam_steps(model, inputs, targets, loss_fn, steps, lr)
    return model.eval()


def semicircle_cdf(t: np.ndarray, r: float = 1.0) -> np.ndarray:
    """CDF of the Wigner law with density sqrt(4 r^2 - x^2) / (2 pi r^2) on [-2r, 2r]."""
    x = np.clip(t, -2 * r, 2 * r)
    return 0.5 + x * np.sqrt(4 * r * r - x * x) / (4 * np.pi * r * r) + np.arcsin(x / (2 * r)) / np.pi


def marchenko_pastur_cdf(t: np.ndarray, gamma: float, sigma2: float = 1.0, n_grid: int = 200_001) -> np.ndarray:
    """CDF of the MP law with ratio gamma (atom 1 - 1/gamma at 0 when gamma > 1), by quadrature."""
    lo, hi = sigma2 * (1 - np.sqrt(gamma)) ** 2, sigma2 * (1 + np.sqrt(gamma)) ** 2
    # substitute x = lo + (hi - lo) sin^2(u) to remove the square-root edge singularities
    u = np.linspace(0.0, np.pi / 2, n_grid)
    x = lo + (hi - lo) * np.sin(u) ** 2
    dx_du = 2 * (hi - lo) * np.sin(u) * np.cos(u)
    density = np.sqrt(np.clip((hi - x) * (x - lo), 0, None)) / (2 * np.pi * sigma2 * gamma * np.maximum(x, 1e-300))
    integrand = density * dx_du
    cumulative = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(u))])
    atom = max(0.0, 1.0 - 1.0 / gamma)
    return np.where(t < 0, 0.0, atom) + np.interp(t, x, cumulative, left=0.0, right=cumulative[-1])


def wasserstein1(cdf_a, cdf_b, lo: float, hi: float, n: int = 200_001) -> float:
    """W1 = integral |F_a - F_b| over [lo, hi] (both CDFs 0 below lo and 1 above hi)."""
    t = np.linspace(lo, hi, n)
    gap = np.abs(cdf_a(t) - cdf_b(t))
    return float(((gap[1:] + gap[:-1]) / 2 * np.diff(t)).sum())


def random_symmetric(n: int, seed: int, dtype=torch.float64) -> Tensor:
    """A GOE matrix scaled so its spectrum follows the semicircle of radius 2 (r = 1)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=dtype)
    return (a + a.T) / np.sqrt(2 * n)
