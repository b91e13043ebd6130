"""Measure the largest learning rate that does not diverge, by short training runs and bisection.

From the checkpoint's weights, ``steps`` optimizer steps (torch.optim: SGD, SGD with heavy-ball
or Nesterov momentum, Adam) on fresh random batches of size B, the same seeded batches for every
learning rate tried. Two criteria, from the same runs:

- *blow-up*: a batch loss is not finite, or the full-sample loss, checked every ``check_every``
  steps and at the end, exceeds ``blowup`` (10) times its start;
- *no progress*: the run blew up, or its full-sample loss after the last step is above its start.

A learning rate fails a criterion when a majority of ``seeds`` runs (3, each with its own batch
order) fail it; the threshold is bisected in log space between a rate that passes and one that
fails, to a relative ``precision``. Adam starts from exactly the state its prediction assumed
(adam.starting_state): the saved moments, or the settled m = g, v = v_B.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..problem import Problem
from ..protocols import COMPUTE_NOW, Pieces
from ..results import saveable, to_jsonable
from .adam import SavedAdamState, starting_state
from .hyperparameters import OptimizerHyperparameters
from .noise import GradientMoments, gradient_moments

CRITERIA = ("blowup", "no_progress")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


@saveable
@dataclass(frozen=True, kw_only=True)
class TrainingRecipe(OptimizerHyperparameters):
    """How a validating run trains: its length, its divergence test, the bisection, and the
    optimizers' hyperparameters (validate_learning_rates takes these from the prediction)."""

    steps: int = 200
    check_every: int = 10
    blowup: float = 10.0
    precision: float = 0.05
    seeds: int = 3
    dtype: str = "float32"  # training runs in float32, as training does, whatever the problem's dtype

    def definition(self, criterion: str) -> str:
        blowup = (f"a non-finite batch loss, or the full-sample loss above {self.blowup:g}x its start, within "
                  f"{self.steps} steps from the checkpoint (checked every {self.check_every} steps and at the end)")
        if criterion == "blowup":
            return f"blow-up: {blowup}"
        return f"no progress: blow-up, or the full-sample loss after {self.steps} steps above its start"


@dataclass(frozen=True)
class RunOutcome:
    """One training run: did it blow up, and where did the full-sample loss start and end."""

    blew_up: bool
    start_loss: float
    final_loss: float | None

    def fails(self, criterion: str) -> bool:
        if criterion == "blowup":
            return self.blew_up
        return self.blew_up or self.final_loss > self.start_loss


def _full_loss(problem: Problem, params: dict[str, Tensor]) -> float:
    with torch.no_grad():
        return float(sum(w * problem.batch_loss(params, x, y) for x, y, w in problem.weighted_batches()))


def _optimizer(name: str, params: dict[str, Tensor], lr: float, recipe: TrainingRecipe,
               adam_state: tuple[Tensor, Tensor, float] | None, space: Any) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params.values(), lr=lr, weight_decay=recipe.weight_decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params.values(), lr=lr, momentum=recipe.momentum, nesterov=name == "nesterov",
                               weight_decay=recipe.weight_decay)
    if name != "adam":
        raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
    opt = torch.optim.Adam(params.values(), lr=lr, betas=(recipe.beta1, recipe.beta2), eps=recipe.eps)
    if adam_state is not None:
        first, second, step = adam_state
        firsts, seconds = space.unflatten(first), space.unflatten(second)
        for name_, p in params.items():
            opt.state[p] = {"step": torch.tensor(float(step)), "exp_avg": firsts[name_].to(p).clone(),
                            "exp_avg_sq": seconds[name_].to(p).clone()}
    return opt


