"""Batch-size scan: extremal eigenvalues of batch Hessians (or GGNs) as the batch shrinks.

For each batch size B, ``n_batches`` batches are drawn without replacement from the sample,
each with its own seed (SeedSequence of (seed, B, j)), so a batch does not change when the grid
does. The top and bottom eigenvalues of each batch operator come from Lanczos with full
reorthogonalisation, with residuals; optionally also the top eigenvalue of Adam's
preconditioned batch operator D^-1/2 H_B D^-1/2 and an SLQ density per B. The full-sample
operator is measured the same way for reference. (THEORY.md section 3; Granziol et al. 2022.)
Under torchrun the batches are spread over the ranks (each measures its own batches whole) and
the full-sample operator is measured by all ranks together on their shards.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..journal import NO_JOURNAL, Journal
from ..linalg import EigenResult, SLQResult, extremal_eigs, slq
from ..operators import ProductSettings, curvature_operator
from ..operators.preconditioned import PreconditionedOperator
from ..problem import Problem, split_batches
from ..results import saveable, to_jsonable


def effective_noise(batch_size: int, n_samples: int) -> float:
    """x = (N - B) / (B (N - 1)): the variance factor of a batch mean drawn without replacement."""
    return (n_samples - batch_size) / (batch_size * (n_samples - 1)) if n_samples > 1 else 0.0


def default_batch_sizes(n_samples: int, smallest: int = 16) -> list[int]:
    """Powers of two from ``smallest`` below N, then N itself (the full sample)."""
    sizes, b = [], max(1, smallest)
    while b < n_samples:
        sizes.append(b)
        b *= 2
    return sizes + [n_samples]


def batch_indices(n_samples: int, batch_size: int, seed: int, index: int) -> Tensor:
    """The ``index``-th random batch of size B: its own seed from (seed, B, index)."""
    state = int(np.random.SeedSequence([seed, batch_size, index]).generate_state(1)[0])
    return torch.randperm(n_samples, generator=torch.Generator().manual_seed(state))[:batch_size]


@saveable
@dataclass(frozen=True, kw_only=True)
class BatchMeasurement:
    """One batch: its extremal eigenvalues (with residuals) and, if asked, Adam's sharpness."""

    batch_size: int
    index: int
    eigs: EigenResult
    adam_sharpness: float | None = None
    adam_converged: bool | None = None
    density: SLQResult | None = None

    @property
    def lambda_max(self) -> float:
        return float(self.eigs.top_eigenvalues[0])

    @property
    def lambda_min(self) -> float:
        return float(self.eigs.bottom_eigenvalues[0])


@dataclass(frozen=True, kw_only=True)
class BatchSizeSummary:
    batch_size: int
    x: float
    n_batches: int
    lambda_max: list[float]
    lambda_min: list[float]
    adam_sharpness: list[float] | None
    converged: bool

    @staticmethod
    def _stats(values: Sequence[float]) -> tuple[float, float]:
        v = np.asarray(values, dtype=float)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    def to_dict(self) -> dict:
        mean_max, std_max = self._stats(self.lambda_max)
        mean_min, std_min = self._stats(self.lambda_min)
        row = dict(batch_size=self.batch_size, x=self.x, n_batches=self.n_batches,
                   lambda_max_mean=mean_max, lambda_max_std=std_max, lambda_min_mean=mean_min,
                   lambda_min_std=std_min, lambda_max=self.lambda_max, lambda_min=self.lambda_min,
                   converged=self.converged)
        if self.adam_sharpness is not None:
            mean_a, std_a = self._stats(self.adam_sharpness)
            row.update(adam_sharpness_mean=mean_a, adam_sharpness_std=std_a, adam_sharpness=self.adam_sharpness)
        return to_jsonable(row)


@dataclass(frozen=True, kw_only=True)
class BatchScanResult:
    operator: str
    n_params: int
    n_samples: int
    measurements: tuple[BatchMeasurement, ...]
    full: BatchMeasurement
    settings: dict
    wall_time_s: float

    def by_size(self) -> list[BatchSizeSummary]:
        sizes = sorted({m.batch_size for m in self.measurements})
        rows = []
        for b in sizes:
            group = [m for m in self.measurements if m.batch_size == b]
            sharp = [m.adam_sharpness for m in group] if all(m.adam_sharpness is not None for m in group) else None
            rows.append(BatchSizeSummary(
                batch_size=b, x=effective_noise(b, self.n_samples), n_batches=len(group),
                lambda_max=[m.lambda_max for m in group], lambda_min=[m.lambda_min for m in group],
                adam_sharpness=sharp,
                converged=all(m.eigs.converged and m.adam_converged is not False for m in group)))
        return rows


