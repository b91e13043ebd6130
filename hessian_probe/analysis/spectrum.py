"""The spectrum of one curvature operator: SLQ density, extremal eigenvalues and trace.

One call gathers what a user asks first about a point in weight space; each part keeps its own
error measure (Ritz residuals and converged flags, trace stderr, the raw quadrature nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..linalg import EigenResult, SLQResult, SpectralDensity, TraceResult, slq
from ..linalg.eigs import default_max_steps
from ..operators import SampleOperator
from ..protocols import COMPUTE_NOW, Pieces
from ..results import to_jsonable
from ..seeds import derive
from .eigenvalues import check_counts, eigenvalues
from .eigenvalues import trace as trace_report

GHOST_NOTE = ("SLQ ran without reorthogonalisation: its density and trace are valid (ghost copies of an "
              "outlier share the outlier's weight), but its nodes may repeat; the eigenvalues reported come "
              "from the separate reorthogonalised run")


@dataclass(frozen=True, kw_only=True)
class SpectrumResult:
    operator: str
    n_params: int
    n_samples: int
    slq: SLQResult
    eigs: EigenResult
    trace: TraceResult
    density: SpectralDensity
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        notes = list(self.slq.warnings) + list(self.trace.warnings) + self.eigs.notes
        if self.slq.reorth == "none":
            notes.append(GHOST_NOTE)
        return notes

    def to_dict(self) -> dict[str, Any]:
        """Flat public keys (operator, n_params, top_eigenvalues, trace.estimate, ...) plus details."""
        return to_jsonable(
            {
                "operator": self.operator,
                "n_params": self.n_params,
                "n_samples": self.n_samples,
                "top_eigenvalues": self.eigs.top_eigenvalues,
                "bottom_eigenvalues": self.eigs.bottom_eigenvalues,
                "eigs": self.eigs,
                "trace": self.trace,
                "slq": self.slq,
                "density": self.density,
                "converged": self.eigs.converged,
                "warnings": self.warnings,
                "settings": self.settings,
            }
        )


def spectrum(
    op: SampleOperator,
    *,
    n_steps: int = 80,
    n_probes: int = 8,
    top_k: int = 5,
    bottom_k: int = 3,
    tol: float = 1e-6,
    trace_products: int = 99,
    trace_method: str = "hutchpp",
    max_steps: int | None = None,
    seed: int = 0,
    progress: Any = None,
    reorth: str = "full",
    basis: str = "auto",
    probe_block: int | None = None,
    pieces: Pieces = COMPUTE_NOW,
) -> SpectrumResult:
    """SLQ (``n_steps`` x ``n_probes``), top/bottom eigenvalues to ``tol`` (at most ``max_steps``
    Lanczos steps), and the trace from ``trace_products`` products.

    Each part draws its own probes (``seed`` and the streams seeds.derive names), so the
    SLQ trace and the Hutch++ trace are independent estimates. ``progress.stage(name, total_products)``
    is called as each part starts (the CLI's progress bars; see ``hessian_probe.progress``).
    ``reorth='none'`` runs SLQ without a basis (densities and traces for models whose basis would
    not fit); the eigenvalues still come from their own reorthogonalised run, whose basis
    ``basis`` places ('auto', 'device' or 'host'). SLQ runs its probes in blocks of ``probe_block``
    (default: all at once); each block, the eigenvalues and the trace are ``pieces``
    (protocols.Pieces: a resumable run saves each as it finishes and reads it back).
    """
    check_counts(op, top_k, bottom_k)  # before the SLQ's work
    requested = n_steps
    n_steps = min(n_steps, op.size)  # Lanczos spans the whole space in P steps: more add nothing
    settings = dict(n_steps=n_steps, n_probes=n_probes, top_k=top_k, bottom_k=bottom_k, tol=tol,
                    max_steps=default_max_steps(op.size, top_k + bottom_k, max_steps),
                    trace_products=trace_products, trace_method=trace_method, seed=seed, reorth=reorth, basis=basis,
                    probe_block=probe_block or n_probes)
    if requested > n_steps:
        settings["n_steps_requested"] = requested  # clamped to P
    if progress is not None:
        progress.stage("SLQ", n_steps * n_probes)
    density_run = slq(op, n_steps, n_probes, seed=seed, reorth=reorth, basis=basis, probe_block=probe_block,
                      run_block=lambda i, run: pieces.shared(f"slq-{i}", run))
    eigs = eigenvalues(op, top_k, bottom_k, tol=tol, max_steps=max_steps, seed=derive(seed, "spectrum-eigenvalues"),
                       basis=basis, progress=progress, pieces=pieces).eigs
    trace_result = trace_report(op, trace_products, method=trace_method, seed=derive(seed, "spectrum-trace"),
                                progress=progress, pieces=pieces).trace
    return SpectrumResult(
        operator=op.name,
        n_params=op.size,
        n_samples=op.problem.n_samples,
        slq=density_run,
        eigs=eigs,
        trace=trace_result,
        density=density_run.density(),
        settings=settings,
    )
