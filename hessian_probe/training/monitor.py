"""A sharpness monitor for the user's training loop: every ``every`` steps, lambda_max of the loss's
Hessian (or GGN) on a fixed curvature sample, by a small Lanczos warm-started from the last top
eigenvector (training moves it little between measurements, so a few steps reach ``tol``).

    monitor = SharpnessMonitor(model, F.cross_entropy, (x_curv, y_curv), every=50, csv_path="sharpness.csv")
    for step, (x, y) in enumerate(loader):
        ...; optimizer.step()
        monitor.step(step, optimizer)        # a row every 50 steps, None otherwise

A warm start carries a small random part and every 20th measurement starts cold, so that a direction
that has become the sharpest since the last one is found. Each row holds the optimizer's learning
rate and its stability lines 2/eta and 2(1 + rho)/eta (analysis.track.stability_lines), and the
monitor's own cost (products and seconds), so that its overhead is seen, not guessed.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis.track import stability_lines
from ..errors import setting
from ..linalg import extremal_eigs
from ..operators import curvature_operator
from ..problem import make_problem


@dataclass(frozen=True, kw_only=True)
class SharpnessRow:
    """One measurement: lambda_max with its residual, the loss on the curvature sample, the optimizer's
    rate and the lines it implies, and what the measurement cost."""

    step: int
    lambda_max: float
    residual: float
    converged: bool
    loss: float | None
    lr: float | None
    momentum: float | None
    line_sgd: float | None
    line_momentum: float | None
    lanczos_steps: int
    n_products: int
    seconds: float


WARM_NOISE = 0.01  # the random part of a warm start, relative to the unit eigenvector
COLD_EVERY = 20  # measurements between cold (random) starts
MEASURED_BELOW = 1e-3  # a tol from which float32 residuals are checked by a product (linalg.eigs)
COLUMNS = [f.name for f in dataclasses.fields(SharpnessRow)]


class SharpnessMonitor:
    """lambda_max every ``every`` steps on ``data`` (module docstring). ``tol``: relative Ritz residual;
    ``max_steps``: Lanczos steps at most per measurement; ``csv_path``: a CSV that gets one row per
    measurement (its header first; an existing file is replaced only with ``overwrite``; under
    torch.distributed rank 0 alone writes it); ``tensorboard``: a
    torch.utils.tensorboard SummaryWriter or a log folder; ``wandb``: log to the active Weights &
    Biases run; ``record_loss``: also the loss on ``data`` (one forward pass); ``cold_every``: a
    measurement from a random start every this many (None: always warm, cheaper, but a direction
    that becomes the sharpest may be found late). The products run in the
    model's dtype unless ``dtype`` is given. The default ``tol`` 1e-2 gives lambda_max to about
    (tol lambda_max)^2 / gap (a Ritz value's error is its residual squared over the spectral gap)."""

    def __init__(self, model: nn.Module, loss: str | Callable, data: tuple[Tensor, Tensor], *, every: int = 50,
                 operator: str = "hessian", tol: float = 1e-2, max_steps: int = 20, csv_path: str | Path | None = None,
                 tensorboard: Any = None, wandb: bool = False, chunk_size: int | None = None,
                 dtype: torch.dtype | None = None, seed: int = 0, record_loss: bool = False,
                 overwrite: bool = False, cold_every: int | None = COLD_EVERY) -> None:
        if every < 1:
            raise ValueError(f"{setting('every')} must be at least 1, got {every}")
        self.model, self.loss, self.data = model, loss, data
        self.every, self.operator, self.tol, self.max_steps = every, operator, tol, max_steps
        self.chunk_size, self.dtype, self.seed, self.record_loss = chunk_size, dtype, seed, record_loss
        self.cold_every = cold_every
        self.rows: list[SharpnessRow] = []
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self._vector: Tensor | None = None
        self._built: tuple[Any, Any] | None = None
        self._tensorboard = _summary_writer(tensorboard)
        self._wandb = _wandb() if wandb else None
        self._writes = not (torch.distributed.is_available() and torch.distributed.is_initialized()
                            and torch.distributed.get_rank() != 0)  # under DDP rank 0 alone writes the CSV
        if self.csv_path is not None and self._writes:
            if self.csv_path.exists() and not overwrite:
                raise FileExistsError(f"{self.csv_path} exists: pass overwrite=True to replace it, or another "
                                      "csv_path")
            with self.csv_path.open("w", newline="") as fh:
                csv.writer(fh).writerow(COLUMNS)

    @property
    def n_products(self) -> int:
        return sum(r.n_products for r in self.rows)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.rows)

    def measure(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> SharpnessRow:
        """Measure now, whatever the step."""
        t0 = time.perf_counter()
        problem, op = self._operator()
        start = None
        cold = bool(self.cold_every) and len(self.rows) % self.cold_every == 0
        if self._vector is not None and self._vector.numel() == op.size and not cold:
            # the last top eigenvector plus a random part, so that a direction that became the
            # sharpest since is in the Krylov space too; every cold_every-th measurement starts afresh
            noise = torch.randn(op.size, generator=torch.Generator().manual_seed(self.seed + len(self.rows)),
                                dtype=torch.float64).to(self._vector)
            start = self._vector + WARM_NOISE * noise / noise.norm()
        eigs = extremal_eigs(op, 1, 0, tol=self.tol, max_steps=self.max_steps, seed=self.seed,
                             return_eigenvectors=True, start=start, measure_residuals=self.tol < MEASURED_BELOW)
        self._vector = eigs.top_eigenvectors[0].detach()
        group = optimizer.param_groups[0] if optimizer is not None else {}
        lr, momentum = group.get("lr"), group.get("momentum")
        kind = "adam" if "betas" in group else "sgd"
        lines = stability_lines(lr, momentum, group.get("betas", (None,))[0], kind,
                                nesterov=bool(group.get("nesterov", False)))
        row = SharpnessRow(step=step, lambda_max=float(eigs.top_eigenvalues[0]),
                           residual=float(eigs.top_residuals[0]), converged=bool(eigs.converged),
                           loss=problem.loss_value() if self.record_loss else None, lr=lr, momentum=momentum,
                           line_sgd=lines["line_sgd"],
                           line_momentum=lines["line_momentum"], lanczos_steps=eigs.n_steps,
                           n_products=eigs.n_products, seconds=time.perf_counter() - t0)
        self.rows.append(row)
        self._log(row)
        return row

    def _operator(self) -> tuple[Any, Any]:
        """The problem and operator, built once and reused while the problem's tensors are the model's
        own (the optimizer updates them in place); rebuilt when they are copies (another dtype or
        device) or the model's parameters were replaced."""
        if self._built is not None and _shares_storage(self._built[0], self.model):
            return self._built
        problem = make_problem(self.model, self.data, self.loss, chunk_size=self.chunk_size, dtype=self.dtype)
        self._built = problem, curvature_operator(problem, self.operator)
        return self._built

    def step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> SharpnessRow | None:
        """A row every ``every`` steps (step 0 included), None otherwise."""
        return self.measure(step, optimizer) if step % self.every == 0 else None

    def _log(self, row: SharpnessRow) -> None:
        values = dataclasses.asdict(row)
        if self.csv_path is not None and self._writes:
            with self.csv_path.open("a", newline="") as fh:
                csv.writer(fh).writerow(["" if values[c] is None else values[c] for c in COLUMNS])
        scalars = {k: float(v) for k, v in values.items()
                   if k in ("lambda_max", "converged", "loss", "line_sgd", "line_momentum") and v is not None}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(f"curvature/{key}", value, row.step)
        if self._wandb is not None and self._wandb.run is not None:
            self._wandb.log({f"curvature/{k}": v for k, v in scalars.items()}, step=row.step)


def _shares_storage(problem: Any, model: nn.Module) -> bool:
    """Do the problem's parameters and buffers live in the model's own tensors (no copy)?"""
    mine = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    held = {**problem.params, **problem.frozen, **problem.buffers}
    return all(name in mine and tensor.data_ptr() == mine[name].data_ptr() and tensor.dtype == mine[name].dtype
               for name, tensor in held.items())


def _summary_writer(tensorboard: Any) -> Any:
    if tensorboard is None or hasattr(tensorboard, "add_scalar"):
        return tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard logging needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(tensorboard))


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ImportError("Weights & Biases logging needs the wandb package: pip install wandb") from None
    return wandb
