"""Batch-size scan: what the batch operator (Hessian or GGN) of B random examples looks like as B shrinks.

For each batch size B, ``n_batches`` batches are drawn without replacement from the sample,
each with its own seed (SeedSequence of (seed, B, j)), so a batch does not change when the grid
does. Each batch gives
  - its top and bottom eigenvalues (Lanczos with full reorthogonalisation, with residuals);
  - its batch sharpness g_B^T H_B g_B / |g_B|^2 (one gradient, one product; Andreyev &
    Beneventano 2024);
  - its operator projected on the full sample's top-k eigenvectors Q, Q H_B Q^T (k products),
    from which noise.SubspaceNoise estimates the batch noise at every B;
  - with Adam's preconditioner D_B: the top eigenvalue of D_B^-1/2 H_B D_B^-1/2, and the batch
    operator preconditioned with every scanned size's D_B', projected on the top-k eigenvectors
    of the full sample's D_B'^-1/2 H D_B'^-1/2 (k products per size), so that Adam's noise at
    each B is pooled over the batches of every size, like the plain one;
  - optionally an SLQ density (one per B).
The full-sample operator is measured first (its top-k eigenpairs are the subspace). (docs/theory.md
sections 1-5; Granziol et al. 2022.) Under torchrun the batches are spread over the ranks (each
measures its own batches whole) and the full-sample operators are measured by all ranks together.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..linalg import EigenResult, SLQResult, extremal_eigs, slq
from ..operators import CurvatureOperator, ProductSettings, curvature_operator
from ..operators.preconditioned import PreconditionedOperator
from ..problem import Problem, split_batches
from ..protocols import COMPUTE_NOW, Pieces
from ..results import saveable
from ..seeds import derive
from ..streams import Examples
from .noise import effective_noise

__all__ = ["AdamSubspace", "BatchMeasurement", "BatchScanResult", "BatchSizeSummary", "batch_indices", "batch_scan",
           "default_batch_sizes", "effective_noise", "measure_batch"]


def default_batch_sizes(n_samples: int, smallest: int = 16) -> list[int]:
    """Powers of two from ``smallest`` below N, then N itself (the full sample)."""
    sizes, b = [], max(1, smallest)
    while b < n_samples:
        sizes.append(b)
        b *= 2
    return sizes + [n_samples]


def batch_indices(n_samples: int, batch_size: int, seed: int, index: int, redraw: int = 0) -> Tensor:
    """The ``index``-th random batch of size B: its own seed from (seed, B, index) (and
    ``redraw``, the draws before it that had no label to count)."""
    entropy = [seed, batch_size, index] + ([redraw] if redraw else [])
    state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return torch.randperm(n_samples, generator=torch.Generator().manual_seed(state))[:batch_size]


MAX_REDRAWS = 100  # draws of one random batch before all its labels being ignore_index is an error


def random_batch(problem: Problem, examples: Examples, batch_size: int, seed: int, index: int,
                 chunk_size: int | None) -> Problem:
    """The problem of the ``index``-th random batch of B of the examples (batch_indices), in
    chunks; ``examples`` is problem.indexed_examples() (a streamed sample reads only these B).
    A batch with no label that counts (all -100: it has no loss) is drawn again."""
    for redraw in range(MAX_REDRAWS):
        x, y = examples.examples_at(batch_indices(examples.n_examples, batch_size, seed, index, redraw))
        if problem.loss.term_count(y) != 0:
            return problem.with_batches(split_batches(x, y, chunk_size))
    raise ValueError(f"{MAX_REDRAWS} random batches of {batch_size} examples had no label that counts (all are "
                     "ignore_index -100): use larger batches")


@saveable
@dataclass(frozen=True, kw_only=True)
class BatchMeasurement:
    """One batch (or the full sample): its extremal eigenvalues with residuals, batch sharpness,
    projections on the reference subspaces, and, if asked, Adam's sharpness and a density.
    ``n_products``: operator products spent, by statistic (each on this batch's B examples)."""

    batch_size: int
    index: int
    eigs: EigenResult
    adam_sharpness: float | None = None
    adam_converged: bool | None = None
    density: SLQResult | None = None
    batch_sharpness: float | None = None
    projected: np.ndarray | None = None
    adam_projected: dict[int, np.ndarray] | None = None  # Adam reference batch size -> k x k
    n_products: dict[str, int] | None = None

    @property
    def lambda_max(self) -> float:
        return float(self.eigs.top_eigenvalues[0])

    @property
    def lambda_min(self) -> float:
        """The bottom eigenvalue (the last top one when every eigenvalue was asked from the top)."""
        bottom = self.eigs.bottom_eigenvalues
        return float(bottom[0] if len(bottom) else self.eigs.top_eigenvalues[-1])


@saveable
@dataclass(frozen=True, kw_only=True)
class AdamSubspace:
    """The full sample's preconditioned operator D_B^-1/2 H D_B^-1/2 at batch size B: its top-k
    eigenpairs (the subspace Adam's noise is measured in, with what they cost) and the operator
    projected on them, Q P Q^T (k x k; diag(eigenvalues) up to the Ritz residuals)."""

    batch_size: int
    eigs: EigenResult
    projected: np.ndarray | None = None

    @property
    def sharpness(self) -> float:
        return float(self.eigs.top_eigenvalues[0])


@saveable
@dataclass(frozen=True, kw_only=True)
class BatchSizeSummary:
    batch_size: int
    x: float
    n_batches: int
    lambda_max: list[float]
    lambda_min: list[float]
    adam_sharpness: list[float] | None
    batch_sharpness: list[float] | None
    converged: bool


@saveable
@dataclass(frozen=True, kw_only=True)
class BatchScanResult:
    operator: str
    n_params: int
    n_samples: int
    measurements: tuple[BatchMeasurement, ...]
    full: BatchMeasurement
    adam_subspaces: tuple[AdamSubspace, ...]
    settings: dict
    wall_time_s: float

    @property
    def subspace(self) -> int:
        """k: the reference directions the batches were projected on (0: none)."""
        return int(self.settings.get("subspace", 0))

    def by_size(self) -> list[BatchSizeSummary]:
        """One summary per batch size below N, in increasing order."""
        rows = []
        for b in sorted({m.batch_size for m in self.measurements}):
            group = [m for m in self.measurements if m.batch_size == b]
            sharp = [m.adam_sharpness for m in group] if all(m.adam_sharpness is not None for m in group) else None
            batch_sharp = ([m.batch_sharpness for m in group]
                           if all(m.batch_sharpness is not None for m in group) else None)
            rows.append(BatchSizeSummary(
                batch_size=b, x=effective_noise(b, self.n_samples), n_batches=len(group),
                lambda_max=[m.lambda_max for m in group], lambda_min=[m.lambda_min for m in group],
                adam_sharpness=sharp, batch_sharpness=batch_sharp,
                converged=all(m.eigs.converged and m.adam_converged is not False for m in group)))
        return rows

    def full_summary(self) -> BatchSizeSummary:
        """The full sample as one 'batch' of N (x = 0)."""
        m = self.full
        return BatchSizeSummary(batch_size=self.n_samples, x=0.0, n_batches=1, lambda_max=[m.lambda_max],
                                lambda_min=[m.lambda_min], adam_sharpness=None,
                                batch_sharpness=[m.batch_sharpness] if m.batch_sharpness is not None else None,
                                converged=bool(m.eigs.converged))

    def adam_subspace(self, batch_size: int) -> AdamSubspace | None:
        """Adam's reference at B."""
        return next((s for s in self.adam_subspaces if s.batch_size == batch_size), None)

    def cost(self) -> dict[str, dict[str, int]]:
        """Operator products by statistic: their number, and their cost in single-example products
        (a product on a batch of B examples counts B)."""
        totals: dict[str, dict[str, int]] = {}

        def add(name: str, products: int, batch_size: int) -> None:
            entry = totals.setdefault(name, {"products": 0, "example_products": 0})
            entry["products"] += products
            entry["example_products"] += products * batch_size

        for m in (*self.measurements, self.full):
            for name, count in (m.n_products or {}).items():
                add(name, count, m.batch_size)
        for s in self.adam_subspaces:
            add("adam_subspace", s.eigs.n_products + (len(s.projected) if s.projected is not None else 0),
                self.n_samples)
        return totals


Preconditioner = Callable[[int], Tensor]  # Adam's diagonal D at batch size B


def _projection(op: CurvatureOperator, basis: Tensor) -> np.ndarray:
    """basis A basis^T (k x k, float64) from k products."""
    rows = op.matmat(basis)
    return (basis.to(rows) @ rows.T).double().cpu().numpy()


def measure_batch(problem: Problem, kind: str, *, batch_size: int, index: int, tol: float, seed: int,
                  subspace: Tensor | None = None, preconditioner: Tensor | None = None,
                  adam_references: dict[int, tuple[Tensor, Tensor]] | None = None, density_steps: int = 0,
                  density_probes: int = 4, settings: ProductSettings | None = None) -> BatchMeasurement:
    """Every statistic of one batch's operator (see the module docstring). ``adam_references``:
    reference size -> (D, Q) with Q the top eigenvectors (rows) of the full sample's D^-1/2 H D^-1/2."""
    op = curvature_operator(problem, kind, settings=settings)
    eigs = extremal_eigs(op, 1, 1, tol=tol, seed=seed)
    products = {"eigenvalues": eigs.n_products}
    gradient = problem.gradient()
    norm = float(gradient.norm())
    sharpness = projected = None
    if norm > 0:
        sharpness = float(_projection(op, (gradient / norm)[None])[0, 0])
        products["batch_sharpness"] = 1
    if subspace is not None:
        projected = _projection(op, subspace)
        products["projections"] = len(subspace)
    adam = ok = adam_projected = None
    if preconditioner is not None:
        top = extremal_eigs(PreconditionedOperator(op, preconditioner), 1, 0, tol=tol,
                            seed=derive(seed, "adam-sharpness"))
        adam, ok = float(top.top_eigenvalues[0]), bool(top.converged)
        products["adam_sharpness"] = top.n_products
    if adam_references:
        # Q D^-1/2 H_B D^-1/2 Q^T for every reference, from one block of products with H_B
        scaled = {b: q * d.to(q).rsqrt() for b, (d, q) in adam_references.items()}
        rows = op.matmat(torch.cat(list(scaled.values())))
        adam_projected, start = {}, 0
        for b, y in scaled.items():
            block = rows[start:start + len(y)]
            adam_projected[b] = (y.to(block) @ block.T).double().cpu().numpy()
            start += len(y)
        products["adam_projections"] = start
    density = slq(op, density_steps, density_probes, seed=derive(seed, "batch-density")) if density_steps else None
    if density is not None:
        products["density"] = density.n_products
    return BatchMeasurement(batch_size=batch_size, index=index, eigs=eigs, adam_sharpness=adam, adam_converged=ok,
                            density=density, batch_sharpness=sharpness, projected=projected,
                            adam_projected=adam_projected, n_products=products)


def measure_full(problem: Problem, kind: str, *, subspace: int, tol: float, seed: int, project: bool = True,
                 settings: ProductSettings | None = None) -> BatchMeasurement:
    """The full-sample operator: top-``subspace`` eigenpairs (the reference directions) and the
    bottom eigenvalue, its batch sharpness g^T H g / |g|^2 and (``project``) its projection Q H Q^T."""
    op = curvature_operator(problem, kind, settings=settings)
    subspace = min(subspace, op.size)
    eigs = extremal_eigs(op, subspace, 1 if subspace < op.size else 0, tol=tol, seed=seed, return_eigenvectors=True)
    gradient = problem.gradient()
    norm = float(gradient.norm())
    sharpness = float(_projection(op, (gradient / norm)[None])[0, 0]) if norm > 0 else None
    projected = _projection(op, eigs.top_eigenvectors) if project else None
    products = {"eigenvalues": eigs.n_products, "batch_sharpness": 1} | ({"projections": subspace} if project else {})
    return BatchMeasurement(batch_size=problem.n_samples, index=0, eigs=eigs, batch_sharpness=sharpness,
                            projected=projected, n_products=products)


def measure_adam_subspace(problem: Problem, kind: str, preconditioner: Tensor, *, batch_size: int, subspace: int,
                          tol: float, seed: int, settings: ProductSettings | None = None) -> AdamSubspace:
    """Top-k eigenpairs of the full sample's D^-1/2 H D^-1/2 at B, and its projection on them."""
    op = PreconditionedOperator(curvature_operator(problem, kind, settings=settings),
                                preconditioner)
    eigs = extremal_eigs(op, subspace, 0, tol=tol, seed=derive(seed, "adam-subspace"), return_eigenvectors=True)
    return AdamSubspace(batch_size=batch_size, eigs=eigs, projected=_projection(op, eigs.top_eigenvectors))


def batch_scan(
    problem: Problem,
    kind: str = "hessian",
    *,
    batch_sizes: Sequence[int] | None = None,
    n_batches: int = 5,
    tol: float = 1e-6,
    seed: int = 0,
    subspace: int = 8,
    preconditioner: Preconditioner | None = None,
    subspace_tol: float = 1e-4,
    density_steps: int = 0,
    density_probes: int = 4,
    chunk_size: int | None = 1024,
    progress: Any = None,
    settings: ProductSettings | None = None,
    pieces: Pieces = COMPUTE_NOW,
) -> BatchScanResult:
    """Measure the full sample, then ``n_batches`` random batches per size B < N.

    ``subspace``: how many top eigenvectors of the full-sample operator the batch operators are
    projected on (0: none). ``preconditioner``: Adam's diagonal D as a function of B (None: no Adam
    statistics); its reference subspaces are found to ``subspace_tol``.
    ``progress`` (optional) has ``stage(name, total, unit)`` and ``advance(k)``, like the CLI's bars;
    ``settings`` say how every operator's products run (operators.ProductSettings); the full
    sample, each Adam reference and each batch are ``pieces`` (protocols.Pieces: a resumable run
    saves each as it finishes); under torchrun the batches are dealt out over ``problem.group``."""
    t0 = time.perf_counter()
    examples = problem.indexed_examples()
    n = examples.n_examples
    sizes = sorted(set(batch_sizes or default_batch_sizes(n)))
    if sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"batch sizes must lie in 1..{n} (the sample), got {sizes[0]}..{sizes[-1]}")
    subspace = min(subspace, problem.n_params)
    plan = [(b, j) for b in sizes if b < n for j in range(n_batches)]
    adam_sizes = sorted(set(sizes) | {n}) if preconditioner is not None else []  # the full sample's row too
    if progress is not None:  # one bar over this process's batches (each batch is its own operator)
        progress.stage("batch-size scan", problem.group.my_share(len(plan)) + 1 + len(adam_sizes), unit="operator")

    def advance() -> None:
        if progress is not None:
            progress.advance(1)

    # the full sample and Adam's references: every rank together, on its shard
    full = pieces.shared("full", lambda: measure_full(problem, kind, subspace=max(subspace, 1), tol=tol, seed=seed,
                                                      project=subspace > 0, settings=settings))
    advance()
    references = []
    for b in adam_sizes:
        references.append(pieces.shared(f"adam-subspace-{b}", lambda b=b: measure_adam_subspace(
            problem, kind, preconditioner(b), batch_size=b, subspace=max(subspace, 1), tol=subspace_tol, seed=seed,
            settings=settings)))
        advance()
    basis = full.eigs.top_eigenvectors[:subspace] if subspace else None
    adam_references = {r.batch_size: (preconditioner(r.batch_size), r.eigs.top_eigenvectors[:subspace])
                       for r in references} if subspace else None

    def measure(task: tuple[int, int]) -> BatchMeasurement:
        b, j = task
        batch_problem = random_batch(problem, examples, b, seed, j, chunk_size)
        measured = measure_batch(
            batch_problem, kind, batch_size=b, index=j, seed=derive(seed, "batch-measurement", j), tol=tol,
            subspace=basis,
            preconditioner=preconditioner(b) if preconditioner is not None else None, adam_references=adam_references,
            density_steps=density_steps if j == 0 else 0, density_probes=density_probes, settings=settings)
        advance()
        return measured

    # under torchrun each rank measures its own batches
    measurements = problem.group.spread(plan, lambda task: pieces.own(f"batch-{task[0]}-{task[1]}",
                                                                      lambda: measure(task)))
    if density_steps:  # the full sample's density too, for spectra_by_batch.png
        full = dataclasses.replace(full, density=pieces.shared("full-density", lambda: slq(
            curvature_operator(problem, kind, settings=settings), density_steps,
            density_probes, seed=derive(seed, "batch-density"))))
    record = dict(batch_sizes=sizes, n_batches=n_batches, tol=tol, seed=seed, subspace=subspace,
                  subspace_tol=subspace_tol, density_steps=density_steps, density_probes=density_probes,
                  preconditioned=preconditioner is not None)
    return BatchScanResult(operator=kind, n_params=problem.n_params, n_samples=n,
                           measurements=tuple(measurements), full=full, adam_subspaces=tuple(references),
                           settings=record, wall_time_s=time.perf_counter() - t0)
