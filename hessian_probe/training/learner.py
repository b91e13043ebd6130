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
    ``safety`` multiplies the rates; ``mu_rule``: 'heavy-node' or 'median' (analysis.learner)."""

    def __init__(self, model: nn.Module, loss: str | Callable, data: tuple[Tensor, Tensor],
                 optimizer: torch.optim.Optimizer, *, every: int = 100, lanczos_steps: int = 20,
                 heavy_ball: bool = False, mu_rule: str = "heavy-node", safety: float = 1.0, seed: int = 0,
                 chunk_size: int | None = None, dtype: torch.dtype | None = None) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"the curvature learner sets a torch.optim.SGD's rate, not a {type(optimizer).__name__}'s")
        if every < 1 or lanczos_steps < 1 or not 0 < safety <= 1:
            raise ValueError("every and lanczos_steps must be at least 1 and safety in (0, 1]")
        self.model, self.loss, self.data, self.optimizer = model, loss, data, optimizer
        self.every, self.lanczos_steps, self.heavy_ball = every, lanczos_steps, heavy_ball
        self.mu_rule, self.safety, self.seed = mu_rule, safety, seed
        self.chunk_size, self.dtype = chunk_size, dtype
        self.history: list[tuple[int, LearnerSuggestion]] = []
        self.seconds = 0.0

    @property
    def n_products(self) -> int:
        return sum(s.n_products for _, s in self.history)

    def step(self, step: int) -> LearnerSuggestion | None:
        """Estimate and set the settings every ``every`` steps (step 0 included), else None."""
        if step % self.every:
            return None
        t0 = time.perf_counter()
        problem = make_problem(self.model, self.data, self.loss, chunk_size=self.chunk_size, dtype=self.dtype)
        suggestion = suggest(curvature_operator(problem, "hessian"), lanczos_steps=self.lanczos_steps,
                             mu_rule=self.mu_rule, safety=self.safety, seed=self.seed)
        for group in self.optimizer.param_groups:
            group["lr"] = suggestion.heavy_ball_lr if self.heavy_ball else suggestion.sgd_lr
            if self.heavy_ball:
                group["momentum"] = suggestion.heavy_ball_momentum
        self.history.append((step, suggestion))
        self.seconds += time.perf_counter() - t0
        return suggestion