def train(problem: Problem, optimizer: str, lr: float, batch_size: int, recipe: TrainingRecipe, seed: int,
          adam_state: tuple[Tensor, Tensor, float] | None = None) -> RunOutcome:
    """One short training run from the problem's parameters (``adam_state``: flat exp_avg, exp_avg_sq
    and the step count Adam starts from; None: a fresh Adam)."""
    if problem.shard is not None:
        raise ValueError("training runs need the whole sample in one process: pass problem.gathered()")
    problem = problem.cast(getattr(torch, recipe.dtype))
    examples = problem.indexed_examples()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in problem.params.items()}
    opt = _optimizer(optimizer, params, lr, recipe, adam_state, problem.space)
    start = _full_loss(problem, params)
    limit = start + (recipe.blowup - 1) * max(abs(start), 1e-12)  # = blowup x start for a positive loss
    generator = torch.Generator().manual_seed(seed)
    current = start
    for step in range(1, recipe.steps + 1):
        x, y = examples.examples_at(torch.randperm(examples.n_examples, generator=generator)[:batch_size])
        if problem.loss.term_count(y) != 0:  # no label counts (all -100): no loss, no step (a loop skips it)
            opt.zero_grad()
            loss = problem.batch_loss(params, x.to(problem.device), y.to(problem.device))
            if not torch.isfinite(loss):
                return RunOutcome(True, start, None)
            loss.backward()
            opt.step()
        if step % recipe.check_every == 0 or step == recipe.steps:
            current = _full_loss(problem, params)
            if not math.isfinite(current) or current > limit:
                return RunOutcome(True, start, None)
    return RunOutcome(False, start, current)


@saveable
@dataclass(frozen=True, kw_only=True)
class MeasuredThreshold:
    """The bisected threshold of one optimizer at one batch size under one criterion, beside the
    predictions: ``predicted_lr`` is the fixed-Hessian threshold (lr_max_<optimizer>, before
    --safety) and ``ratio`` = measured / predicted_lr, as before; ``predictions`` holds every model's
    threshold (before --safety), ``ratios`` measured / each, ``best_prediction`` the best model's;
    ``recommended_lr`` is the headline rate as printed (times --safety: the rate a user follows)."""

    optimizer: str
    batch_size: int
    measured_lr: float | None  # largest rate seen to pass (None: even the smallest failed)
    diverging_lr: float | None  # smallest rate seen to fail (None: none found)
    predicted_lr: float | None
    ratio: float | None
    runs: int
    wall_time_s: float
    note: str = ""
    criterion: str = "blowup"
    seeds: int = 1
    predictions: dict[str, float | None] | None = None
    ratios: dict[str, float | None] | None = None
    recommended_lr: float | None = None
    ratio_to_recommended: float | None = None
    best_model: str | None = None
    best_prediction: float | None = None
    ratio_to_best: float | None = None

    def to_dict(self) -> dict:
        return to_jsonable(self)


class _Outcomes:
    """Runs at each learning rate, one per seed, computed when first needed and shared by the criteria."""

    def __init__(self, run: Callable[[float, int], RunOutcome], seeds: Sequence[int],
                 on_run: Callable[[], None] | None) -> None:
        self.run, self.seeds, self.on_run = run, list(seeds), on_run
        self.cache: dict[tuple[float, int], RunOutcome] = {}

    def outcome(self, lr: float, seed: int) -> RunOutcome:
        if (lr, seed) not in self.cache:
            self.cache[(lr, seed)] = self.run(lr, seed)
            if self.on_run:
                self.on_run()
        return self.cache[(lr, seed)]

    def fails(self, lr: float, criterion: str) -> bool:
        """Does a majority of the seeds fail? (Seeds are run only until the vote is decided.)"""
        failed = passed = 0
        for seed in self.seeds:
            if self.outcome(lr, seed).fails(criterion):
                failed += 1
            else:
                passed += 1
            if 2 * failed > len(self.seeds) or 2 * passed >= len(self.seeds):
                break
        return 2 * failed > len(self.seeds)


def _bisect(fails: Callable[[float], bool], guess: float, precision: float) -> tuple[float | None, float | None, str]:
    """(largest passing rate, smallest failing rate, note) from a bracket around ``guess``."""
    lo, hi = guess / 4, guess * 4
    for _ in range(6):  # widen upwards until hi fails
        if fails(hi):
            break
        lo, hi = hi, hi * 4
    else:
        return lo, None, f"no failure up to lr {lo:.3g}"
    for _ in range(6):  # widen downwards until lo passes
        if not fails(lo):
            break
        hi, lo = lo, lo / 4
    else:
        return None, hi, f"fails even at lr {hi:.3g}"
    while hi / lo > 1 + precision:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fails(mid) else (mid, hi)
    return lo, hi, ""


def run_seeds(seed: int, batch_size: int, optimizer: str, n: int) -> list[int]:
    """The batch-order seeds of one (optimizer, B): independent of the grid and of each other."""
    states = np.random.SeedSequence([seed, batch_size, OPTIMIZERS.index(optimizer)]).generate_state(n)
    return [int(s) for s in states]


