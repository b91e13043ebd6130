"""Adam's preconditioner at batch size B: the second moment the prediction assumes, and the state a
validating run starts from.

Adam steps by lr m_hat / (sqrt(v_hat) + eps); near a point its curvature is that of
D^-1/2 H_B D^-1/2 with D = diag(sqrt(v_hat) + eps) (Cohen et al. 2022, "Adaptive gradient
methods at the edge of stability", arXiv 2207.14484). Two sources of v_hat:

- ``estimated``: v_B = E[g_B * g_B] = g * g + x(B) (s - g * g) from per-example gradients at the
  checkpoint (noise.GradientMoments): the second moment Adam settles to when it trains at B here.
  Its noise part scales like 1/B, which is where the square-root rule comes from (Granziol et
  al. 2022): D_B ~ sigma / sqrt(B). A run validating it starts from m = g, v = v_B, with bias
  corrections 1 (a settled state).
- ``saved``: the checkpoint's moments, the state a resumed run starts from, carried ``horizon``
  steps forward at batch size B: in expectation v_T = beta2^T v + (1 - beta2^T) v_B, bias-corrected
  with the saved step s, v_hat_T = v_T / (1 - beta2^(s + T)). A run validating it resumes from the
  saved state itself. (Measured: with the saved v_hat alone, the threshold came out 2-17x below the
  measured one at batch sizes smaller than the training one, where v grows toward v_B within the
  run; docs/theory.md.) The median of v_B / v_saved per B is reported beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..results import saveable
from .noise import GradientMoments

SOURCES = ("auto", "saved", "estimated")
SETTLED_STEP = 1_000_000  # Adam's step count in a settled state: both bias corrections are 1 to float precision


@dataclass(frozen=True, kw_only=True)
class SavedAdamState:
    """A checkpoint's Adam moments in the problem's flat parameter layout, and its step count."""

    exp_avg_sq: Tensor
    exp_avg: Tensor | None
    step: float

    def second_moment(self, beta2: float) -> Tensor:
        """v_hat = v / (1 - beta2^step)."""
        return self.exp_avg_sq / (1.0 - beta2 ** float(self.step))


@saveable
@dataclass(frozen=True, kw_only=True)
class AdamPreconditioning:
    """Which second moment Adam's thresholds assume, and how it compares with training at each B."""

    source: str  # "saved" or "estimated"
    beta2: float
    eps: float
    saved_step: float | None
    saved_to_batch_ratio: dict[int, float] | None  # per B: median of v_B / v_saved (saved source only)
    description: str
    horizon: int | None = None  # steps the saved state is carried forward at B (saved source only)


def choose_source(requested: str, saved: SavedAdamState | None) -> str:
    """``auto``: the checkpoint's moments when it has them, else the estimate."""
    if requested not in SOURCES:
        raise ValueError(f"unknown Adam state {requested!r}: use one of {', '.join(SOURCES)}")
    if requested == "saved" and saved is None:
        raise ValueError("adam_state='saved' needs the checkpoint's Adam moments (exp_avg_sq), which it does not carry")
    return ("saved" if saved is not None else "estimated") if requested == "auto" else requested


def _diagonal(v: Tensor, eps: float) -> Tensor:
    """D = sqrt(v) + eps, refused when it has zero entries (eps = 0 where v = 0)."""
    d = torch.sqrt(v) + eps
    if not bool((d > 0).all()):
        raise ValueError(f"Adam's preconditioner sqrt(v) + eps has {int((d <= 0).sum())} zero entries (eps = {eps:g} "
                         "and a zero second moment there): set eps > 0 (`eps`)")
    return d


def saved_diagonal(saved: SavedAdamState, beta2: float, eps: float) -> Tensor:
    """Adam's D = sqrt(v_hat) + eps from a saved state as it stands (its step's bias correction)."""
    return _diagonal(saved.second_moment(beta2), eps)


def preconditioning(source: str, moments: GradientMoments, saved: SavedAdamState | None, beta2: float,
                    eps: float, batch_sizes: list[int], horizon: int = 200
                    ) -> tuple[Callable[[int], Tensor], AdamPreconditioning]:
    """D as a function of B, and its description."""
    if source == "saved":
        v_saved = saved.second_moment(beta2)
        floor = torch.finfo(v_saved.dtype).tiny
        ratios = {b: float(torch.median(moments.batch_second_moment(b).to(v_saved) / v_saved.clamp_min(floor)))
                  for b in batch_sizes}
        kept = beta2 ** horizon
        correction = 1.0 - beta2 ** (float(saved.step) + horizon)

        def resumed(batch_size: int) -> Tensor:
            v = kept * saved.exp_avg_sq + (1.0 - kept) * moments.batch_second_moment(batch_size).to(saved.exp_avg_sq)
            return _diagonal(v / correction, eps)

        text = (f"the checkpoint's exp_avg_sq (step {saved.step:g}) carried {horizon} steps forward at each batch "
                f"size: v_T = beta2^T v + (1 - beta2^T) v_B, bias-corrected by 1 - beta2^(step + T), v_B from "
                "per-example gradients; saved_to_batch_ratio gives, per B, the median of v_B / v_saved")
        return resumed, AdamPreconditioning(source=source, beta2=beta2, eps=eps, saved_step=float(saved.step),
                                            saved_to_batch_ratio=ratios, description=text, horizon=horizon)
    text = ("estimated from per-example gradients at the checkpoint: v_B = g*g + x(B) (s - g*g), the second moment "
            "Adam settles to when it trains at batch size B (no saved state used)")

    def settled(batch_size: int) -> Tensor:
        return _diagonal(moments.batch_second_moment(batch_size), eps)

    return settled, AdamPreconditioning(source=source, beta2=beta2, eps=eps, saved_step=None,
                                        saved_to_batch_ratio=None, description=text)


def starting_state(source: str, batch_size: int, moments: GradientMoments | None,
                   saved: SavedAdamState | None) -> tuple[Tensor, Tensor, float]:
    """(exp_avg, exp_avg_sq, step), flat, of the Adam run that tests the prediction at B: the saved
    state as it is, or the settled state m = g, v = v_B."""
    if source == "saved":
        first = saved.exp_avg if saved.exp_avg is not None else torch.zeros_like(saved.exp_avg_sq)
        return first, saved.exp_avg_sq, float(saved.step)
    return moments.mean, moments.batch_second_moment(batch_size), float(SETTLED_STEP)
