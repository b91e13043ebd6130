"""Gauss quadrature from Lanczos tridiagonals and stochastic Lanczos quadrature (SLQ).

eigh(T_m) = (theta, U) gives nodes theta_k and weights omega_k = U[0, k]^2 (summing to 1) with
    sum_k omega_k theta_k^j = q_1^T A^j q_1   for j <= 2m - 1.
SLQ averages the quadrature measures of n_v random probes; it estimates the spectral density
    phi(t) = (1/P) sum_i delta(t - lambda_i) ~ (1/n_v) sum_l sum_k omega_k^(l) delta(t - theta_k^(l))
and the trace tr A ~ P * mean_l sum_k omega_k^(l) theta_k^(l). The smoothed density convolves the
measure with a unit-mass Gaussian (Ghorbani, Krishnan & Xiao 2019: variance 1e-5 * max(1, range),
10,000 grid points on [min - 0.01, max + 0.01]). The nodes and weights are the estimate; the
curve is a view of it. Error: Chen, Trogdon & Ubaru (ICML 2021).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import eigh_tridiagonal
from torch import Tensor

from ..operators.base import CurvatureOperator
from ..results import KernelResult, saveable
from .lanczos import LanczosResult, lanczos
from .probes import random_probes


def tridiagonal_eigenpairs(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the tridiagonal (alphas, betas[:m-1])."""
    alphas = np.asarray(alphas, dtype=np.float64)
    off = np.asarray(betas, dtype=np.float64)[: len(alphas) - 1]
    if len(alphas) == 1:
        return alphas.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alphas, off)


def gauss_quadrature(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (ascending) and weights of the Gauss rule of the tridiagonal (alphas, betas[:m-1])."""
    nodes, vectors = tridiagonal_eigenpairs(alphas, betas)
    return nodes, vectors[0] ** 2


@dataclass(frozen=True, kw_only=True)
class SpectralDensity:
    """A smoothed density phi on a grid (integrates to about 1) and the kernel variance used."""

    grid: np.ndarray
    values: np.ndarray
    variance: float


def smoothed_density(
    nodes: np.ndarray,
    weights: np.ndarray,
    *,
    grid: np.ndarray | None = None,
    n_points: int = 10_000,
    variance: float | None = None,
) -> SpectralDensity:
    """Gaussian-kernel density of the measure sum_k weights_k delta(theta_k) (weights sum to 1)."""
    nodes, weights = np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    lo, hi = float(nodes.min()), float(nodes.max())
    if variance is None:
        variance = 1e-5 * max(1.0, hi - lo)
    if grid is None:
        grid = np.linspace(lo - 0.01, hi + 0.01, n_points)
    grid = np.asarray(grid, dtype=np.float64)
    values = np.zeros_like(grid)
    norm = 1.0 / math.sqrt(2.0 * math.pi * variance)
    for start in range(0, len(nodes), 256):  # bounded memory: grid x 256 at a time
        t, w = nodes[start : start + 256], weights[start : start + 256]
        values += norm * (np.exp(-((grid[:, None] - t[None, :]) ** 2) / (2.0 * variance)) @ w)
    return SpectralDensity(grid=grid, values=values, variance=variance)


@saveable
@dataclass(frozen=True, kw_only=True)
class SLQResult(KernelResult):
    """Per-probe Gauss rules of A's spectral measure and the trace they imply.

    ``trace_stderr`` is P * std_l(sum_k omega theta) / sqrt(n_v) (None with one probe).
    """

    size: int
    nodes: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...]
    n_steps: tuple[int, ...]
    reorth: str
    seed: int
    trace_estimate: float
    trace_stderr: float | None
    basis_memory: dict[str, object] | None = None
    warnings: tuple[str, ...] = ()

    @property
    def n_probes(self) -> int:
        return len(self.nodes)

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All probes' nodes with weights / n_v: one measure of total mass 1, sorted."""
        return pool_probes(self.nodes, self.weights)

    def cdf(self, t: np.ndarray) -> np.ndarray:
        """Estimated spectral distribution function F(t) = (1/P) #{lambda_i <= t}."""
        nodes, weights = self.pooled()
        return np.concatenate([[0.0], np.cumsum(weights)])[np.searchsorted(nodes, t, side="right")]

    def density(self, **kwargs) -> SpectralDensity:
        """Smoothed density; keyword arguments as :func:`smoothed_density`."""
        return smoothed_density(*self.pooled(), **kwargs)


def pool_probes(nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe quadrature rules pooled into one measure: all nodes, weights / n_v, sorted."""
    all_nodes = np.concatenate([np.asarray(t, dtype=float) for t in nodes])
    all_weights = np.concatenate([np.asarray(w, dtype=float) for w in weights]) / len(weights)
    order = np.argsort(all_nodes, kind="stable")
    return all_nodes[order], all_weights[order]


def slq(
    op: CurvatureOperator,
    n_steps: int = 100,
    n_probes: int = 8,
    *,
    seed: int = 0,
    reorth: str = "full",
    basis: str = "auto",
    probe_block: int | None = None,
    run_block: Callable[[int, Callable[[], LanczosResult]], LanczosResult] | None = None,
) -> SLQResult:
    """Stochastic Lanczos quadrature with ``n_probes`` Rademacher probes run in lockstep.

    ``reorth='none'`` keeps no Lanczos basis (for models whose basis would not fit): the density
    and the trace stay right, since ghost copies of a converged outlier share its true weight, but
    the nodes are not an eigenvalue list. ``basis`` places the basis ('auto', 'device', 'host').
    ``probe_block`` runs the probes in blocks of that many (default: all at once), each block
    its own Lanczos run on its rows of the same seeded probes; ``run_block(i, run)`` (optional)
    is called to run block i, e.g. to save it or read it back (a protocols.Pieces).
    """
    t0 = time.perf_counter()
    probes = random_probes(n_probes, op.size, seed=seed, dtype=op.dtype, device=op.device)
    block = probe_block or n_probes
    runs = []
    for i, start in enumerate(range(0, n_probes, block)):
        def run(rows: Tensor = probes[start : start + block]) -> LanczosResult:
            return lanczos(op, n_steps, start=rows, reorth=reorth, basis=basis, first_probe=start)
        runs.append(run_block(i, run) if run_block is not None else run())
    alphas = [a for r in runs for a in r.alphas]
    betas = [b for r in runs for b in r.betas]
    rules = [gauss_quadrature(a, b) for a, b in zip(alphas, betas)]
    per_probe = np.array([float(w @ t) for t, w in rules]) * op.size
    stderr = float(per_probe.std(ddof=1) / math.sqrt(n_probes)) if n_probes > 1 else None
    return SLQResult(
        size=op.size,
        nodes=tuple(t for t, _ in rules),
        weights=tuple(w for _, w in rules),
        n_steps=tuple(len(a) for a in alphas),
        reorth=reorth,
        seed=seed,
        trace_estimate=float(per_probe.mean()),
        trace_stderr=stderr,
        basis_memory=runs[0].basis_memory,
        warnings=tuple(w for r in runs for w in r.warnings),
        n_products=sum(r.n_products for r in runs),
        wall_time_s=time.perf_counter() - t0,
    )
