"""The `eigs` and `trace` commands' library calls: one operator's extremal eigenvalues, or its
trace, as typed results whose ``to_dict()`` is the record result.json holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError, setting
from ..linalg import EigenResult, TraceResult, extremal_eigs
from ..linalg import trace as estimate_trace
from ..linalg.eigs import default_max_steps
from ..operators import SampleOperator
from ..protocols import COMPUTE_NOW, Pieces
from ..results import to_jsonable


@dataclass(frozen=True, kw_only=True)
class OperatorReport:
    """What every one-operator record starts with: which operator, its size and its sample."""

    operator: str
    n_params: int
    n_samples: int
    settings: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {"operator": self.operator, "n_params": self.n_params, "n_samples": self.n_samples}


@dataclass(frozen=True, kw_only=True)
class EigenvalueReport(OperatorReport):
    """Extremal eigenvalues of one operator, with Ritz residuals and converged flags (``eigs``)."""

    eigs: EigenResult

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({**self.header(), "top_eigenvalues": self.eigs.top_eigenvalues,
                            "bottom_eigenvalues": self.eigs.bottom_eigenvalues, "eigs": self.eigs,
                            "converged": self.eigs.converged, "warnings": self.eigs.notes, "settings": self.settings})


@dataclass(frozen=True, kw_only=True)
class TraceReport(OperatorReport):
    """The trace of one operator by Hutch++ or Hutchinson, with its standard error (``trace``)."""

    trace: TraceResult

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({**self.header(), "trace": self.trace, "warnings": list(self.trace.warnings),
                            "settings": self.settings})


def check_counts(op: SampleOperator, top_k: int, bottom_k: int) -> None:
    """What the user asked for: at least one eigenvalue, no more than the parameters measured."""
    if top_k + bottom_k == 0:
        raise UsageError(f"ask for at least one eigenvalue: {setting('top_k')} or {setting('bottom_k')}")
    if top_k + bottom_k > op.size:
        raise UsageError(f"{setting('top_k')} {top_k} plus {setting('bottom_k')} {bottom_k} exceeds the {op.size} "
                         "parameters measured")


def eigenvalues(op: SampleOperator, top_k: int = 5, bottom_k: int = 0, *, tol: float = 1e-6,
                max_steps: int | None = None, method: str = "lanczos", seed: int = 0, basis: str = "auto",
                return_eigenvectors: bool = False, progress: Any = None,
                pieces: Pieces = COMPUTE_NOW) -> EigenvalueReport:
    """The ``top_k`` largest and ``bottom_k`` smallest eigenvalues to relative Ritz residual ``tol``
    (linalg.extremal_eigs: Lanczos with at most ``max_steps`` steps, or shifted power iteration
    with as many iterations per eigenvalue, default 1000), one piece of ``pieces``."""
    check_counts(op, top_k, bottom_k)
    lanczos = method == "lanczos"
    limit = {"max_steps": max_steps, "basis": basis} if lanczos else {"max_iter": max_steps or 1000}
    if progress is not None:
        progress.stage("eigenvalues", default_max_steps(op.size, top_k + bottom_k, max_steps) if lanczos else None)
    result = pieces.shared("eigs", lambda: extremal_eigs(op, top_k, bottom_k, tol=tol, method=method, seed=seed,
                                                         return_eigenvectors=return_eigenvectors, **limit))
    return EigenvalueReport(operator=op.name, n_params=op.size, n_samples=op.problem.n_samples, eigs=result,
                            settings=dict(top_k=top_k, bottom_k=bottom_k, tol=tol, max_steps=max_steps,
                                          method=method, seed=seed))


def trace(op: SampleOperator, products: int = 99, *, method: str = "hutchpp", seed: int = 0, progress: Any = None,
          pieces: Pieces = COMPUTE_NOW) -> TraceReport:
    """The trace from ``products`` operator products (linalg.trace: Hutch++ or Hutchinson), one piece
    of ``pieces``."""
    if progress is not None:
        progress.stage("trace", products)
    result = pieces.shared("trace", lambda: estimate_trace(op, products, method=method, seed=seed))
    return TraceReport(operator=op.name, n_params=op.size, n_samples=op.problem.n_samples, trace=result,
                       settings=dict(products=products, method=method, seed=seed))
