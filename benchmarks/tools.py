"""One adapter per tool: the same three jobs, each through the tool's own public API.

Jobs (settings shared by every tool):
    top    largest Hessian eigenvalue, tolerance 1e-4 (each tool's own stopping rule, named in
           ``notes``), at most 300 products
    trace  Hutchinson with the same number of Rademacher products (64), in blocks of 8 where a
           tool multiplies blocks
    slq    stochastic Lanczos quadrature, m = 100 steps, n_v probes (8), and its density grid

Every adapter returns {"value", "products", "converged", "notes"}: ``value`` is the top
eigenvalue, the trace estimate, or the largest SLQ node; ``products`` counts Hessian-vector
products (one vector each) through a wrapper on the tool's operator. Peers are imported here
only, never by hessian_probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

TOP_TOL = 1e-4
TOP_MAX_PRODUCTS = 300
TRACE_PRODUCTS = 64
SLQ_STEPS = 100
BLOCK = 8

Job = Callable[..., dict[str, Any]]


def _result(value: float | None, products: int, converged: bool | None = None, notes: str = "", **extra: Any) -> dict:
    return {"value": None if value is None else float(value), "products": int(products),
            "converged": converged, "notes": notes, **extra}


def _count_calls(obj: Any, method: str) -> list[int]:
    """Wrap obj.method (one product per call) with a counter; returns the one-element counter."""
    count, original = [0], getattr(obj, method)

    def counted(*args: Any) -> Any:
        count[0] += 1
        return original(*args)

    setattr(obj, method, counted)
    return count


# --- hessian-probe ---------------------------------------------------------------------------

def hessian_probe(job: str, model: nn.Module, batches, device: torch.device, probes: int,
                  compile: bool = False) -> dict:
    from hessian_probe import curvature_operator, make_problem
    from hessian_probe.linalg import extremal_eigs, hutchinson, slq, smoothed_density

    problem = make_problem(model, batches, "cross_entropy", device=device, dtype=torch.float32)
    op = curvature_operator(problem, "hessian", compile=compile)
    count = [0]
    op.observe(lambda k: count.__setitem__(0, count[0] + k))
    if job == "top":
        r = extremal_eigs(op, top_k=1, tol=TOP_TOL, max_steps=TOP_MAX_PRODUCTS)
        return _result(r.top_eigenvalues[0], count[0], bool(r.converged),
                       f"Lanczos, full reorth.; residual {r.top_residuals[0]:.1e} <= tol*|theta|")
    if job == "trace":
        r = hutchinson(op, TRACE_PRODUCTS, block_size=BLOCK)
        return _result(r.estimate, count[0], None, f"stderr {r.stderr:.3g}", stderr=r.stderr)
    if job == "slq":
        r = slq(op, SLQ_STEPS, probes)
        smoothed_density(np.concatenate(r.nodes), np.concatenate(r.weights) / probes)
        return _result(max(t.max() for t in r.nodes), count[0], None, f"{probes} probes in lockstep, full reorth.",
                       slq_trace=r.trace_estimate)
    raise ValueError(job)


def hessian_probe_compiled(*args, **kwargs) -> dict:
    return hessian_probe(*args, **kwargs, compile=True)


# --- PyHessian 0.1 -----------------------------------------------------------------------------

def _torch_eig_shim(matrix: torch.Tensor, eigenvectors: bool = False):
    """torch.eig (removed in torch 2.0) for the symmetric tridiagonal PyHessian passes it:
    eigenvalues as (n, 2) real/imaginary columns, as torch.eig returned them."""
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def pyhessian(job: str, model: nn.Module, batches, device: torch.device, probes: int) -> dict:
    from pyhessian import hessian as PyHessian  # the package exports the class under its module's name

    h = PyHessian(model, nn.CrossEntropyLoss(), dataloader=batches, cuda=device.type == "cuda")
    count = _count_calls(h, "dataloader_hv_product")
    if job == "top":
        values, _ = h.eigenvalues(maxIter=TOP_MAX_PRODUCTS, tol=TOP_TOL, top_n=1)
        return _result(values[0], count[0], count[0] < TOP_MAX_PRODUCTS,
                       "power iteration; stops when the eigenvalue changes < tol between steps")
    if job == "trace":
        # tol=-inf: PyHessian's stopping test divides by the running mean without abs(), so any
        # finite tol stops it early whenever that mean is negative
        samples = h.trace(maxIter=TRACE_PRODUCTS, tol=-np.inf)
        return _result(np.mean(samples), count[0], None,
                       f"stderr {np.std(samples, ddof=1) / np.sqrt(len(samples)):.3g}")
    if job == "slq":
        torch.eig = _torch_eig_shim  # PyHessian 0.1 calls torch.eig, removed from torch
        nodes, _ = h.density(iter=SLQ_STEPS, n_v=probes)
        return _result(max(max(n) for n in nodes), count[0], None,
                       "one probe at a time; torch.eig shimmed to torch.linalg.eigh")
    raise ValueError(job)


# --- hessian-eigenthings 1.0 -------------------------------------------------------------------

def eigenthings(job: str, model: nn.Module, batches, device: torch.device, probes: int) -> dict:
    import hessian_eigenthings as he

    op = he.HessianOperator(model, batches, he.supervised_loss(nn.CrossEntropyLoss()))
    count = _count_calls(op, "matvec")
    if job == "top":
        value, _, residual, _, converged = he.power_iteration_one(op, max_iter=TOP_MAX_PRODUCTS, tol=TOP_TOL, seed=0)
        return _result(value, count[0], bool(converged), f"power iteration; residual {residual:.1e}")
    if job == "trace":
        r = he.hutchinson(op, num_samples=TRACE_PRODUCTS, seed=0)
        return _result(r.estimate, count[0], None, f"stderr {r.stderr:.3g}")
    if job == "slq":
        r = he.spectral_density(op, num_runs=probes, lanczos_steps=SLQ_STEPS, seed=0)
        return _result(float(torch.nan_to_num(r.raw_eigenvalues, nan=-np.inf).max()), count[0], None,
                       "one probe at a time, full reorth.")
    raise ValueError(job)


# --- curvlinops 3.0 ----------------------------------------------------------------------------

def curvlinops(job: str, model: nn.Module, batches, device: torch.device, probes: int) -> dict:
    import curvlinops as cl
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    count = [0]
    matmat = cl.HessianLinearOperator._matmat

    def counted(self, M):
        count[0] += M[0].shape[-1]
        return matmat(self, M)

    cl.HessianLinearOperator._matmat = counted  # also counts the constructor's determinism check
    params = [p for p in model.parameters() if p.requires_grad]
    A = cl.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, batches)
    if job == "top":
        try:
            (value,) = eigsh(A.to_scipy(), k=1, which="LA", tol=TOP_TOL, maxiter=TOP_MAX_PRODUCTS,
                             return_eigenvectors=False)
            converged = True
        except ArpackNoConvergence as exc:
            value, converged = (exc.eigenvalues[0] if len(exc.eigenvalues) else None), False
        return _result(value, count[0], converged, "scipy eigsh (ARPACK, float64 on the host)")
    if job == "trace":
        estimates = [float(cl.hutchinson_trace(A, BLOCK)) for _ in range(TRACE_PRODUCTS // BLOCK)]
        return _result(np.mean(estimates), count[0], None, f"hutchinson_trace in blocks of {BLOCK}")
    if job == "slq":
        cl.lanczos_approximate_spectrum(A, SLQ_STEPS, num_repeats=probes)
        return _result(None, count[0], None, "Papyan 2020: no reorth., spectrum ends by eigsh (tol 1e-2)")
    raise ValueError(job)


TOOLS: dict[str, Job] = {
    "hessian-probe": hessian_probe,
    "hessian-probe-compiled": hessian_probe_compiled,
    "pyhessian": pyhessian,
    "eigenthings": eigenthings,
    "curvlinops": curvlinops,
}
PEER_MODULES = {"pyhessian": "pyhessian", "eigenthings": "hessian_eigenthings", "curvlinops": "curvlinops"}
MODULES = {**PEER_MODULES, "hessian-probe": "hessian_probe", "hessian-probe-compiled": "hessian_probe"}
