"""How curvature products run: compilation, float32 precision on CUDA, and memory bounds.

None of these change the matrix, only the speed and, for TF32, the rounding: TF32 multiplies
with a 10-bit mantissa (relative error ~1e-3 per product), fine for densities, coarse for
eigenvalues wanted to 1e-4.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

HESSIAN_MODES = ("reverse", "forward", "finite-difference")


@dataclass(frozen=True)
class ProductSettings:
    """``compile``: torch.compile the batch product (pays off after a few dozen products).
    ``tf32``: allow TF32 tensor cores in float32 products on CUDA. ``max_rows``: at most this many
    k x examples per pass (None: a whole batch per pass, split automatically if out of memory).
    ``hessian_mode``: 'reverse' (reverse-over-reverse) or 'forward' (forward-over-reverse)
    Hessian products, both exact, or 'finite-difference' (central differences of gradients, for
    layers without second derivatives; relative error about eps^(2/3)): see operators/hessian.py.
    ``vector_dtype``: the dtype of the vectors the operator takes and returns, and of its sum over
    batches (None: the problem's). torch.float64 over a float32 problem gives mixed precision:
    float32 products (several times faster than float64 ones on a CPU, above all for
    convolutions) inside float64 Krylov arithmetic, so that the basis, the tridiagonal and the
    residuals carry no float32 rounding of their own; the eigenvalues then carry only the
    products' (about 1e-6 of the largest)."""

    compile: bool = False
    tf32: bool = False
    max_rows: int | None = None
    hessian_mode: str = "reverse"
    vector_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.hessian_mode not in HESSIAN_MODES:
            raise ValueError(f"hessian_mode must be one of {HESSIAN_MODES}, got {self.hessian_mode!r}")
        if self.vector_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"vector_dtype must be torch.float32 or torch.float64, got {self.vector_dtype}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {self.max_rows}")


@contextmanager
def product_kernels(*, tf32: bool) -> Iterator[None]:
    """The kernels every curvature product runs with: :func:`float32_precision` and the math
    backend of scaled_dot_product_attention. torch's fused attention kernels (flash, memory
    efficient, and the CPU's flash) have no double backward and no forward-mode derivative, so a
    Hessian or GGN product through a transformer's SDPA attention fails with them ("derivative for
    aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"); the math
    backend computes the same attention from differentiable operations."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with float32_precision(tf32=tf32), sdpa_kernel([SDPBackend.MATH]):
        yield


@contextmanager
def float32_precision(*, tf32: bool) -> Iterator[None]:
    """Run with TF32 allowed (or strictly forbidden) in CUDA matmuls and cuDNN convolutions,
    then restore torch's flags. cuDNN allows TF32 by default; strict is our default."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
