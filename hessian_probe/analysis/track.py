"""Curvature across training: the same measurements on every checkpoint of a run, in training order.

Per checkpoint, on the same fixed sample and with the same seeded probes: lambda_max of the
operator with its Ritz residual (exactly ``eigenvalues(op, 1, 0)``, the `eigs --top-k 1` call), the
trace with its standard error (Hutch++ or Hutchinson), lambda_max, lambda_min and the batch
sharpness g^T H g / |g|^2 of one seeded batch at the training batch size B (the scan's batch
(B, 0), batch_scan.batch_indices), for Adam checkpoints the preconditioned sharpness
lambda_1(D^-1/2 H D^-1/2), D = sqrt(v_hat) + eps from the saved moments, and the optimizer's
hyperparameters. Each row carries the stability lines of its own learning rate eta:

    SGD 2/eta;  heavy ball 2(1 + rho)/eta;  Adam (2 + 2 beta1)/((1 - beta1) eta)  (38/eta at beta1 = 0.9)

(Nesterov: (2 + 2 rho)/((1 + 2 rho) eta)), the first two against lambda_max (full-batch GD settles
at lambda_max ~ 2/eta, the edge of stability: Cohen et al. 2021), the last against the
preconditioned sharpness (Cohen et al. 2022).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import setting
from ..linalg import extremal_eigs
from ..linalg import trace as estimate_trace
from ..operators import ProductSettings, curvature_operator
from ..operators.preconditioned import PreconditionedOperator
from ..problem import Problem
from ..protocols import COMPUTE_NOW, Pieces
from ..results import saveable, to_jsonable
from ..seeds import derive
from .adam import saved_diagonal
from .batch_scan import measure_batch, random_batch
from .eigenvalues import eigenvalues
from .hyperparameters import OptimizerHyperparameters
from .lr import adam_threshold
from .optimizer_state import found_hyperparameters, optimizer_state_of, saved_adam_state
from .stability import quadratic_threshold

ORDERS = ("step", "name", "given")
OVERRIDES = ("lr", "momentum", "beta1", "beta2", "eps")


@dataclass(frozen=True)
class TrackPoint:
    """One checkpoint: its name, the training step it carries (None: unknown), and its problem and
    optimizer state dict -- or ``load``, called when the point is measured, returning the point
    with them (so that only one checkpoint is in memory at a time)."""

    name: str
    step: int | None = None
    problem: Problem | None = None
    optimizer_state: Mapping[str, Any] | None = None
    load: Callable[[], TrackPoint] | None = None
    digest: str | None = None  # the file's sha256, when it came from one

    def loaded(self) -> TrackPoint:
        if self.problem is not None:
            return self
        if self.load is None:
            raise ValueError(f"track point {self.name!r} has neither a problem nor a loader")
        return self.load()


def in_training_order(points: Sequence[Any]) -> tuple[list[Any], str]:
    """Points (anything with ``name`` and ``step``) by the step every one carries; else by the last
    number in every name; else as given."""
    points = list(points)
    if points and all(p.step is not None for p in points):
        return sorted(points, key=lambda p: p.step), "step"
    numbers = [_last_number(p.name) for p in points]
    if points and all(n is not None for n in numbers):
        order = sorted(range(len(points)), key=lambda i: numbers[i])
        return [points[i] for i in order], "name"
    return points, "given"


def _last_number(name: str) -> int | None:
    """The last number of the path without its suffix: 'epoch_12.pt' -> 12, 'checkpoint-500/model.bin' -> 500."""
    found = re.findall(r"\d+", str(Path(name).with_suffix("")))
    return int(found[-1]) if found else None


@saveable
@dataclass(frozen=True, kw_only=True)
class TrackRow:
    """One checkpoint's measurements (module docstring); None where a quantity does not apply."""

    name: str
    step: int | None
    loss: float
    lambda_max: float | None
    lambda_max_residual: float = math.inf
    lambda_max_converged: bool = False
    trace: float | None = None
    trace_stderr: float | None = None
    batch_size: int | None = None
    batch_lambda_max: float | None = None
    batch_lambda_min: float | None = None
    batch_converged: bool | None = None
    batch_sharpness: float | None = None
    adam_sharpness: float | None = None
    adam_converged: bool | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    eps: float | None = None
    sources: dict | None = None  # each hyperparameter: 'checkpoint' or 'option'
    line_sgd: float | None = None
    line_momentum: float | None = None
    line_adam: float | None = None
    sha256: str | None = None
    notes: tuple[str, ...] = ()  # what the optimizer state said, and what could not be measured
    n_products: int = 0
    wall_time_s: float = 0.0


