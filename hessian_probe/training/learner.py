"""The seed authors' curvature learner as a training-loop helper: every ``every`` steps, m Lanczos
steps of the Hessian on a fixed subset of b examples, and a torch.optim.SGD's learning rate (and,
with ``heavy_ball``, its momentum) set by the rules of analysis.learner until the next estimate.

    learner = CurvatureLearner(model, F.cross_entropy, (x_b, y_b), optimizer, every=100, heavy_ball=True)
    for step, (x, y) in enumerate(loader):
        learner.step(step)                   # sets optimizer.param_groups' lr (and momentum)
        ...; optimizer.step()
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..analysis.learner import LearnerSuggestion, suggest
from ..operators import curvature_operator
from ..problem import make_problem


class CurvatureLearner:
    """Sets ``optimizer``'s lr (and momentum) from the curvature of ``data`` every ``every`` steps.
    ``safety`` multiplies the rates; ``mu_rule``: 'heavy-node' or 'median' (analysis.learner).
    ``max_growth`` (not in the seed authors' rule; None: off): each new rate is at most this many
    times the one before, starting from the optimizer's own -- measured on digits
    (benchmarks/learner.py), the rule alone runs away when a too-large rate flattens a tanh network
    (lower curvature, a larger rate, flatter still); a cap of 2 stops that."""

    def __init__(self, model: nn.Module, loss: str | Callable, data: tuple[Tensor, Tensor],
                 optimizer: torch.optim.Optimizer, *, every: int = 100, lanczos_steps: int = 20,
                 heavy_ball: bool = False, mu_rule: str = "heavy-node", safety: float = 1.0, seed: int = 0,
                 chunk_size: int | None = None, dtype: torch.dtype | None = None,
                 max_growth: float | None = None) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"the curvature learner sets a torch.optim.SGD's rate, not a {type(optimizer).__name__}'s")
        if every < 1 or lanczos_steps < 1 or not 0 < safety <= 1:
            raise ValueError("every and lanczos_steps must be at least 1 and safety in (0, 1]")
        self.model, self.loss, self.data, self.optimizer = model, loss, data, optimizer
        self.every, self.lanczos_steps, self.heavy_ball = every, lanczos_steps, heavy_ball
        self.mu_rule, self.safety, self.seed = mu_rule, safety, seed
        self.chunk_size, self.dtype, self.max_growth = chunk_size, dtype, max_growth
        self.history: list[tuple[int, LearnerSuggestion]] = []
        self.applied: list[tuple[int, float, float | None]] = []  # (step, lr, momentum) set, after max_growth
        self.skipped: list[tuple[int, str]] = []  # steps where no estimate could be made, and why
        self.seconds = 0.0

    @property
    def n_products(self) -> int:
        return sum(s.n_products for _, s in self.history)

    def step(self, step: int) -> LearnerSuggestion | None:
        """Estimate and set the settings every ``every`` steps (step 0 included), else None (also when
        the weights are not finite or the curvature is all zero: ``skipped`` says where and why)."""
        if step % self.every:
            return None
        t0 = time.perf_counter()
        try:
            problem = make_problem(self.model, self.data, self.loss, chunk_size=self.chunk_size, dtype=self.dtype)
            suggestion = suggest(curvature_operator(problem, "hessian"), lanczos_steps=self.lanczos_steps,
                                 mu_rule=self.mu_rule, safety=self.safety, seed=self.seed)
        except ValueError as exc:  # non-finite weights, or no curvature left: training keeps its settings
            self.skipped.append((step, str(exc).splitlines()[0]))
            self.seconds += time.perf_counter() - t0
            return None
        for group in self.optimizer.param_groups:
            rate = suggestion.heavy_ball_lr if self.heavy_ball else suggestion.sgd_lr
            group["lr"] = min(rate, self.max_growth * group["lr"]) if self.max_growth else rate
            if self.heavy_ball:
                group["momentum"] = suggestion.heavy_ball_momentum
        group = self.optimizer.param_groups[0]
        self.history.append((step, suggestion))
        self.applied.append((step, group["lr"], group.get("momentum")))
        self.seconds += time.perf_counter() - t0
        return suggestion
