"""Trace estimators with standard errors: Hutchinson and Hutch++.

Hutchinson: tr A ~ (1/m) sum_i z_i^T A z_i with Rademacher z_i; per-probe variance
    2 (|A|_F^2 - sum_i A_ii^2); stderr = sample std / sqrt(m).
Hutch++ (Meyer, Musco, Musco & Woodruff 2021, arXiv 2010.09649), m products: s = m/3 to sketch
Q = orth(A S), s for tr(Q^T A Q), the rest for Hutchinson on the deflated (I - QQ^T) A (I - QQ^T).
Its stderr is that of the Hutchinson part, conditional on the sketch. Its error guarantees cover
positive semi-definite A only; an indefinite Q^T A Q is reported as a warning.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..operators.base import CurvatureOperator
from ..results import KernelResult, saveable
from ..seeds import derive
from .probes import random_probes


@saveable
@dataclass(frozen=True, kw_only=True)
class TraceResult(KernelResult):
    method: str
    estimate: float
    stderr: float | None
    n_probes: int
    seed: int
    warnings: tuple[str, ...] = ()


def _quadratic_forms(op: CurvatureOperator, Z: Tensor, block_size: int, project: Tensor | None = None) -> np.ndarray:
    """z_i^T B z_i for the rows of Z, with B = A or (I - QQ^T) A (I - QQ^T) for Q = project^T."""
    values = []
    for rows in Z.split(block_size):
        if project is not None:
            rows = rows - (rows @ project.T) @ project
        products = op.matmat(rows)
        values.append((rows * products).sum(dim=1).double().cpu().numpy())
    return np.concatenate(values)


def _mean_and_stderr(samples: np.ndarray) -> tuple[float, float | None]:
    stderr = float(samples.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else None
    return float(samples.mean()), stderr


def hutchinson(
    op: CurvatureOperator, n_products: int = 100, *, seed: int = 0, block_size: int = 8
) -> TraceResult:
    """Hutchinson's estimator with ``n_products`` Rademacher probes, ``block_size`` per pass."""
    if n_products < 1:
        raise ValueError(f"n_products must be at least 1, got {n_products}")
    t0 = time.perf_counter()
    Z = random_probes(n_products, op.size, seed=seed, dtype=op.dtype, device=op.device)
    estimate, stderr = _mean_and_stderr(_quadratic_forms(op, Z, block_size))
    return TraceResult(
        method="hutchinson",
        estimate=estimate,
        stderr=stderr,
        n_probes=n_products,
        seed=seed,
        n_products=n_products,
        wall_time_s=time.perf_counter() - t0,
    )


def hutchpp(op: CurvatureOperator, n_products: int = 99, *, seed: int = 0, block_size: int = 8) -> TraceResult:
    """Hutch++ with ``n_products`` products in all (a third sketch, a third exact part, the rest Hutchinson)."""
    if n_products < 3:
        raise ValueError(f"Hutch++ needs at least 3 products, got {n_products}")
    t0 = time.perf_counter()
    s = min(n_products // 3, op.size)
    n_g = n_products - 2 * s
    S = random_probes(s, op.size, seed=seed, dtype=op.dtype, device=op.device)
    AS = torch.cat([op.matmat(rows) for rows in S.split(block_size)])
    Q = torch.linalg.qr(AS.T).Q.T  # rows: orthonormal basis of range(A S)
    AQ = torch.cat([op.matmat(rows) for rows in Q.split(block_size)])
    projected = (Q @ AQ.T).double().cpu().numpy()
    exact_part = float(np.trace(projected))
    G = random_probes(n_g, op.size, seed=derive(seed, "hutchpp-residual"), dtype=op.dtype, device=op.device)
    residual_part, stderr = _mean_and_stderr(_quadratic_forms(op, G, block_size, project=Q))
    warnings = ()
    sym = (projected + projected.T) / 2
    eigs = np.linalg.eigvalsh(sym)
    if eigs.min() < -1e-8 * max(abs(eigs).max(), 1e-300):
        warnings = ("Hutch++ error guarantees hold for PSD operators only; this operator is indefinite",)
    return TraceResult(
        method="hutchpp",
        estimate=exact_part + residual_part,
        stderr=stderr,
        n_probes=n_g,
        seed=seed,
        warnings=warnings,
        n_products=2 * s + n_g,
        wall_time_s=time.perf_counter() - t0,
    )


METHODS = {"hutchinson": hutchinson, "hutchpp": hutchpp}


def trace(op: CurvatureOperator, n_products: int = 100, *, method: str = "hutchpp", **kwargs) -> TraceResult:
    """tr A by 'hutchpp' (default) or 'hutchinson', with standard error."""
    if method not in METHODS:
        raise ValueError(f"unknown trace method {method!r}: use one of {sorted(METHODS)}")
    return METHODS[method](op, n_products, **kwargs)
