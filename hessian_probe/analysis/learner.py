"""The seed authors' curvature learner rules (docs/theory.md section 4.5; their GadamX code, 2020):
learning rate and momentum from the Ritz values of m Lanczos steps of the Hessian on b examples.

From the Gauss rule of one probe (nodes theta_k, weights gamma_k = (first component of the k-th
Ritz vector)^2): lambda_max = max |theta|; mu = the smallest |theta| after removing, while the
largest weight exceeds 1/2, that heavy node (the cluster near zero), the rest renormalised -- or
the median |theta|. Then

    SGD:         lr = 2 / (lambda_max + mu)
    heavy ball:  lr = 4 / (sqrt(lambda_max) + sqrt(mu))^2,  rho = ((sqrt(k) - 1) / (sqrt(k) + 1))^2,
                 k = lambda_max / mu

which on a quadratic with spectrum [mu, lambda_max] are the textbook optima (Polyak 1964: the
fastest linear rate of gradient descent and of the heavy ball). Their code divides by
sqrt(k) + mu in rho; that slip is not reproduced. These are optimal rates of a quadratic, not
divergence thresholds: a batch Hessian on b < B examples overestimates lambda_max (section 3),
so the rate errs low.

The batch-noise correction (section 4.2, optional): a step at batch size B sees H_B, whose
curvature along the top Ritz vector v, a_j = v^T H_{B_j} v, varies from batch to batch (mean a,
variance s^2). The rates are then capped by the mean-square stability thresholds of that scalar
recursion: 2a / (a^2 + s^2) for SGD, and stability.mean_square_threshold at the rule's rho for
the heavy ball (:func:`with_batch_noise`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from ..linalg import gauss_quadrature, lanczos
from ..linalg.quadrature import tridiagonal_eigenpairs
from ..operators import CurvatureOperator
from ..results import not_serialised, saveable
from .stability import mean_square_threshold

MU_RULES = ("heavy-node", "median")


class NoCurvature(ValueError):
    """The Ritz values are all zero (or not finite): no rate can be set from them."""


@saveable
@dataclass(frozen=True, kw_only=True)
class LearnerSuggestion:
    """The learner's estimate and the settings its rules give (``safety`` applied to both rates).
    With the batch-noise correction (:func:`with_batch_noise`): the batch size, the mean and
    standard deviation of v^T H_B v over the noise batches, the mean-square thresholds (times
    ``safety``), and the rates capped by them; None without it."""

    lambda_max: float
    mu: float
    mu_rule: str
    sgd_lr: float
    heavy_ball_lr: float
    heavy_ball_momentum: float
    safety: float
    lanczos_steps: int
    n_products: int
    batch_size: int | None = None
    batch_curvature: float | None = None
    batch_curvature_std: float | None = None
    noise_sgd_lr: float | None = None
    noise_heavy_ball_lr: float | None = None
    top_vector: Tensor | None = not_serialised()  # the top Ritz vector, when suggest(keep_vector=True)


def extremes(nodes: Sequence[float], weights: Sequence[float], mu_rule: str = "heavy-node") -> tuple[float, float]:
    """(lambda_max, mu) from one probe's Gauss rule (module docstring)."""
    if mu_rule not in MU_RULES:
        raise ValueError(f"unknown mu rule {mu_rule!r}: use one of {', '.join(MU_RULES)}")
    magnitudes = np.abs(np.asarray(nodes, dtype=np.float64))
    if not len(magnitudes):
        raise ValueError("no Ritz values")
    lambda_max = float(magnitudes.max())
    if mu_rule == "median":
        return lambda_max, float(np.median(magnitudes))
    kept, w = magnitudes.copy(), np.asarray(weights, dtype=np.float64).copy()
    while len(kept) > 1 and w.max() > 0.5 * w.sum():  # the heavy node near zero (weights renormalised)
        heavy = int(np.argmax(w))
        kept, w = np.delete(kept, heavy), np.delete(w, heavy)
    return lambda_max, float(kept.min())


def sgd_rate(lambda_max: float, mu: float) -> float:
    """2 / (lambda_max + mu): gradient descent's fastest rate on a quadratic with spectrum [mu, lambda_max]."""
    return 2.0 / (lambda_max + mu)