def measure_batch(problem: Problem, kind: str, *, batch_size: int, index: int, tol: float, seed: int,
                  preconditioner: Tensor | None = None, density_steps: int = 0,
                  density_probes: int = 4, settings: ProductSettings | None = None) -> BatchMeasurement:
    """Top and bottom eigenvalue of one batch's operator (and Adam's sharpness, and an SLQ density)."""
    op = curvature_operator(problem, kind, **dataclasses.asdict(settings or ProductSettings()))
    eigs = extremal_eigs(op, 1, 1, tol=tol, seed=seed)
    sharp = ok = None
    if preconditioner is not None:
        adam = extremal_eigs(PreconditionedOperator(op, preconditioner), 1, 0, tol=tol, seed=seed + 1)
        sharp, ok = float(adam.top_eigenvalues[0]), bool(adam.converged)
    density = slq(op, density_steps, density_probes, seed=seed + 2) if density_steps else None
    return BatchMeasurement(batch_size=batch_size, index=index, eigs=eigs, adam_sharpness=sharp,
                            adam_converged=ok, density=density)


def batch_scan(
    problem: Problem,
    kind: str = "hessian",
    *,
    batch_sizes: Sequence[int] | None = None,
    n_batches: int = 5,
    tol: float = 1e-6,
    seed: int = 0,
    preconditioner: Tensor | None = None,
    density_steps: int = 0,
    density_probes: int = 4,
    chunk_size: int | None = 1024,
    progress: Any = None,
    settings: ProductSettings | None = None,
    journal: Journal = NO_JOURNAL,
) -> BatchScanResult:
    """Measure ``n_batches`` random batches per size (one for B = N) and the full sample.
    ``progress`` (optional) has ``stage(name, total, unit)`` and ``advance(k)``, like the CLI's bars;
    ``settings`` say how every batch operator's products run (operators.ProductSettings); each
    batch and the full sample are pieces of ``journal`` (saved as they finish; journal.py)."""
    t0 = time.perf_counter()
    inputs, targets = problem.examples()
    n = len(inputs)
    sizes = sorted(set(batch_sizes or default_batch_sizes(n)))
    if sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"batch sizes must lie in 1..{n} (the sample), got {sizes[0]}..{sizes[-1]}")
    plan = [(b, j) for b in sizes if b < n for j in range(n_batches)]
    if progress is not None:  # one bar over this process's batches (each batch is its own operator)
        progress.stage("batch-size scan", distributed.my_share(len(plan)) + 1, unit="batch")
    common = dict(tol=tol, preconditioner=preconditioner, density_steps=density_steps, density_probes=density_probes,
                  settings=settings)

    def measure(task: tuple[int, int]) -> BatchMeasurement:
        b, j = task
        idx = batch_indices(n, b, seed, j)
        batch_problem = problem.with_batches(split_batches(inputs[idx], targets[idx], chunk_size))
        settings_j = {**common, "density_steps": density_steps if j == 0 else 0}  # one density per B
        measured = measure_batch(batch_problem, kind, batch_size=b, index=j, seed=seed + 7 * j, **settings_j)
        if progress is not None:
            progress.advance(1)
        return measured

    # under torchrun each rank measures its own batches; the full sample all ranks together
    measurements = distributed.spread(plan, lambda task: journal.own(f"batch-{task[0]}-{task[1]}",
                                                                     lambda: measure(task)))
    full = journal.shared("full", lambda: measure_batch(problem, kind, batch_size=n, index=0, seed=seed, **common))
    if progress is not None:
        progress.advance(1)
    record = dict(batch_sizes=sizes, n_batches=n_batches, tol=tol, seed=seed, density_steps=density_steps,
                  density_probes=density_probes, preconditioned=preconditioner is not None)
    return BatchScanResult(operator=kind, n_params=problem.n_params, n_samples=n,
                           measurements=tuple(measurements), full=full,
                           settings=record, wall_time_s=time.perf_counter() - t0)