def measure_threshold(problem: Problem, optimizer: str, batch_size: int, predicted: float | None, *,
                      recipe: TrainingRecipe = TrainingRecipe(), seed: int = 0,
                      adam_state: tuple[Tensor, Tensor, float] | None = None, criteria: Sequence[str] = ("blowup",),
                      predictions: dict[str, float | None] | None = None, recommended: float | None = None,
                      best_model: str | None = None, on_run: Callable[[], None] | None = None
                      ) -> list[MeasuredThreshold]:
    """One threshold per criterion, bisected from [guess/4, 4 guess] (guess: the ``best_model``'s
    prediction, else ``predicted``), the runs shared between criteria."""
    problem = problem.cast(getattr(torch, recipe.dtype))  # once, not per run
    outcomes = _Outcomes(lambda lr, s: train(problem, optimizer, lr, batch_size, recipe, s, adam_state),
                         run_seeds(seed, batch_size, optimizer, recipe.seeds), on_run)
    best = (predictions or {}).get(best_model) if best_model else None
    start = best or predicted
    # on a grid of 2^(1/16) steps, so that predictions equal to rounding (e.g. from 1 or several
    # processes) start the same bisection and measure the same rates
    start = 2.0 ** (round(16 * math.log2(start)) / 16) if start and start > 0 else 0.1
    measured = []
    for criterion in criteria:
        t0, before = time.perf_counter(), len(outcomes.cache)
        lo, hi, note = _bisect(lambda lr: outcomes.fails(lr, criterion), start, recipe.precision)
        ratios = {k: (lo / v if lo is not None and v else None) for k, v in (predictions or {}).items()}
        measured.append(MeasuredThreshold(
            optimizer=optimizer, batch_size=batch_size, measured_lr=lo, diverging_lr=hi, predicted_lr=predicted,
            ratio=lo / predicted if lo is not None and predicted else None, runs=len(outcomes.cache) - before,
            wall_time_s=time.perf_counter() - t0, note=note, criterion=criterion, seeds=recipe.seeds,
            predictions=predictions, ratios=ratios, recommended_lr=recommended,
            ratio_to_recommended=lo / recommended if lo is not None and recommended else None,
            best_model=best_model, best_prediction=best, ratio_to_best=lo / best if lo is not None and best else None))
    return measured


@saveable
@dataclass(frozen=True, kw_only=True)
class ValidationResult:
    """Measured thresholds per optimizer, batch size and criterion, and how they were measured."""

    thresholds: tuple[MeasuredThreshold, ...]
    recipe: TrainingRecipe
    batch_sizes: tuple[int, ...]
    optimizers: tuple[str, ...]
    criteria: tuple[str, ...]
    seed: int
    adam_source: str | None
    wall_time_s: float

    @property
    def definition(self) -> str:
        return "; ".join(self.recipe.definition(c) for c in self.criteria) + (
            f"; a rate fails when most of {self.recipe.seeds} seeded runs fail")

    notes: tuple[str, ...] = ()

    @property
    def warnings(self) -> list[str]:
        return list(self.notes) + [f"{t.optimizer} B={t.batch_size} ({t.criterion}): {t.note}"
                                   for t in self.thresholds if t.note]

    def record(self) -> dict[str, Any]:
        """The keys validation adds to lr.json and validation.json: ``validation`` holds the blow-up
        (divergence) thresholds, one row per optimizer and B as before; ``validation_no_progress``
        the no-progress ones."""
        rows = {c: [t.to_dict() for t in self.thresholds if t.criterion == c] for c in self.criteria}
        return {"validation": rows.get("blowup", []), "validation_no_progress": rows.get("no_progress", []),
                "validation_definition": self.definition}

    def find(self, optimizer: str, batch_size: int, criterion: str = "blowup") -> MeasuredThreshold | None:
        return next((t for t in self.thresholds if (t.optimizer, t.batch_size, t.criterion) ==
                     (optimizer, batch_size, criterion)), None)


