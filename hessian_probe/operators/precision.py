"""What float64 products cost against float32 ones on the same model (issue 19, item 2): the CPU
default is float64 (exact enough for every test), which for a convolution network can be several
times slower per product. After a long float64 run, one product of each precision on the first
batch is timed, and the ratio is reported beside the result, measured, not guessed."""

from __future__ import annotations

import time

import torch

from ..problem import make_problem
from .base import CurvatureOperator

LONG_RUN_S = 60.0  # a float64 run at least this long gets the measured float32 speed-up in its notes


def float32_speedup(op: CurvatureOperator) -> float | None:
    """Seconds of one float64 product over one float32 product, on the first batch of ``op``'s
    problem (each timed after a warm-up product); None when the operator is not a sample operator
    in float64."""
    problem = getattr(op, "problem", None)
    if problem is None or op.product_dtype != torch.float64:
        return None
    from . import curvature_operator

    first = problem.batches[:1]
    timings = []
    for dtype in (torch.float64, torch.float32):
        single = make_problem(problem.module, first, problem.loss, params=list(problem.params), dtype=dtype,
                              device=problem.device)
        product = curvature_operator(single, op.name, settings=op.settings)
        v = torch.randn(1, product.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        product.matmat(v)  # warm-up
        t0 = time.perf_counter()
        product.matmat(v)
        timings.append(time.perf_counter() - t0)
    return timings[0] / max(timings[1], 1e-12)


def float64_on_cpu(op: CurvatureOperator) -> bool:
    """Products in float64 on a CPU: the case where float32 ones may be several times faster."""
    return op.product_dtype == torch.float64 and op.device.type == "cpu"


def precision_note(op: CurvatureOperator, analysis_s: float) -> str | None:
    """For a long float64 CPU run: how much faster float32 products measured here."""
    if not float64_on_cpu(op) or analysis_s < LONG_RUN_S:
        return None
    ratio = float32_speedup(op)
    if ratio is None or ratio < 1.5:
        return None
    return (f"the products ran in float64 (the CPU default): one float32 product measured {ratio:.1f}x faster "
            "here; `dtype` mixed (float32 products, float64 Lanczos) trades about 1e-6 relative accuracy for that")


def mixed_precision_note(op: CurvatureOperator) -> str | None:
    """What a mixed-precision run (float32 products, float64 vectors) says about its accuracy."""
    if op.product_dtype == op.dtype:
        return None
    return (f"products in {str(op.product_dtype).removeprefix('torch.')}, the vectors, sums over batches and the "
            f"Krylov arithmetic in {str(op.dtype).removeprefix('torch.')} (`dtype` mixed): the results carry the "
            "products' rounding, about 1e-6 relative; eigenvalue residuals are measured with products")