@saveable
@dataclass(frozen=True, kw_only=True)
class TrackResult:
    """The rows in training order (``order``: by 'step', 'name' or as 'given') and how they were measured."""

    operator: str
    n_params: int
    n_samples: int
    order: str
    rows: tuple[TrackRow, ...]
    settings: dict
    warnings: tuple[str, ...] = ()
    wall_time_s: float = 0.0

    def row(self, name: str) -> TrackRow | None:
        return next((r for r in self.rows if r.name == name), None)

    def sharpest(self) -> TrackRow | None:
        rated = [r for r in self.rows if r.lambda_max is not None]
        return max(rated, key=lambda r: r.lambda_max) if rated else None

    def to_dict(self) -> dict[str, Any]:
        sharpest = self.sharpest()
        return to_jsonable({
            "operator": self.operator, "n_params": self.n_params, "n_samples": self.n_samples, "order": self.order,
            "rows": [r for r in self.rows], "sharpest": sharpest.name if sharpest else None,
            "lines_are": "divergence thresholds of each checkpoint's own learning rate eta: line_sgd 2/eta and "
                         "line_momentum 2(1 + rho)/eta against lambda_max, line_adam (2 + 2 beta1)/((1 - beta1) eta) "
                         "against adam_sharpness (the edge of stability: Cohen et al. 2021, 2022)",
            "settings": self.settings, "warnings": list(self.warnings), "wall_time_s": self.wall_time_s})


def stability_lines(lr: float | None, momentum: float | None, beta1: float | None,
                    optimizer: str | None, nesterov: bool = False) -> dict[str, float | None]:
    """The curvature at which ``lr`` is the quadratic model's divergence threshold (module docstring);
    with ``nesterov`` the momentum line is Nesterov's. Every such threshold is c / curvature
    (stability.quadratic_threshold, lr.adam_threshold), so the line is the same c / lr."""
    lines: dict[str, float | None] = {"line_sgd": None, "line_momentum": None, "line_adam": None}
    if not lr or lr <= 0:
        return lines
    if optimizer == "adam":
        lines["line_adam"] = adam_threshold(lr, beta1) if beta1 is not None else None
        return lines
    lines["line_sgd"] = quadratic_threshold("sgd", lr)
    if momentum:
        lines["line_momentum"] = quadratic_threshold("nesterov" if nesterov else "momentum", lr, momentum)
    return lines


def track(points: Sequence[TrackPoint], operator: str = "hessian", *, batch_size: int | None = None,
          tol: float = 1e-6, max_steps: int | None = None, trace_products: int = 99, trace_method: str = "hutchpp",
          hyperparameters: Mapping[str, Any] | None = None, seed: int = 0, settings: ProductSettings | None = None,
          progress: Any = None, pieces: Pieces = COMPUTE_NOW) -> TrackResult:
    """Measure every point (module docstring); the rows come in training order (in_training_order). Every
    checkpoint is one piece, named by its place and its file's digest. ``hyperparameters``: values
    that override every checkpoint's (lr, momentum, beta1, beta2, eps; None: not given).
    ``trace_products`` 0 skips the trace."""
    t0 = time.perf_counter()
    if not points:
        raise ValueError("no checkpoints to track")
    overrides = {k: v for k, v in (hyperparameters or {}).items() if v is not None}
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)}: use {', '.join(OVERRIDES)}")
    if progress is not None:
        progress.stage("checkpoints", len(points), unit="checkpoint")
    measured, shapes = [], set()
    for i, point in enumerate(points):  # each on its own: the order they are measured in changes no number
        key = f"checkpoint-{i}-{point.digest[:16]}" if point.digest else f"checkpoint-{i}"

        def measure(point: TrackPoint = point) -> tuple[TrackRow, tuple[int, int]]:
            loaded = point.loaded()
            row = _measure(loaded, operator, batch_size, tol, max_steps, trace_products, trace_method, overrides,
                           seed, settings)
            return row, (loaded.problem.n_params, loaded.problem.n_samples)

        row, shape = pieces.shared(key, measure)
        if shapes and shape not in shapes:
            raise ValueError(f"{point.name} has {shape[0]:,} parameters and {shape[1]:,} examples, the checkpoints "
                             f"before it {min(shapes)[0]:,} and {min(shapes)[1]:,}: track one run's checkpoints of "
                             "one model on one sample")
        measured.append(replace(row, sha256=point.digest))
        shapes.add(shape)
        if progress is not None:
            progress.advance(1)
    rows, order = in_training_order(measured)
    warnings = []
    if order == "given" and len(rows) > 1:
        warnings.append("the checkpoints carry no step and their names no number: the rows are in the order given")
    keys = [r.step if order == "step" else _last_number(r.name) for r in rows] if order != "given" else []
    if len(set(keys)) < len(keys):
        warnings.append(f"some checkpoints share a {'step' if order == 'step' else 'number'}: their rows keep "
                        "the order given")
    n_params, n_samples = shapes.pop()
    if not any(r.lr for r in rows):
        warnings.append(f"no checkpoint carries a learning rate: pass {setting('lr')} to draw the stability lines")
    for what, flag in (("lambda_max", "lambda_max_converged"), ("the batch's lambda_max", "batch_converged"),
                       ("Adam's preconditioned sharpness", "adam_converged")):
        missed = [r.name for r in rows if getattr(r, flag) is False]
        if missed:
            warnings.append(f"{what} did not converge to {setting('tol')} on {len(missed)} checkpoint(s) "
                            f"({', '.join(missed[:3])}): see their residuals and flags")
    warnings += sorted({f"{r.name}: {note}" for r in rows for note in r.notes})
    return TrackResult(operator=operator, n_params=n_params, n_samples=n_samples, order=order, rows=tuple(rows),
                       settings=dict(batch_size=batch_size, tol=tol, max_steps=max_steps,
                                     trace_products=trace_products, trace_method=trace_method, seed=seed,
                                     overrides=overrides),
                       warnings=tuple(warnings), wall_time_s=time.perf_counter() - t0)


