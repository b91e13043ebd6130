"""Extremal eigenvalues with Ritz residuals: Lanczos (default) or power iteration.

Lanczos with full reorthogonalisation, one probe: after m steps the Ritz pairs (theta_i, y_i = Q_m u_i)
of T_m satisfy |A y_i - theta_i y_i| = beta_m |u_i[m-1]| (the Ritz residual). A requested pair is
converged when its residual <= max(tol * |theta_i|, 10 eps |A|) -- the second term is the
attainable floor for eigenvalues near zero; the eigenvalue error is then at most residual^2 / gap.
Runs stop when all requested pairs converge, when the whole space is spanned, or at
``max_steps``; unconverged pairs are flagged, never hidden.

On breakdown (an invariant Krylov subspace: an eigenvalue of multiplicity > 1, or a start
vector with no component on some eigenvectors) Lanczos restarts from a random vector orthogonal
to its basis. After a restart the run stops only once the new block's own extreme Ritz values
have converged strictly inside the requested ones: the rest of the space then holds no further
copy, and repeated eigenvalues are reported with their multiplicity. Before any breakdown a
single-vector Krylov space cannot tell a repeated eigenvalue from a simple one; exact
multiplicities are found as the breakdowns come.

Power iteration finds the dominant (largest |lambda|) eigenvalue; algebraic ends are reached
on shifted positive semi-definite operators A - s I (s <= lambda_min) and s I - A (s >= lambda_max),
with deflation against found vectors for k > 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..operators.base import CurvatureOperator, ShiftedOperator
from ..results import KernelResult, not_serialised, saveable
from ..seeds import derive
from .lanczos import LanczosProcess
from .probes import random_probes
from .quadrature import tridiagonal_eigenpairs


@saveable
@dataclass(frozen=True, kw_only=True)
class EigenResult(KernelResult):
    """Top (descending) and bottom (ascending, algebraic) eigenvalues, residuals, converged flags.

    ``top_eigenvectors`` / ``bottom_eigenvectors`` (rows, unit norm) when requested; not in JSON.
    """

    method: str
    size: int
    tol: float
    n_steps: int
    top_eigenvalues: np.ndarray
    top_residuals: np.ndarray
    top_converged: np.ndarray
    bottom_eigenvalues: np.ndarray
    bottom_residuals: np.ndarray
    bottom_converged: np.ndarray
    warnings: tuple[str, ...] = ()
    basis_memory: dict[str, object] | None = None
    top_eigenvectors: Tensor | None = not_serialised()
    bottom_eigenvectors: Tensor | None = not_serialised()

    @property
    def converged(self) -> bool:
        return bool(np.all(self.top_converged) and np.all(self.bottom_converged))

    @property
    def notes(self) -> list[str]:
        """The run's warnings, plus one line when a wanted eigenpair did not converge."""
        notes = list(self.warnings)
        if not self.converged:
            notes.append(f"extremal eigenvalues not converged to tol {self.tol:g} ({self.method}, {self.n_steps} "
                         "steps in all); see top_converged / bottom_converged and the residuals")
        return notes


def _check_counts(op: CurvatureOperator, top_k: int, bottom_k: int) -> None:
    """A kernel's own guard (analysis.eigenvalues.check_counts says it to users, by their settings)."""
    if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
        raise ValueError(f"ask for at least one eigenvalue (top_k={top_k}, bottom_k={bottom_k})")
    if top_k + bottom_k > op.size:
        raise ValueError(f"cannot find {top_k} + {bottom_k} eigenvalues of a {op.size} x {op.size} operator")


def _floor(dtype: torch.dtype, scale: float) -> float:
    """The smallest residual rounding lets a product of size ``scale`` reach."""
    return 10 * torch.finfo(dtype).eps * scale


def _no_copies_left(process: LanczosProcess, theta: np.ndarray, top: np.ndarray, bottom: np.ndarray, accepted) -> bool:
    """After a restart, the block since the last restart spans a random part of the remaining
    invariant space: once its own extreme Ritz values converge strictly inside the requested
    ones (by more than the residual floor), no further copy of them is left to find."""
    if process.restarts[0] == 0:
        return True
    if process.block_start[0] >= len(process.alphas[0]):  # restarted, no step taken in the new block yet
        return False
    block, residuals, _ = _ritz(process, int(process.block_start[0]))
    ok = accepted(block, residuals)
    margin = _floor(process.op.product_dtype, process.scale[0])
    top_clear = not len(top) or (ok[-1] and block[-1] < theta[top[-1]] - margin)
    bottom_clear = not len(bottom) or (ok[0] and block[0] > theta[bottom[-1]] + margin)
    return bool(top_clear and bottom_clear)


