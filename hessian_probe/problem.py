"""A curvature problem: the model as a pure function of its parameters, a loss and examples.

The loss of a problem is the mean training loss over all its examples, exactly as a loop with
``reduction='mean'`` minimises it: batches b of unequal size are weighted by |b| / N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .dtypes import SUPPORTED_DTYPES
from .errors import first_line
from .losses import Loss, get_loss
from .parameters import ParameterSpace, select_names

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Problem:
    """Model, parameters (``params`` are the differentiated ones), buffers, loss and batches."""

    module: nn.Module
    loss: Loss
    params: dict[str, Tensor]
    frozen: dict[str, Tensor]
    buffers: dict[str, Tensor]
    batches: tuple[Batch, ...]

    @property
    def space(self) -> ParameterSpace:
        return ParameterSpace.of(self.params)

    @property
    def n_params(self) -> int:
        return self.space.size

    @property
    def n_samples(self) -> int:
        return sum(len(x) for x, _ in self.batches)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """f(x; w) with the given values of the selected parameters, always in eval mode."""
        with evaluation_mode(self.module):
            return functional_call(self.module, ({**self.frozen, **params}, self.buffers), (x,))

    def batch_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss(self.forward(params, x), y)

    def examples(self) -> tuple[Tensor, Tensor]:
        """All inputs and all targets, the batches concatenated in order."""
        return torch.cat([x for x, _ in self.batches]), torch.cat([y for _, y in self.batches])

    def weighted_batches(self) -> Iterator[tuple[Tensor, Tensor, float]]:
        """(x, y, |b|/N) for every batch, on the parameters' device: sum_b weight * batch mean =
        mean over the sample. A sample kept in host memory is copied over batch by batch."""
        n, device = self.n_samples, self.device
        for x, y in self.batches:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), len(x) / n

    @torch.no_grad()
    def loss_value(self) -> float:
        return float(sum(w * self.batch_loss(self.params, x, y) for x, y, w in self.weighted_batches()))

    def gradient(self) -> Tensor:
        """Flat gradient of the mean loss."""
        total = torch.zeros(self.n_params, dtype=self.dtype, device=self.device)
        for x, y, w in self.weighted_batches():
            g = torch.func.grad(lambda p: self.batch_loss(p, x, y))(self.params)
            total += w * self.space.flatten(g)
        return total

    def with_batches(self, batches: Sequence[Batch]) -> Problem:
        """The same model and loss on other examples (e.g. one random batch of a scan)."""
        problem = replace(self, batches=_prepare_batches(batches, self.device, self.dtype))
        _validate_data(problem)
        return problem

    def restricted(self, patterns: str | Sequence[str]) -> Problem:
        """The same problem differentiated only in the parameters matching ``patterns``."""
        every = {**self.params, **self.frozen}
        order = [n for n, _ in self.module.named_parameters()] or list(every)
        chosen = select_names(order, patterns)
        return replace(
            self,
            params={n: every[n] for n in chosen},
            frozen={n: every[n] for n in order if n not in chosen},
        )


def split_batches(inputs: Tensor, targets: Tensor, chunk_size: int | None) -> list[Batch]:
    """Consecutive chunks of ``chunk_size`` examples (the last may be smaller)."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    if chunk_size is None or chunk_size >= len(inputs):
        return [(inputs, targets)]
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    return list(zip(inputs.split(chunk_size), targets.split(chunk_size)))


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode (dropout off, BN running stats), then restore the modes."""
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _cast(t: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Floating tensors to ``dtype``; integer labels and tokens to int64 (as torch expects); detached."""
    t = t.detach()
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device, dtype=torch.bool if t.dtype == torch.bool else torch.int64)


DEVICE_DATA_FRACTION = 0.25  # the largest share of free GPU memory the sample may take there


def _prepare_batches(batches: Sequence[Batch], device: torch.device, dtype: torch.dtype) -> tuple[Batch, ...]:
    """The batches cast to ``dtype``, on ``device`` when they fit (at most DEVICE_DATA_FRACTION of
    its free memory), else in pinned host memory (copied to the device batch by batch)."""
    batches = [(x, y) for x, y in batches if len(x)]
    if not batches:
        raise ValueError("the dataset is empty: a curvature operator needs at least one example")
    home = torch.device(device)
    if home.type == "cuda":
        nbytes = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else 8) for b in batches for t in b)
        if nbytes > DEVICE_DATA_FRACTION * torch.cuda.mem_get_info(home)[0]:
            return tuple((_cast(x, "cpu", dtype).pin_memory(), _cast(y, "cpu", dtype).pin_memory()) for x, y in batches)
    return tuple((_cast(x, home, dtype), _cast(y, home, dtype)) for x, y in batches)


def make_problem(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Sequence[Batch],
    loss: str | Loss | Callable[[Tensor, Tensor], Tensor],
    *,
    params: str | Sequence[str] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
) -> Problem:
    """Build a :class:`Problem`, evaluated in eval mode (dropout off, BN running statistics).

    ``data`` is either ``(inputs, targets)`` (split into chunks of ``chunk_size``, which only
    bounds memory: the operator is the same; ``batch_size`` is an older name for it) or an
    explicit sequence of batches.
    ``params`` selects parameters by name pattern for blockwise curvature. Parameters, buffers
    and floating-point data are copied to ``device`` and ``dtype`` (default: the model's, with
    half precision raised to float32, which Krylov methods need); the module's own tensors and
    its train/eval mode are left untouched.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters")
    first = next(iter(named.values()))
    dtype = dtype or (first.dtype if first.dtype in SUPPORTED_DTYPES else torch.float32)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"curvature products need float32 or float64, got {dtype}")
    device = torch.device(device) if device is not None else first.device
    every = {n: _cast(p.detach(), device, dtype) for n, p in named.items()}
    bad = [n for n, p in every.items() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"non-finite values in parameters: {', '.join(bad[:5])}")
    chosen = select_names(every, params)
    buffers = {n: _cast(b.detach(), device, dtype) for n, b in model.named_buffers()}

    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        batches = split_batches(*data, chunk_size or batch_size)
    else:
        batches = list(data)
    batches = _prepare_batches(batches, device, dtype)

    problem = Problem(
        module=model,
        loss=get_loss(loss),
        params={n: every[n] for n in chosen},
        frozen={n: every[n] for n in every if n not in chosen},
        buffers=buffers,
        batches=batches,
    )
    _validate_data(problem)
    return problem


@torch.no_grad()
def _validate_data(problem: Problem) -> None:
    """One forward pass: the model returns a tensor, targets fit it, labels are in range, and the
    loss is a finite scalar."""
    for i, (x, y, _) in enumerate(problem.weighted_batches()):
        try:
            outputs = problem.forward(problem.params, x)
        except RuntimeError as exc:
            hint = " (the inputs are integers: convert images to float, e.g. x.float() / 255)" if not x.is_floating_point() else ""
            raise ValueError(f"the model cannot run on inputs of shape {tuple(x.shape)} (batch {i}): "
                             f"{first_line(exc)}; check that --data matches the model{hint}") from exc
        if not isinstance(outputs, Tensor):
            raise ValueError(f"the model returns a {type(outputs).__name__}, not a tensor: "
                             "wrap it so that forward returns the outputs the loss takes")
        problem.loss.validate(outputs, y)
        value = problem.loss(outputs, y)
        if not isinstance(value, Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"the loss must return the mean over the batch, a scalar; it returned {shape}")
        if not torch.isfinite(value):
            raise ValueError(f"the loss is not finite on batch {i}")
