"""The seed authors' curvature learner as a training-loop helper: every ``every`` steps, m Lanczos
steps of the Hessian on a fixed subset of b examples, and a torch.optim.SGD's learning rate (and,
with ``heavy_ball``, its momentum) set by the rules of analysis.learner until the next estimate.

    learner = CurvatureLearner(model, F.cross_entropy, (x_b, y_b), optimizer, every=100, heavy_ball=True)
    for step, (x, y) in enumerate(loader):
        learner.step(step)                   # sets optimizer.param_groups' lr (and momentum)
        ...; optimizer.step()

With ``batch_size`` (the training loop's), each estimate also takes v^T H_B v on ``noise_batches``
batches of that size drawn with replacement from ``data`` (v the top Ritz vector; one product on B
examples each) and caps the rates by their mean-square stability thresholds
(analysis.learner.with_batch_noise; THEORY.md section 4.2).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..analysis.learner import MU_RULES, LearnerSuggestion, NoCurvature, suggest, with_batch_noise
from ..errors import setting
from ..operators import curvature_operator
from ..problem import Problem, make_problem, split_batches
from ..seeds import derive

MAX_MOMENTUM = 0.99  # the rule gives rho -> 1 as mu -> 0, where the heavy ball stops contracting


class CurvatureLearner:
    """Sets ``optimizer``'s lr (and momentum) from the curvature of ``data`` every ``every`` steps.
    ``safety`` multiplies the rates; ``mu_rule``: 'heavy-node' or 'median' (analysis.learner).
    ``max_growth`` (not in the seed authors' rule; None: off): each new rate is at most this many
    times the one before, starting from the optimizer's own. Measured on digits
    (benchmarks/learner.py), the rule alone runs away when a too-large rate flattens a tanh network
    (lower curvature, a larger rate, flatter still); a cap of 2 with ``safety`` 0.5 kept both
    workloads converging, with ``safety`` 1 it did not. Heavy-ball momentum is capped at
    MAX_MOMENTUM. ``batch_size``: the batch-noise correction at that batch size (module docstring;
    None: off). An estimate is skipped (``skipped`` says where and why) when the weights are not
    finite or the curvature is all zero; every other error is raised."""

    def __init__(self, model: nn.Module, loss: str | Callable, data: tuple[Tensor, Tensor],
                 optimizer: torch.optim.Optimizer, *, every: int = 100, lanczos_steps: int = 20,
                 heavy_ball: bool = False, mu_rule: str = "heavy-node", safety: float = 1.0, seed: int = 0,
                 chunk_size: int | None = None, dtype: torch.dtype | None = None,
                 max_growth: float | None = None, batch_size: int | None = None, noise_batches: int = 8) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"the curvature learner sets a torch.optim.SGD's rate, not a {type(optimizer).__name__}'s")
        if every < 1 or lanczos_steps < 1 or not 0 < safety <= 1:
            raise ValueError(f"{setting('every')} and {setting('lanczos_steps')} must be at least 1 and "
                             f"{setting('safety')} in (0, 1]")
        if mu_rule not in MU_RULES:
            raise ValueError(f"{setting('mu_rule')} must be one of {', '.join(MU_RULES)}, got {mu_rule!r}")
        if batch_size is not None and not (batch_size >= 1 and noise_batches >= 2):
            raise ValueError(f"{setting('batch_size')} must be at least 1 and {setting('noise_batches')} at least 2, "
                             f"got {batch_size} and {noise_batches}")
        if max_growth is not None and not max_growth >= 1:
            raise ValueError(f"{setting('max_growth')} must be at least 1 (or None: no cap), got {max_growth}")
        if heavy_ball and any(g.get("nesterov") or g.get("dampening") for g in optimizer.param_groups):
            raise ValueError("the heavy-ball rule is Polyak's: use torch.optim.SGD without nesterov and dampening")
        self.model, self.loss, self.data, self.optimizer = model, loss, data, optimizer
        self.every, self.lanczos_steps, self.heavy_ball = every, lanczos_steps, heavy_ball
        self.mu_rule, self.safety, self.seed = mu_rule, safety, seed
        self.chunk_size, self.dtype, self.max_growth = chunk_size, dtype, max_growth
        self.batch_size, self.noise_batches = batch_size, noise_batches
        self.history: list[tuple[int, LearnerSuggestion]] = []
        self.applied: list[tuple[int, float, float | None]] = []  # (step, lr, momentum) set, after max_growth
        self.skipped: list[tuple[int, str]] = []  # steps where no estimate could be made, and why
        self.seconds = 0.0

    def _with_batch_noise(self, problem: Problem, suggestion: LearnerSuggestion, step: int) -> LearnerSuggestion:
        """v^T H_B v on ``noise_batches`` seeded batches of ``batch_size`` drawn with replacement (their
        variance is then the per-example variance over B, whatever the size of ``data``)."""
        x, y = self.data
        generator = torch.Generator().manual_seed(derive(self.seed, "learner-noise", step))
        v = suggestion.top_vector
        curvatures = []
        for _ in range(self.noise_batches):
            idx = torch.randint(len(x), (self.batch_size,), generator=generator)
            batch = problem.with_batches(split_batches(x[idx], y[idx], self.chunk_size))
            op = curvature_operator(batch, "hessian")
            curvatures.append(float(torch.dot(v.double(), op.matvec(v.to(op.dtype)).double())))
        noisy = with_batch_noise(suggestion, curvatures, self.batch_size,
                                 momentum=min(suggestion.heavy_ball_momentum, MAX_MOMENTUM))
        return dataclasses.replace(noisy, n_products=noisy.n_products + self.noise_batches)

    @property
    def n_products(self) -> int:
        return sum(s.n_products for _, s in self.history)

    def step(self, step: int) -> LearnerSuggestion | None:
        """Estimate and set the settings every ``every`` steps (step 0 included), else None (also when
        the estimate is skipped)."""
        if step % self.every:
            return None
        t0 = time.perf_counter()
        diverged = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        try:
            if diverged:
                raise NoCurvature(f"non-finite weights ({', '.join(diverged[:3])}): training has diverged")
            problem = make_problem(self.model, self.data, self.loss, chunk_size=self.chunk_size, dtype=self.dtype)
            suggestion = suggest(curvature_operator(problem, "hessian"), lanczos_steps=self.lanczos_steps,
                                 mu_rule=self.mu_rule, safety=self.safety, seed=self.seed,
                                 keep_vector=self.batch_size is not None)
            if self.batch_size is not None:
                suggestion = self._with_batch_noise(problem, suggestion, step)
        except NoCurvature as exc:  # training keeps its settings; every other error is the caller's
            self.skipped.append((step, str(exc)))
            self.seconds += time.perf_counter() - t0
            return None
        for group in self.optimizer.param_groups:
            rate = suggestion.heavy_ball_lr if self.heavy_ball else suggestion.sgd_lr
            group["lr"] = min(rate, self.max_growth * group["lr"]) if self.max_growth else rate
            if self.heavy_ball:
                group["momentum"] = min(suggestion.heavy_ball_momentum, MAX_MOMENTUM)
        group = self.optimizer.param_groups[0]
        self.history.append((step, suggestion))
        self.applied.append((step, group["lr"], group.get("momentum")))
        self.seconds += time.perf_counter() - t0
        return suggestion