def adam_starting_states(problem: Problem, source: str | None, saved: SavedAdamState | None,
                         moments: GradientMoments | None = None,
                         ) -> Callable[[int], tuple[Tensor, Tensor, float]] | None:
    """The Adam state a run at B starts from, for the source the prediction used."""
    if source is None:
        return None
    if source == "saved" and saved is None:
        raise ValueError("the prediction used the checkpoint's Adam state: pass it (saved_state) to validate it")
    if source == "estimated" and moments is None:
        moments = gradient_moments(problem)
    return lambda b: starting_state(source, b, moments, saved)


def validate_learning_rates(problem: Problem, result: Any, recipe: TrainingRecipe | None = None, *,
                            optimizers: Sequence[str] = ("sgd", "momentum", "adam"),
                            batch_sizes: Sequence[int] | None = None, criteria: Sequence[str] = CRITERIA,
                            saved_state: SavedAdamState | None = None, moments: GradientMoments | None = None,
                            seed: int = 0, progress: Any = None, pieces: Pieces = COMPUTE_NOW) -> ValidationResult:
    """Bisect the measured thresholds of ``optimizers`` at ``batch_sizes`` (default: up to four of the
    scan's sizes below N) and set them beside ``result``'s predictions (a LearningRateResult).

    The optimizers' hyperparameters (momentum, betas, eps, weight decay) are the prediction's;
    Adam starts from the state the prediction assumed (``saved_state``: the checkpoint's moments,
    needed when the prediction used them; ``moments``: the gradient moments of an estimated Adam
    state, computed here when not given). Under torchrun the runs are spread over the ranks."""
    t0 = time.perf_counter()
    recipe = recipe or TrainingRecipe()
    hp = result.hyperparameters
    recipe = dataclasses.replace(recipe, **hp.optimizer_values())
    unknown = set(optimizers) - set(OPTIMIZERS)
    if unknown or not optimizers:
        raise ValueError(f"optimizers must be among {', '.join(OPTIMIZERS)}, got {', '.join(optimizers) or 'none'}")
    if set(criteria) - set(CRITERIA) or not criteria:
        raise ValueError(f"criteria must be among {', '.join(CRITERIA)}")
    n = result.scan.n_samples
    sizes = sorted(set(batch_sizes or result.default_validation_sizes()))
    if not sizes:
        raise ValueError(f"no batch size below the sample ({n} examples) to train at: pass batch_sizes")
    if sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"batch sizes must lie in 1..{n} (the sample), got {sizes[0]}..{sizes[-1]}")
    if "adam" in optimizers and result.adam is None:
        raise ValueError("the prediction has no Adam threshold (learning_rates(..., optimizers without 'adam')?)")
    states = adam_starting_states(problem, result.adam.source if "adam" in optimizers else None, saved_state, moments)
    note = horizon_note(result, recipe) if "adam" in optimizers else None
    processes = problem.group  # the runs are dealt out to them
    problem = problem.gathered()  # training runs need every example; under torchrun each rank runs its own
    if progress is not None:
        progress.stage("training runs", None, unit="run")

    def measure(task: tuple[int, str]) -> list[MeasuredThreshold]:
        b, name = task
        predictions = result.predictions(name, b)
        return measure_threshold(
            problem, name, b, predictions.get(name), recipe=recipe, seed=seed,
            adam_state=states(b) if name == "adam" else None, criteria=criteria, predictions=predictions,
            recommended=result.recommended(name, b), best_model=result.best_model(name),
            on_run=(lambda: progress.advance(1)) if progress is not None else None)

    tasks = [(b, name) for b in sizes for name in optimizers]
    measured = processes.spread(tasks, lambda task: pieces.own(f"threshold-{task[0]}-{task[1]}",
                                                               lambda: measure(task)))
    return ValidationResult(thresholds=tuple(t for group in measured for t in group), recipe=recipe,
                            batch_sizes=tuple(sizes), optimizers=tuple(optimizers), criteria=tuple(criteria),
                            seed=seed, adam_source=result.adam.source if "adam" in optimizers else None,
                            wall_time_s=time.perf_counter() - t0, notes=(note,) if note else ())


def horizon_note(result: Any, recipe: TrainingRecipe) -> str | None:
    """A warning when runs from a saved Adam state are not as long as the prediction assumed."""
    adam = result.adam
    if adam is None or adam.source != "saved" or adam.horizon == recipe.steps:
        return None
    return (f"Adam's prediction carried the saved state {adam.horizon} steps forward, but the runs take "
            f"{recipe.steps}: rerun lr with `adam_horizon` {recipe.steps} to compare like with like")