def _measure(point: TrackPoint, operator: str, batch_size: int | None, tol: float, max_steps: int | None,
             trace_products: int, trace_method: str, overrides: dict[str, Any], seed: int,
             settings: ProductSettings | None) -> TrackRow:
    t0 = time.perf_counter()
    problem = point.problem
    op = curvature_operator(problem, operator, settings=settings)
    top = eigenvalues(op, 1, 0, tol=tol, max_steps=max_steps, seed=seed).eigs  # = `eigs --top-k 1 --bottom-k 0`
    products = top.n_products
    values: dict[str, Any] = {}
    if trace_products:
        tr = estimate_trace(op, trace_products, method=trace_method, seed=derive(seed, "spectrum-trace"))
        values.update(trace=tr.estimate, trace_stderr=tr.stderr)
        products += tr.n_products
    n = problem.n_samples
    if batch_size is not None and batch_size < n:
        batch = random_batch(problem, problem.indexed_examples(), batch_size, seed, 0, problem.chunk_size)
        m = measure_batch(batch, operator, batch_size=batch_size, index=0, tol=tol,
                          seed=derive(seed, "batch-measurement", 0), settings=settings)
        values.update(batch_size=batch_size, batch_lambda_max=m.lambda_max, batch_lambda_min=m.lambda_min,
                      batch_converged=bool(m.eigs.converged), batch_sharpness=m.batch_sharpness)
        products += sum((m.n_products or {}).values())
    found = optimizer_state_of(point.optimizer_state, problem)
    saved_values = found_hyperparameters(found)
    hyper = {"lr": found.lr, **{k: saved_values[k] for k in OVERRIDES if k != "lr"}}
    sources = {k: ("option" if k in overrides else "checkpoint") for k, v in hyper.items()
               if k in overrides or v is not None}
    hyper.update(overrides)
    kind = found.kind or ("adam" if any(k in overrides for k in ("beta1", "beta2")) else None)
    saved = saved_adam_state(found, problem) if kind == "adam" else None
    notes = list(found.notes)
    if kind == "adam" and saved is None:
        notes.append("no Adam preconditioned sharpness: the checkpoint carries no usable Adam moments "
                     "(exp_avg_sq with a step count, one parameter group, matching shapes)")
    if saved is not None:
        defaults = OptimizerHyperparameters()
        diagonal = saved_diagonal(saved, hyper["beta2"] if hyper["beta2"] is not None else defaults.beta2,
                                  hyper["eps"] if hyper["eps"] is not None else defaults.eps)
        adam = extremal_eigs(PreconditionedOperator(op, diagonal), 1, 0, tol=tol, seed=derive(seed, "adam-sharpness"))
        values.update(adam_sharpness=float(adam.top_eigenvalues[0]), adam_converged=bool(adam.converged))
        products += adam.n_products
    lines = stability_lines(hyper["lr"], hyper["momentum"], hyper["beta1"] if kind == "adam" else None, kind,
                            nesterov=bool(found.nesterov))
    return TrackRow(name=point.name, step=point.step, loss=problem.loss_value(),
                    lambda_max=top.top_eigenvalues[0], lambda_max_residual=float(top.top_residuals[0]),
                    lambda_max_converged=bool(top.converged), **values, optimizer=kind, **hyper, sources=sources,
                    **lines, notes=tuple(notes), n_products=products, wall_time_s=time.perf_counter() - t0)
