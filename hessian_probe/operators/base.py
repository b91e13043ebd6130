"""The one operator interface: a symmetric P x P matrix known only through products.

``matmat(V)`` multiplies a block of k vectors stored as rows (V has shape k x P) and returns
the k products as rows, so Krylov kernels can run k probes in lockstep on one pass over the data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import InputError, NonFiniteError, first_line, setting
from ..problem import Problem
from ..protocols import SOLO, Group
from .settings import ProductSettings, product_kernels


class CurvatureOperator(ABC):
    """A symmetric linear operator on R^P; rows in, rows out."""

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def _matmat(self, V: Tensor) -> Tensor: ...

    @property
    def product_dtype(self) -> torch.dtype:
        """The dtype the products compute in, whose rounding bounds every residual (``dtype``, that
        of the vectors, may be wider: float32 products in float64 Krylov arithmetic)."""
        base = getattr(self, "base", None)
        return base.product_dtype if isinstance(base, CurvatureOperator) else self.dtype

    @property
    def collective(self) -> bool:
        """Products are all-reduced over torchrun's ranks (every rank must take every product)."""
        base = getattr(self, "base", None)
        return base.collective if isinstance(base, CurvatureOperator) else False

    @property
    def group(self) -> Group:
        """The processes the products run over (protocols.Group): kernels ask it to agree."""
        base = getattr(self, "base", None)
        return base.group if isinstance(base, CurvatureOperator) else SOLO

    def matmat(self, V: Tensor) -> Tensor:
        """A V^T, returned as rows: (k, P) -> (k, P)."""
        if V.ndim != 2 or V.shape[1] != self.size:
            raise ValueError(f"expected a block of shape (k, {self.size}), got {tuple(V.shape)}")
        out = self._matmat(V.to(device=self.device, dtype=self.dtype))
        for observer in self.__dict__.get("_observers", ()):
            observer(len(V))
        return out

    def observe(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(k)`` after every product with a block of k vectors (progress, counting)."""
        self.__dict__.setdefault("_observers", []).append(callback)

    def matvec(self, v: Tensor) -> Tensor:
        return self.matmat(v.reshape(1, -1))[0]

    def to_dense(self, block_size: int = 64) -> Tensor:
        """The full P x P matrix, built from products with the identity (small P only)."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.cat([self.matmat(rows) for rows in eye.split(block_size)], dim=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, dtype={self.dtype}, device={self.device})"


class DenseOperator(CurvatureOperator):
    """An explicit symmetric matrix: for tests, random-matrix laws and small problems."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix

    size = property(lambda self: self.matrix.shape[0])
    dtype = property(lambda self: self.matrix.dtype)
    device = property(lambda self: self.matrix.device)

    def _matmat(self, V: Tensor) -> Tensor:
        return V @ self.matrix  # (A V^T)^T = V A for symmetric A


class ShiftedOperator(CurvatureOperator):
    """scale * A + shift * I, for spectral transformations (e.g. power iteration on an end)."""

    def __init__(self, base: CurvatureOperator, shift: float, scale: float = 1.0) -> None:
        self.base, self.shift, self.scale = base, shift, scale

    size = property(lambda self: self.base.size)
    dtype = property(lambda self: self.base.dtype)
    device = property(lambda self: self.base.device)

    def _matmat(self, V: Tensor) -> Tensor:
        return self.scale * self.base.matmat(V) + self.shift * V


def out_of_memory(exc: BaseException) -> bool:
    """An allocation failure, on a GPU (torch.cuda.OutOfMemoryError) or on the CPU, whose
    allocator raises a plain RuntimeError ("DefaultCPUAllocator: can't allocate memory: you tried
    to allocate ... bytes")."""
    text = str(exc)
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "can't allocate memory" in text or \
        "tried to allocate" in text or "out of memory" in text.lower()


def no_derivative(exc: BaseException) -> bool:
    """torch has no (second or forward-mode) derivative for an operation the product went through."""
    text = str(exc)
    return (("derivative for" in text and "is not implemented" in text)
            or ("forward AD" in text and "not support" in text)
            or "once_differentiable" in text or "functorch transforms" in text)


class SampleOperator(CurvatureOperator):
    """Curvature of the mean loss of a :class:`Problem`; owns the loop over its batches.

    A V = sum_b (|b| / N) A_b V: batches of unequal size are weighted by their size, so the
    operator is that of the loss the training loop minimised. Subclasses give the batch product.
    A sharded problem (torchrun) sums its own batches and all-reduces: every rank gets A V.

    How the products run (never what they compute) is set by :class:`ProductSettings`:
    ``compile`` (torch.compile of the batch product), ``tf32`` (TF32 tensor cores for float32
    matmuls and convolutions on CUDA; strict float32 otherwise) and ``max_rows`` (a bound on
    k x examples per pass). A batch whose k-vector product does not fit in memory (GPU or CPU) is
    split into pieces, b = sum_s (|s| / |b|) s, halving the piece until it fits; the bound is kept.
    """

    name: str = ""

    def __init__(self, problem: Problem, settings: ProductSettings | None = None) -> None:
        self.problem = problem
        self.space = problem.space
        self.settings = settings or ProductSettings()
        wanted = self.settings.vector_dtype
        if wanted is not None and torch.finfo(wanted).eps > torch.finfo(problem.dtype).eps:
            raise ValueError(f"vector_dtype {wanted} is narrower than the problem's {problem.dtype}: the vectors may "
                             "be as wide as the products or wider (float32 products in float64 vectors), not narrower")
        self.max_rows = self.settings.max_rows
        if self.max_rows is None and problem.device.type == "cpu":  # sized from memory up front (memory.py)
            from .memory import cpu_row_budget

            self.max_rows = cpu_row_budget(problem)
        self._product = self.batch_matmat
        if self.settings.compile:
            self._product = torch.compile(self.batch_matmat, dynamic=False)

    size = property(lambda self: self.space.size)
    dtype = property(lambda self: self.settings.vector_dtype or self.problem.dtype)  # of the vectors in and out
    product_dtype = property(lambda self: self.problem.dtype)  # of the batch products (the model's arithmetic)
    device = property(lambda self: self.problem.device)
    collective = property(lambda self: self.problem.shard is not None)
    group = property(lambda self: self.problem.group)

    @abstractmethod
    def batch_matmat(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
        """A_b applied to k tangents {name: (k, *shape)} for the mean loss on one batch."""

    def _matmat(self, V: Tensor) -> Tensor:
        tangents = self.space.unflatten(V.to(self.product_dtype))
        out = torch.zeros_like(V)  # the sum over batches in the vectors' dtype
        with product_kernels(tf32=self.settings.tf32):
            for x, y, weight in self.problem.weighted_batches():
                out.add_(self._batch_product(x, y, tangents, len(V)), alpha=weight)
        out = self.problem.reduce(out)  # under torchrun: + the other ranks' shares
        if not bool(torch.isfinite(out).all()):
            raise self._locate_non_finite(V)
        return out

    def _locate_non_finite(self, V: Tensor) -> NonFiniteError:
        """Which batch (of this process's share) and which rows of V gave a non-finite product."""
        tangents, what = self.space.unflatten(V.to(self.product_dtype)), f"the {self.name or 'operator'} product"
        with product_kernels(tf32=self.settings.tf32):
            for i, x, y, _ in self.problem.numbered_batches():
                bad = (~torch.isfinite(self._batch_product(x, y, tangents, len(V)))).any(dim=1)
                if bool(bad.any()):
                    rows = bad.nonzero().flatten().tolist()
                    return NonFiniteError(what, self.problem.where((i, len(x))), rows)
        return NonFiniteError(what, self.problem.where(None))

    def _batch_product(self, x: Tensor, y: Tensor, tangents: dict[str, Tensor], k: int) -> Tensor:
        """A_b V^T as rows, the batch split into pieces of at most max_rows / k examples."""
        while True:
            piece = len(x) if self.max_rows is None else max(1, min(len(x), self.max_rows // k))
            try:
                total = None
                for xs, ys in zip(x.split(piece), y.split(piece)):
                    part = self.space.flatten(self._product(xs, ys, tangents), batch_dims=1)
                    share = len(xs) / len(x)
                    if total is None:
                        total = part if share == 1 else part.mul_(share)
                    else:
                        total.add_(part, alpha=share)
                return total
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one, and so is the CPU allocator's
                if no_derivative(exc):
                    raise InputError(f"the {self.name or 'curvature'} product needs derivatives that a layer of the "
                                     f"model does not have in torch ({first_line(exc)}); attention already runs with "
                                     "the math SDPA backend here: use another operator (the GGN needs only "
                                     "forward-mode derivatives, the Hessian second derivatives), finite-difference "
                                     f"Hessian products ({setting('hessian_mode')} finite-difference), or replace "
                                     "that layer") from None
                if not out_of_memory(exc):
                    raise
                if piece == 1:
                    raise InputError(f"a {self.name or 'curvature'} product on one example with {k} vectors at once "
                                     f"does not fit in memory ({first_line(exc)}): ask for fewer at once "
                                     "(`probe_block`, `top_k`), use `dtype` float32, or a parameter block "
                                     "(`params`)") from None
                self.max_rows = k * (piece // 2)
                if x.is_cuda:
                    torch.cuda.empty_cache()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self.size}, N={self.problem.n_samples}, "
            f"batches={len(self.problem.batches)}, dtype={self.dtype}, device={self.device})"
        )
