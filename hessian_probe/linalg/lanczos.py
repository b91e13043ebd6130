"""Lanczos on k probes in lockstep, with full reorthogonalisation by default.

For each probe, starting from q_1 = z / |z|:
    w = A q_j - beta_{j-1} q_{j-1};  alpha_j = w . q_j;  w -= alpha_j q_j
    (full: w -= Q (Q^T w), done twice);  beta_j = |w|;  q_{j+1} = w / beta_j
giving the tridiagonal T_m = tridiag(beta, alpha, beta) with A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T.
A probe stops on breakdown, beta_j <= breakdown_tol * max(|alpha|, beta) (default 10 eps of the
dtype: rounding level, so a small but genuine beta never stops a run early): its Krylov space is
invariant and T is exact. With ``restart=True`` (used for eigenvalues) a broken-down probe goes on
from a random vector orthogonal to its basis, with a zero coupling in T, so eigenvalues outside
the invariant subspace, and further copies of repeated ones, are still found. alpha and beta are
kept in float64 whatever the operator's dtype; the basis is kept in the operator's dtype on its
device when it fits (at most half the free device memory), else in pinned host memory, streamed
to the device in slices for the reorthogonalisation (slower, but it runs); ``basis='device'`` or
``'host'`` forces either, and ``basis_memory`` says which. All k probes share one ``matmat`` per
step. ``reorth='none'`` keeps no basis at all (memory O(kP)): right for densities and traces,
whose ghost copies of converged outliers share the outlier's true weight, wrong for eigenvalue
lists and counts (Paige 1971; Ghorbani et al. 2019, section 2.2).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..dtypes import SUPPORTED_DTYPES
from ..errors import NonFiniteError
from ..operators.base import CurvatureOperator
from ..protocols import SOLO, Group
from ..results import KernelResult, not_serialised, saveable
from ..seeds import derive
from .probes import random_probes

REORTHOGONALISATION = ("full", "none")


def default_breakdown_tol(dtype: torch.dtype) -> float:
    return 10 * torch.finfo(dtype).eps


DEVICE_BASIS_FRACTION = 0.5  # the largest share of free device memory a basis may take
HOST_BASIS_FRACTION = 0.8  # the largest share of the available host memory a basis (or its growth) may take


def host_rows_that_fit(row_bytes: int) -> int | None:
    """Basis rows (k vectors of P each) that HOST_BASIS_FRACTION of the available memory holds now
    (None where the system does not say)."""
    from ..operators.memory import available_memory

    available = available_memory()
    return None if available is None else int(HOST_BASIS_FRACTION * available // max(row_bytes, 1))
BASIS_PLACES = ("auto", "device", "host")


def allocate_basis(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, place: str = "auto",
                   group: Group = SOLO) -> Tensor:
    """Zeros for the basis: ``place='auto'`` puts them on ``device`` if they take at most
    DEVICE_BASIS_FRACTION of its free memory (always on a CPU), else in pinned host memory;
    'device' and 'host' force either (host memory is pinned when ``device`` is a GPU).
    Every process of ``group`` decides alike, by the smallest free memory of all."""
    if place not in BASIS_PLACES:
        raise ValueError(f"basis place must be one of {BASIS_PLACES}, got {place!r}")
    device = torch.device(device)
    if device.type == "cuda" and place != "device":
        nbytes = math.prod(shape) * dtype.itemsize
        free = torch.cuda.mem_get_info(device)[0]
        free = group.smallest(free)
        if place == "host" or nbytes > free * DEVICE_BASIS_FRACTION:
            return torch.zeros(shape, dtype=dtype, pin_memory=True)
    return torch.zeros(shape, dtype=dtype, device=device)


def project(Q: Tensor, w: Tensor, rows_per_slice: int = 16) -> Tensor:
    """Q Q^T w per probe: sum_j (q_jk . w_k) q_jk for a basis Q (j, k, P) and rows w (k, P).

    One probe at a time, as two matrix-vector products on a strided view of Q (no copy of the
    basis, whose size dominates memory). A basis held in host memory is streamed to w's device
    in slices of ``rows_per_slice`` basis vectors."""
    out = torch.empty_like(w)
    for i in range(w.shape[0]):
        if Q.device == w.device:
            out[i] = Q[:, i].T @ (Q[:, i] @ w[i])
            continue
        slices = (Q[a : a + rows_per_slice, i].to(w.device, non_blocking=True)
                  for a in range(0, len(Q), rows_per_slice))
        out[i] = sum(q.T @ (q @ w[i]) for q in slices)  # sum over slices of Q_s Q_s^T w: one pass
    return out


class LanczosProcess:
    """Stepwise Lanczos state for k probes. Kernels drive it; users call :func:`lanczos`."""

    def __init__(
        self,
        op: CurvatureOperator,
        start: Tensor,
        *,
        reorth: str = "full",
        breakdown_tol: float | None = None,
        capacity: int = 32,
        restart: bool = False,
        seed: int = 0,
        basis: str = "auto",
        first_probe: int = 0,
    ) -> None:
        if op.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"Lanczos needs float32 or float64 products, got {op.dtype}: half precision is too coarse")
        if restart and reorth != "full":
            raise ValueError("restarting after breakdown needs full reorthogonalisation")
        if reorth not in REORTHOGONALISATION:
            raise ValueError(f"reorth must be one of {REORTHOGONALISATION}, got {reorth!r}")
        start = start.to(device=op.device, dtype=op.dtype)
        norms = start.norm(dim=1, keepdim=True)
        if not torch.all(norms > 0):
            raise ValueError("a Lanczos start vector is zero")
        self.op, self.reorth = op, reorth
        self.breakdown_tol = breakdown_tol if breakdown_tol is not None else default_breakdown_tol(op.product_dtype)
        self.k = start.shape[0]
        self.restart, self.seed, self.first_probe = restart, seed, first_probe
        self.restarts = np.zeros(self.k, dtype=int)
        self.block_start = np.zeros(self.k, dtype=int)  # first step of the block since the last restart
        self.alphas: list[list[float]] = [[] for _ in range(self.k)]
        self.betas: list[list[float]] = [[] for _ in range(self.k)]
        self.active = np.ones(self.k, dtype=bool)
        self.broke_down = np.zeros(self.k, dtype=bool)
        self.scale = np.zeros(self.k)  # running max(|alpha|, beta): the size of A seen so far
        self.n_products = 0
        self.steps = 0
        self.current = start / norms
        self.previous = torch.zeros_like(self.current)
        self.basis: Tensor | None = None
        if reorth == "full":
            self.place = basis
            capacity = max(capacity, 2)
            if self._on_host():  # a basis that cannot fit is a clear error, never the kernel's OOM killer
                fit = host_rows_that_fit(self._row_bytes())
                if fit is not None:
                    if fit < 2:
                        raise self._too_big(0, fit)
                    capacity = min(capacity, fit)
            self.basis = allocate_basis((capacity, self.k, op.size), op.dtype, op.device, basis, op.group)
            self.basis[0] = self.current

    @property
    def done(self) -> bool:
        return not self.active.any()

    def step(self) -> None:
        """One Lanczos step for every active probe (one matmat on the active rows)."""
        rows = np.flatnonzero(self.active)
        every = len(rows) == self.k
        index = slice(None) if every else torch.as_tensor(rows, device=self.op.device)
        j = self.steps
        q = self.current[index]
        try:
            w = self.op.matmat(q)
        except NonFiniteError as exc:
            probes = [int(rows[r]) + self.first_probe for r in exc.rows]
            raise NonFiniteError(exc.what, exc.where, probes, row_name="probe", step=j + 1) from None
        self.n_products += len(rows)
        beta_prev = torch.tensor(
            [self.betas[r][j - 1] if j else 0.0 for r in rows], dtype=w.dtype, device=w.device
        )
        w = w - beta_prev[:, None] * self.previous[index]  # a new tensor: never alias the product
        alpha = (w * q).sum(dim=1)
        w -= alpha[:, None] * q
        if self.basis is not None:
            on_host = self.basis.device != w.device
            Q = self.basis[: j + 1] if every else self.basis[: j + 1, index.cpu() if on_host else index]
            for _ in range(2):
                w -= project(Q, w)
        beta = w.norm(dim=1)

        alpha64 = alpha.double().cpu().numpy()
        beta64 = beta.double().cpu().numpy()
        if self.op.collective:  # every rank takes rank 0's coefficients: the same stops, restarts, steps
            alpha64, beta64 = self.op.group.broadcast_from_main((alpha64, beta64))
        if not (np.isfinite(alpha64).all() and np.isfinite(beta64).all()):
            failed = np.flatnonzero(~(np.isfinite(alpha64) & np.isfinite(beta64)))
            bad = [int(rows[i]) + self.first_probe for i in failed]
            raise NonFiniteError("a Lanczos coefficient", "(overflow)", bad, row_name="probe", step=j + 1)
        self.scale[rows] = np.maximum(self.scale[rows], np.maximum(np.abs(alpha64), beta64))
        stopped = beta64 <= self.breakdown_tol * self.scale[rows]
        safe_beta = torch.where(beta > 0, beta, torch.ones_like(beta))
        nxt = w / safe_beta[:, None]
        for i, r in enumerate(rows):
            self.alphas[r].append(float(alpha64[i]))
            self.betas[r].append(float(beta64[i]))
        for i in np.flatnonzero(stopped):
            fresh = self._restart_vector(rows[i]) if self.restart else None
            if fresh is None:
                self.broke_down[rows[i]] = True
                self.active[rows[i]] = False
            else:
                nxt[i] = fresh
                self.betas[rows[i]][-1] = 0.0  # T splits into independent blocks
                self.restarts[rows[i]] += 1
                self.block_start[rows[i]] = len(self.alphas[rows[i]])
        self.steps += 1

        self.previous[index] = q
        self.current[index] = nxt
        if self.basis is not None:
            self._store(self.steps, index, nxt)

    def _restart_vector(self, probe: int) -> Tensor | None:
        """A random unit vector orthogonal to the probe's basis, or None if the basis spans R^P."""
        m = len(self.alphas[probe])
        if m >= self.op.size:
            return None
        generator = torch.Generator().manual_seed(derive(self.seed, "lanczos-restart", probe, m))
        v = torch.randn(self.op.size, generator=generator, dtype=torch.float64).to(self.op.dtype).to(self.op.device)
        Q = self.basis[:m, probe].to(self.op.device)
        for _ in range(2):
            v = v - Q.T @ (Q @ v)
        norm = v.norm()
        return v / norm if norm > 1e-3 else None

    def _on_host(self) -> bool:
        return self.op.device.type == "cpu" or self.place == "host"

    def _row_bytes(self) -> int:
        return self.k * self.op.size * self.op.dtype.itemsize

    def _too_big(self, held: int, fit: int) -> Exception:
        from ..errors import InputError

        row = self._row_bytes()
        return InputError(f"the Lanczos basis needs another {row / 2**30:.2f} GiB per step ({self.k} vector(s) of "
                          f"{self.op.size:,} parameters) and holds {held} step(s); the memory left holds {max(fit, 0)} "
                          "more: ask for fewer steps (`max_steps`) or fewer eigenvalues, use float32, or the power "
                          "method (`method` power), which keeps no basis")

    def _store(self, j: int, index: slice | Tensor, vectors: Tensor) -> None:
        if j >= self.basis.shape[0]:
            rows = 2 * self.basis.shape[0]
            if self._on_host():  # the new basis is allocated while the old one still exists
                fit = host_rows_that_fit(self._row_bytes())
                if fit is not None:
                    rows = min(rows, fit)
                    if rows <= self.basis.shape[0]:
                        raise self._too_big(self.basis.shape[0], rows - self.basis.shape[0])
            grown = allocate_basis((rows, *self.basis.shape[1:]), self.basis.dtype, self.op.device,
                                   self.place, self.op.group)
            grown[: self.basis.shape[0]] = self.basis.to(grown.device)
            self.basis = grown
        if self.basis.device != vectors.device and not isinstance(index, slice):
            index = index.cpu()
        self.basis[j, index] = vectors.to(self.basis.device)

    def orthogonality_error(self, probe: int, slice_bytes: int = 1 << 27) -> float:
        """max |Q^T Q - I| over the probe's stored basis vectors (0 without a basis): the Gram matrix
        accumulated in float64 (in float32 its own rounding, ~sqrt(P) eps, could trip the sqrt(eps)
        test on a basis that is orthogonal to 2e-5), over column slices of at most ``slice_bytes``
        (128 MiB), so a host basis streams and a device one needs no copy."""
        m = len(self.alphas[probe]) if self.broke_down[probe] else len(self.alphas[probe]) + 1
        if self.basis is None or m < 2:
            return 0.0
        m = min(m, self.steps + 1)
        columns = max(1, slice_bytes // (m * 8))
        gram = torch.zeros(m, m, dtype=torch.float64, device=self.op.device)
        for a in range(0, self.op.size, columns):
            q = self.basis[:m, probe, a : a + columns].to(self.op.device, torch.float64, non_blocking=True)
            gram += q @ q.T
        return float((gram - torch.eye(m, dtype=gram.dtype, device=gram.device)).abs().max())

    def health_warnings(self, *, breakdowns: bool = True) -> list[str]:
        """Breakdowns (the Krylov space is invariant: harmless, the tridiagonal is exact) and loss of
        orthogonality beyond sqrt(eps) (Ritz values may then repeat or drift: a warning that matters)."""
        notes = []
        tol = math.sqrt(torch.finfo(self.op.dtype).eps)
        for probe in range(self.k):
            label = f"probe {self.first_probe + probe}"
            if breakdowns and self.broke_down[probe]:
                notes.append(f"{label}: Lanczos broke down at step {len(self.alphas[probe])} (its Krylov space is "
                             "invariant; its tridiagonal is exact)")
            error = self.orthogonality_error(probe)
            if error > tol:
                notes.append(f"{label}: the Lanczos basis lost orthogonality (max |Q^T Q - I| = {error:.1e} > "
                             f"{tol:.1e}); its Ritz values may repeat or drift: use float64")
        return notes

    @property
    def basis_memory(self) -> dict[str, object] | None:
        """Bytes held by the Lanczos basis and where (None without reorthogonalisation)."""
        if self.basis is None:
            return None
        pinned = self.basis.device.type == "cpu" and self.op.device.type != "cpu"
        where = str(self.basis.device) + (" (pinned host memory)" if pinned else "")
        return {"bytes": self.basis.numel() * self.basis.element_size(), "device": where}

    def tridiagonal(self, probe: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(diagonal alpha, off-diagonal beta) of probe's T_m from step ``start`` on, float64."""
        a = np.asarray(self.alphas[probe][start:])
        return a, np.asarray(self.betas[probe][start : start + len(a) - 1])

    def residual_norm(self, probe: int) -> float:
        """beta_m: the norm of the part of A Q_m outside the Krylov space (0 on breakdown)."""
        return 0.0 if self.broke_down[probe] else self.betas[probe][-1]

    def ritz_vectors(self, probe: int, coefficients: np.ndarray) -> Tensor:
        """Q_m @ coefficients (m x r) as rows (r x P); needs the stored basis."""
        if self.basis is None:
            raise RuntimeError("Ritz vectors need the basis: run with reorth='full'")
        m = len(self.alphas[probe])
        c = torch.as_tensor(coefficients, dtype=self.op.dtype, device=self.basis.device)
        return (c.T @ self.basis[:m, probe]).to(self.op.device)


@saveable
@dataclass(frozen=True, kw_only=True)
class LanczosResult(KernelResult):
    """Per-probe tridiagonals: ``alphas[l]`` (m_l), ``betas[l]`` (m_l; the last is the residual norm)."""

    alphas: tuple[np.ndarray, ...]
    betas: tuple[np.ndarray, ...]
    broke_down: tuple[bool, ...]
    reorth: str
    size: int
    basis_memory: dict[str, object] | None = None
    warnings: tuple[str, ...] = ()
    basis: Tensor | None = not_serialised()

    @property
    def n_steps(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.alphas)


def lanczos(
    op: CurvatureOperator,
    n_steps: int,
    *,
    n_probes: int = 1,
    start: Tensor | None = None,
    seed: int = 0,
    reorth: str = "full",
    breakdown_tol: float | None = None,
    keep_basis: bool = False,
    basis: str = "auto",
    first_probe: int = 0,
) -> LanczosResult:
    """Run ``n_steps`` Lanczos steps on ``n_probes`` seeded Rademacher probes (or ``start``, k x P).

    Returns the float64 tridiagonals; ``keep_basis`` also returns the basis (m+1, k, P), whose
    row j holds q_{j+1} of each probe (full reorthogonalisation only). ``basis`` places it:
    'auto' (device when it fits), 'device' or 'host'. ``warnings`` name breakdowns and any loss
    of orthogonality, numbering probes from ``first_probe``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    t0 = time.perf_counter()
    if start is None:
        start = random_probes(n_probes, op.size, seed=seed, dtype=op.dtype, device=op.device)
    n_steps = min(n_steps, op.size)
    process = LanczosProcess(op, start, reorth=reorth, breakdown_tol=breakdown_tol, capacity=n_steps + 1, basis=basis,
                             first_probe=first_probe)
    while process.steps < n_steps and not process.done:
        process.step()
    return LanczosResult(
        alphas=tuple(np.asarray(a) for a in process.alphas),
        betas=tuple(np.asarray(b) for b in process.betas),
        broke_down=tuple(bool(b) for b in process.broke_down),
        reorth=reorth,
        size=op.size,
        basis_memory=process.basis_memory,
        warnings=tuple(process.health_warnings()),
        basis=process.basis[: process.steps + 1] if keep_basis and process.basis is not None else None,
        n_products=process.n_products,
        wall_time_s=time.perf_counter() - t0,
    )