def heavy_ball(lambda_max: float, mu: float) -> tuple[float, float]:
    """(lr, rho) = (4 / (sqrt(L) + sqrt(mu))^2, ((sqrt(k) - 1) / (sqrt(k) + 1))^2), k = L / mu (Polyak 1964)."""
    root_l, root_mu = math.sqrt(lambda_max), math.sqrt(mu)
    if root_mu == 0:
        return 4.0 / lambda_max, 1.0
    root_k = root_l / root_mu
    return 4.0 / (root_l + root_mu) ** 2, ((root_k - 1.0) / (root_k + 1.0)) ** 2


def suggest(op: CurvatureOperator, *, lanczos_steps: int = 20, mu_rule: str = "heavy-node", safety: float = 1.0,
            seed: int = 0, keep_vector: bool = False) -> LearnerSuggestion:
    """m = ``lanczos_steps`` Lanczos steps on one seeded probe of ``op``, and the rules' settings;
    ``keep_vector`` also returns the Ritz vector of the largest |theta| (for :func:`with_batch_noise`)."""
    run = lanczos(op, lanczos_steps, n_probes=1, seed=seed, keep_basis=keep_vector)
    nodes, weights = gauss_quadrature(run.alphas[0], run.betas[0])
    lambda_max, mu = extremes(nodes, weights, mu_rule)
    if not lambda_max > 0 or not np.isfinite(lambda_max):
        raise NoCurvature(f"the Ritz values are all zero or not finite (lambda_max = {lambda_max}): no curvature "
                          "to set a rate from")
    lr, rho = heavy_ball(lambda_max, mu)
    return LearnerSuggestion(lambda_max=lambda_max, mu=mu, mu_rule=mu_rule, sgd_lr=safety * sgd_rate(lambda_max, mu),
                             heavy_ball_lr=safety * lr, heavy_ball_momentum=rho, safety=safety,
                             lanczos_steps=len(run.alphas[0]), n_products=run.n_products,
                             top_vector=_largest_ritz_vector(run) if keep_vector else None)


def _largest_ritz_vector(run) -> Tensor:
    """Q_m u for the eigenvector u of T_m whose eigenvalue has the largest magnitude (unit norm)."""
    theta, U = tridiagonal_eigenpairs(run.alphas[0], run.betas[0])
    u = U[:, int(np.argmax(np.abs(theta)))]
    basis = run.basis[: len(theta), 0]
    vector = torch.as_tensor(u, dtype=basis.dtype, device=basis.device) @ basis
    return vector / vector.norm()


def with_batch_noise(suggestion: LearnerSuggestion, curvatures: Sequence[float], batch_size: int,
                     momentum: float | None = None) -> LearnerSuggestion:
    """The rates capped by the mean-square thresholds of batches of ``batch_size`` (module
    docstring): ``curvatures`` are a_j = v^T H_{B_j} v over at least two batches, v the top Ritz
    vector; ``momentum``: the heavy ball's as applied (default: the rule's). A batch mean a <= 0
    leaves the rates as they were (no threshold along v)."""
    a = np.asarray(curvatures, dtype=np.float64)
    if len(a) < 2 or not np.isfinite(a).all():
        raise ValueError(f"the batch-noise correction needs at least two finite batch curvatures, got {a.tolist()}")
    mean, var = float(a.mean()), float(a.var(ddof=1))
    sgd = mean_square_threshold("sgd", np.array([[mean]]), np.array([[var]]))
    heavy = mean_square_threshold("momentum", np.array([[mean]]), np.array([[var]]),
                                  momentum=suggestion.heavy_ball_momentum if momentum is None else momentum)
    safety = suggestion.safety
    noise_sgd, noise_heavy = (safety * sgd if sgd else None), (safety * heavy if heavy else None)
    sgd_lr, heavy_lr = suggestion.sgd_lr, suggestion.heavy_ball_lr
    return replace(suggestion, batch_size=batch_size, batch_curvature=mean, batch_curvature_std=math.sqrt(var),
                   noise_sgd_lr=noise_sgd, noise_heavy_ball_lr=noise_heavy,
                   sgd_lr=min(sgd_lr, noise_sgd) if noise_sgd else sgd_lr,
                   heavy_ball_lr=min(heavy_lr, noise_heavy) if noise_heavy else heavy_lr)