def _measured_residuals(op: CurvatureOperator, process: LanczosProcess, theta: np.ndarray, residuals: np.ndarray,
                        U: np.ndarray, idx: np.ndarray, accepted) -> tuple[np.ndarray, np.ndarray, int]:
    """The residuals of the Ritz pairs ``idx`` as max(estimate, |A y - theta y| measured with one
    product per pair, in float64 arithmetic): in float32 the estimate can reach 0.0 while the
    eigenvalues are off by 1e-5 (issue 19); the flags follow the measured residuals. Also the
    products it took."""
    if not len(idx) or process.basis is None:
        return residuals, accepted(theta, residuals), 0
    y = process.ritz_vectors(0, U[:, idx])
    measured = (op.matmat(y).double() - torch.as_tensor(theta[idx], device=y.device)[:, None] * y.double()).norm(dim=1)
    residuals = residuals.copy()
    residuals[idx] = np.maximum(residuals[idx], measured.cpu().numpy() / y.double().norm(dim=1).cpu().numpy())
    return residuals, accepted(theta, residuals), len(idx)


def _ritz(process: LanczosProcess, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz values (ascending), residuals and eigenvectors of T (from step ``start``) for probe 0."""
    theta, U = tridiagonal_eigenpairs(*process.tridiagonal(0, start))
    return theta, np.abs(process.residual_norm(0) * U[-1]), U


def default_max_steps(size: int, wanted: int, max_steps: int | None = None) -> int:
    """Lanczos step budget: 300 or 20 per wanted eigenvalue, at least ``wanted``, at most P."""
    return min(size, max(max_steps or max(300, 20 * wanted), wanted))


def lanczos_eigs(
    op: CurvatureOperator,
    top_k: int = 1,
    bottom_k: int = 0,
    *,
    tol: float = 1e-6,
    max_steps: int | None = None,
    seed: int = 0,
    check_every: int = 1,
    return_eigenvectors: bool = False,
    basis: str = "auto",
    start: Tensor | None = None,
    measure_residuals: bool = True,
) -> EigenResult:
    """Top-k and bottom-k algebraic eigenpairs by Lanczos with full reorthogonalisation
    (``basis``: where the basis lives, 'auto', 'device' or 'host'). ``start`` (1 x P): the first
    Lanczos vector instead of a seeded random one -- e.g. the last top eigenvector, to warm-start
    a measurement repeated as training moves. ``measure_residuals=False`` skips the float32 check
    of each residual by one product (for a ``tol`` far above float32 rounding, e.g. 1e-2)."""
    _check_counts(op, top_k, bottom_k)
    t0 = time.perf_counter()
    wanted = top_k + bottom_k
    max_steps = default_max_steps(op.size, wanted, max_steps)
    if start is None:
        start = random_probes(1, op.size, seed=seed, dtype=op.dtype, device=op.device)
    else:
        start = start.reshape(1, op.size).to(device=op.device, dtype=op.dtype)
    process = LanczosProcess(op, start, reorth="full", capacity=min(max_steps + 1, 64), restart=True,
                             seed=derive(seed, "eigs-restart"), basis=basis)

    def accepted(theta: np.ndarray, residuals: np.ndarray) -> np.ndarray:
        return residuals <= np.maximum(tol * np.abs(theta), _floor(op.product_dtype, process.scale[0]))

    while True:
        process.step()
        m = process.steps
        if not (process.done or m >= max_steps or (m >= wanted and m % check_every == 0)):
            continue
        theta, residuals, U = _ritz(process)
        ok = accepted(theta, residuals)
        top = np.arange(len(theta) - 1, len(theta) - 1 - top_k, -1)
        bottom = np.arange(bottom_k)
        complete = ok[top].all() and ok[bottom].all() and _no_copies_left(process, theta, top, bottom, accepted)
        if complete or process.done or m >= max_steps:
            break

    warnings = ()
    if not complete and not process.done and process.restarts[0]:
        warnings = (f"stopped at max_steps={max_steps} after {process.restarts[0]} breakdown(s): "
                    "further copies of repeated eigenvalues may exist",)
    warnings += tuple(process.health_warnings(breakdowns=False))  # breakdowns restart here: expected

    checked = 0
    if op.product_dtype != torch.float64 and measure_residuals:  # the estimate beta |u_m| ignores rounding
        residuals, ok, checked = _measured_residuals(op, process, theta, residuals, U, np.concatenate([top, bottom]),
                                                     accepted)

    def vectors(idx: np.ndarray) -> Tensor | None:
        return process.ritz_vectors(0, U[:, idx]) if return_eigenvectors and len(idx) else None

    return EigenResult(
        method="lanczos",
        size=op.size,
        tol=tol,
        n_steps=process.steps,
        top_eigenvalues=theta[top],
        top_residuals=residuals[top],
        top_converged=ok[top],
        bottom_eigenvalues=theta[bottom],
        bottom_residuals=residuals[bottom],
        bottom_converged=ok[bottom],
        top_eigenvectors=vectors(top),
        bottom_eigenvectors=vectors(bottom),
        warnings=warnings,
        basis_memory=process.basis_memory,
        n_products=process.n_products + checked,
        wall_time_s=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class _PowerOutcome:
    values: list[float]
    residuals: list[float]
    converged: list[bool]
    vectors: list[Tensor]
    n_products: int
    n_steps: int


def _deflated_power(
    op: CurvatureOperator, k: int, *, tol: float, max_iter: int, seed: int, offset: float = 0.0, floor: float = 0.0
) -> _PowerOutcome:
    """Dominant k eigenpairs, one at a time, each orthogonal to those found before.

    Converged when |A v - theta v| <= max(tol |theta - offset|, floor) (offset undoes a shift).
    The reported residual is |A v - theta v| on A itself, not on the deflated operator.
    """
    found: list[Tensor] = []
    values, residuals, converged = [], [], []
    products = steps = 0
    for i in range(k):
        v = random_probes(1, op.size, seed=derive(seed, "power-start", i), dtype=op.dtype, device=op.device,
                          distribution="gaussian")[0]
        theta, residual, ok = 0.0, float("inf"), False
        for _ in range(max_iter):
            for u in found:
                v = v - (u @ v) * u
            v = v / v.norm()
            w = op.matvec(v)
            for u in found:
                w = w - (u @ w) * u
            products += 1
            steps += 1
            theta = float(v @ w)
            residual = float((w - theta * v).norm())
            if residual <= max(0.1 * tol * abs(theta - offset), floor):  # margin for inexact deflation
                ok = True
                break
            v = w
        v = v / v.norm()
        residual = float((op.matvec(v) - theta * v).norm())
        products += 1
        values.append(theta)
        residuals.append(residual)
        converged.append(ok and residual <= max(tol * abs(theta - offset), floor))
        found.append(v)
    return _PowerOutcome(values, residuals, converged, found, products, steps)


def power_eigs(
    op: CurvatureOperator,
    top_k: int = 1,
    bottom_k: int = 0,
    *,
    tol: float = 1e-6,
    max_iter: int = 1000,
    seed: int = 0,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """Top-k and bottom-k algebraic eigenpairs by shifted, deflated power iteration.

    First the dominant eigenvalue d (|d| >= |lambda| for all lambda); then power iteration on
    A - s I with s = -|d| (top end) and on |d| I - A (bottom end), both PSD.
    """
    _check_counts(op, top_k, bottom_k)
    t0 = time.perf_counter()
    dominant = _deflated_power(op, 1, tol=tol, max_iter=max_iter, seed=seed)
    radius = abs(dominant.values[0]) * (1 + 1e-3)
    floor = _floor(op.product_dtype, radius)
    outcomes = {}
    for end, count, scale in (("top", top_k, 1.0), ("bottom", bottom_k, -1.0)):
        if count:
            shifted = ShiftedOperator(op, shift=radius, scale=scale)  # A + r I  or  r I - A
            out = _deflated_power(
                shifted, count, tol=tol, max_iter=max_iter, seed=derive(seed, "power-shifted"), offset=radius,
                floor=floor
            )
            vals = [scale * (v - radius) for v in out.values]
            # a shift leaves residuals unchanged: |(A + r I) v - (theta + r) v| = |A v - theta v|
            outcomes[end] = (vals, out, out.converged)

    def part(end: str, reverse: bool):
        if end not in outcomes:
            empty = np.zeros(0)
            return empty, empty, np.zeros(0, dtype=bool), None
        vals, out, ok = outcomes[end]
        order = np.argsort(vals)[::-1] if reverse else np.argsort(vals)
        vecs = torch.stack([out.vectors[i] for i in order]) if return_eigenvectors else None
        return np.asarray(vals)[order], np.asarray(out.residuals)[order], np.asarray(ok)[order], vecs

    top = part("top", reverse=True)
    bottom = part("bottom", reverse=False)
    products = dominant.n_products + sum(o[1].n_products for o in outcomes.values())
    return EigenResult(
        method="power",
        size=op.size,
        tol=tol,
        n_steps=dominant.n_steps + sum(o[1].n_steps for o in outcomes.values()),
        top_eigenvalues=top[0],
        top_residuals=top[1],
        top_converged=top[2],
        bottom_eigenvalues=bottom[0],
        bottom_residuals=bottom[1],
        bottom_converged=bottom[2],
        top_eigenvectors=top[3],
        bottom_eigenvectors=bottom[3],
        n_products=products,
        wall_time_s=time.perf_counter() - t0,
    )


METHODS = {"lanczos": lanczos_eigs, "power": power_eigs}


def extremal_eigs(op: CurvatureOperator, top_k: int = 1, bottom_k: int = 0, *, method: str = "lanczos",
                  **kwargs) -> EigenResult:
    """Extremal eigenpairs by 'lanczos' (default, much faster) or 'power' iteration."""
    if method not in METHODS:
        raise ValueError(f"unknown eigen method {method!r}: use one of {sorted(METHODS)}")
    return METHODS[method](op, top_k, bottom_k, **kwargs)
