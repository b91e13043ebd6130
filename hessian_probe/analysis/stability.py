"""Mean-square stability of SGD, heavy ball, Nesterov and Adam when every step sees another batch.

Linearised about the checkpoint, a step on batch B sees the batch Hessian H_B = H + D_B with
E[D_B] = 0. Each optimizer is then a random linear recursion on a small state z,

    z_{t+1} = A(H_{B_t}) z_t,   A(H_B) = A(H) + U D_B V^T          (affine in the batch Hessian),

and the second moment Z_t = E[z_t z_t^T] follows the positive linear map

    T(Z) = A Z A^T + E[(U D V^T) Z (U D V^T)^T],   i.e.  T = A (x) A + (U (x) U) C (V (x) V)^T

with C = E[D (x) D]. The iteration is mean-square stable iff the spectral radius of T is below 1;
the threshold is the smallest step where it reaches 1 (bisection). Without noise (C = 0) the
radius is that of A squared, so the thresholds are the quadratic ones: 2/l, 2(1+rho)/l,
(2+2rho)/((1+2rho) l). Since C is positive, noise only lowers them. (docs/theory.md section 3; for SGD
on least squares this is the exact threshold of Wu, Ma & E 2018, "How SGD selects the global
minima", section 3; heavy ball with noise: Andreyev & Beneventano 2024, arXiv 2412.20553.)

The recursions, in torch.optim's conventions (x: parameters minus the checkpoint's):

- SGD:        x' = x - lr H_B x                                            z = x
- heavy ball: x' = x - lr H_B x + rho (x - x_prev)                         z = (x, x_prev)
- Nesterov:   b' = rho b + H_B x;  x' = x - lr (H_B x + rho b')            z = (x, b)
- Adam with a settled second moment v (bias corrections ~ 1) in the variables D^1/2 x, D =
  diag(sqrt(v) + eps): heavy ball with rho = beta1 and step lr (1 - beta1) on D^-1/2 H_B D^-1/2.

Coupled L2 weight decay adds wd I to every H_B (and not to the noise).
"""

from __future__ import annotations

import functools
import math

import numpy as np

OPTIMIZERS = ("sgd", "momentum", "nesterov")


def recursion(optimizer: str, lr: float, momentum: float,
              mean: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, U, V) of the linearised step z' = (A + U D V^T) z on a k-dim subspace with mean Hessian ``mean``."""
    k = mean.shape[0]
    eye, zero = np.eye(k), np.zeros((k, k))
    if optimizer == "sgd":
        return eye - lr * mean, -lr * eye, eye
    if optimizer == "momentum":
        a = np.block([[(1 + momentum) * eye - lr * mean, -momentum * eye], [eye, zero]])
        return a, np.vstack([-lr * eye, zero]), np.vstack([eye, zero])
    if optimizer == "nesterov":
        a = np.block([[eye - lr * (1 + momentum) * mean, -lr * momentum**2 * eye], [mean, momentum * eye]])
        return a, np.vstack([-lr * (1 + momentum) * eye, eye]), np.vstack([eye, zero])
    raise ValueError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")


def second_moment_map(optimizer: str, lr: float, momentum: float, mean: np.ndarray,
                      covariance: np.ndarray) -> np.ndarray:
    """T = A (x) A + (U (x) U) C (V (x) V)^T, acting on row-major vec(Z); C = E[D (x) D] (k^2 x k^2)."""
    a, u, v = recursion(optimizer, lr, momentum, mean)
    return np.kron(a, a) + np.kron(u, u) @ covariance @ np.kron(v, v).T


@functools.lru_cache(maxsize=8)
def _symmetric_coordinates(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, L): S maps the n(n+1)/2 upper-triangle coordinates of a symmetric matrix to its row-major
    vec, L reads them back (L S = I)."""
    rows, cols = np.triu_indices(n)
    m = len(rows)
    embed, pick = np.zeros((n * n, m)), np.zeros((m, n * n))
    embed[rows * n + cols, np.arange(m)] = 1.0
    embed[cols * n + rows, np.arange(m)] = 1.0
    pick[np.arange(m), rows * n + cols] = 1.0
    return embed, pick


def spectral_radius(optimizer: str, lr: float, momentum: float, mean: np.ndarray, covariance: np.ndarray) -> float:
    """Growth factor per step of E[z z^T] (1: the mean-square stability boundary). T commutes with
    transposition and is a positive map, so its spectral radius is attained on symmetric Z (a PSD
    eigenvector, Krein-Rutman): T is restricted to them, n(n+1)/2 coordinates instead of n^2."""
    t = second_moment_map(optimizer, lr, momentum, mean, covariance)
    embed, pick = _symmetric_coordinates(int(round(np.sqrt(len(t)))))
    return float(np.max(np.abs(np.linalg.eigvals(pick @ t @ embed))))


def quadratic_threshold(optimizer: str, curvature: float, momentum: float = 0.0) -> float | None:
    """Without noise: 2/l (SGD), 2(1+rho)/l (heavy ball), (2+2rho)/((1+2rho) l) (Nesterov)."""
    if not curvature > 0:
        return None
    factor = {"sgd": 2.0, "momentum": 2.0 * (1 + momentum), "nesterov": (2.0 + 2.0 * momentum) / (1 + 2.0 * momentum)}
    return factor[optimizer] / curvature


def mean_square_threshold(optimizer: str, mean: np.ndarray, covariance: np.ndarray, *, momentum: float = 0.0,
                          weight_decay: float = 0.0, rtol: float = 1e-3) -> float | None:
    """The largest step at which E[z z^T] does not grow: bisection on the spectral radius of T.

    ``mean`` is the k x k mean Hessian in the subspace, ``covariance`` = E[D (x) D] of the batch
    deviations there (k^2 x k^2). None when the subspace holds no positive curvature (no step is
    stable there, or every one is: the threshold is not defined by it)."""
    mean = np.asarray(mean, dtype=float)
    mean = 0.5 * (mean + mean.T) + weight_decay * np.eye(len(mean))
    covariance = np.asarray(covariance, dtype=float)
    if np.linalg.eigvalsh(mean)[0] <= 0:
        return None
    # the noiseless threshold bounds it from above: noise only adds a positive map
    hi = quadratic_threshold(optimizer, float(np.linalg.eigvalsh(mean)[-1]), momentum)
    if not np.any(covariance):  # no noise: the radius is that of A squared, the threshold in closed form
        return hi

    def stable(lr: float) -> bool:
        return spectral_radius(optimizer, lr, momentum, mean, covariance) < 1.0

    if stable(hi):  # rounding at the noiseless boundary itself
        return hi
    lo = hi / 2
    for _ in range(60):  # down to 2^-60 of the noiseless threshold: below that no step is stable
        if stable(lo):
            break
        hi, lo = lo, lo / 2
    else:
        return None
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


def adam_mean_square_threshold(mean: np.ndarray, covariance: np.ndarray, beta1: float,
                               rtol: float = 1e-3) -> float | None:
    """Adam with a settled second moment: heavy ball with rho = beta1 and step lr (1 - beta1) on the
    preconditioned batch operators D^-1/2 H_B D^-1/2 (``mean``, ``covariance`` in their subspace)."""
    step = mean_square_threshold("momentum", mean, covariance, momentum=beta1, rtol=rtol)
    return step / (1.0 - beta1) if step is not None else None
