"""Measure the largest learning rate that does not diverge, by short training runs and bisection.

From the checkpoint's weights, ``steps`` optimizer steps on fresh random batches of size B (the
same seeded batches for every learning rate tried). A run *diverges* when a batch loss is not
finite or the full-sample loss, checked every ``check_every`` steps and at the end, exceeds
``blowup`` (10) times its starting value. The threshold is bisected in log space between a rate
that converges and one that diverges, to a relative ``precision``. Adam starts from the
checkpoint's moments when it has them (the state the preconditioned prediction describes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..problem import Problem
from ..results import saveable, to_jsonable


@dataclass(frozen=True, kw_only=True)
class TrainingRecipe:
    steps: int = 100
    check_every: int = 10
    blowup: float = 10.0
    precision: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # coupled L2 for SGD, as in the SGD threshold 2/(lambda' + wd)


@saveable
@dataclass(frozen=True, kw_only=True)
class MeasuredThreshold:
    optimizer: str
    batch_size: int
    measured_lr: float | None  # largest rate seen not to diverge (None: even the smallest diverged)
    diverging_lr: float | None  # smallest rate seen to diverge (None: none found)
    predicted_lr: float | None
    ratio: float | None  # measured / predicted
    runs: int
    wall_time_s: float
    note: str = ""

    def to_dict(self) -> dict:
        return to_jsonable(self)


def _full_loss(problem: Problem, params: dict[str, Tensor]) -> float:
    with torch.no_grad():
        return float(sum(w * problem.batch_loss(params, x, y) for x, y, w in problem.weighted_batches()))


def diverges(problem: Problem, optimizer: str, lr: float, batch_size: int, recipe: TrainingRecipe, seed: int,
             info: Any = None) -> bool:
    """One short training run from the problem's parameters: does it diverge? ``info`` (optional)
    carries Adam's saved state: ``exp_avg`` and ``exp_avg_sq`` by parameter name, and ``step``."""
    if problem.shard is not None:
        raise ValueError("training runs need the whole sample in one process: pass problem.gathered()")
    inputs, targets = problem.examples()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in problem.params.items()}
    if optimizer == "sgd":
        opt = torch.optim.SGD(params.values(), lr=lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.Adam(params.values(), lr=lr, betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)
        if info is not None and info.exp_avg_sq and info.exp_avg and info.step and all(
                n in info.exp_avg_sq and n in info.exp_avg for n in params):
            for name, p in params.items():
                opt.state[p] = {"step": torch.tensor(float(info.step)),
                                "exp_avg": info.exp_avg[name].to(p).clone(),
                                "exp_avg_sq": info.exp_avg_sq[name].to(p).clone()}
    start = _full_loss(problem, params)
    limit = start + (recipe.blowup - 1) * max(abs(start), 1e-12)  # = blowup x start for a positive loss
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, recipe.steps + 1):
        idx = torch.randperm(len(inputs), generator=generator)[:batch_size].to(inputs.device)
        opt.zero_grad()
        loss = problem.batch_loss(params, inputs[idx].to(problem.device), targets[idx].to(problem.device))
        if not torch.isfinite(loss):
            return True
        loss.backward()
        opt.step()
        if step % recipe.check_every == 0 or step == recipe.steps:
            current = _full_loss(problem, params)
            if not math.isfinite(current) or current > limit:
                return True
    return False


def measure_threshold(problem: Problem, optimizer: str, batch_size: int, predicted: float | None, *,
                      recipe: TrainingRecipe = TrainingRecipe(), seed: int = 0, info: Any = None,
                      on_run: Callable[[], None] | None = None) -> MeasuredThreshold:
    """Bisect the divergence threshold in log space, starting from [predicted/4, 4 predicted]."""
    t0 = time.perf_counter()
    guess = predicted if predicted and predicted > 0 else 0.1
    runs = 0

    def unstable(lr: float) -> bool:
        nonlocal runs
        runs += 1
        outcome = diverges(problem, optimizer, lr, batch_size, recipe, seed, info)
        if on_run:
            on_run()
        return outcome

    lo, hi = guess / 4, guess * 4
    for _ in range(6):  # widen upwards until hi diverges
        if unstable(hi):
            break
        lo, hi = hi, hi * 4
    else:  # the largest rate tried, lo, did not diverge
        return MeasuredThreshold(optimizer=optimizer, batch_size=batch_size, measured_lr=lo, diverging_lr=None,
                                 predicted_lr=predicted, ratio=None, runs=runs, wall_time_s=time.perf_counter() - t0,
                                 note=f"no divergence up to lr {lo:.3g}")
    for _ in range(6):  # widen downwards until lo is stable
        if not unstable(lo):
            break
        hi, lo = lo, lo / 4
    else:  # the smallest rate tried, hi, diverged
        return MeasuredThreshold(optimizer=optimizer, batch_size=batch_size, measured_lr=None, diverging_lr=hi,
                                 predicted_lr=predicted, ratio=None, runs=runs, wall_time_s=time.perf_counter() - t0,
                                 note=f"diverges even at lr {hi:.3g}")
    while hi / lo > 1 + recipe.precision:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    ratio = lo / predicted if predicted else None
    return MeasuredThreshold(optimizer=optimizer, batch_size=batch_size, measured_lr=lo, diverging_lr=hi,
                             predicted_lr=predicted, ratio=ratio, runs=runs, wall_time_s=time.perf_counter() - t0)
