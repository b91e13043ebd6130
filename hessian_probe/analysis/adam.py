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
- ``saved``: the checkpoint's exp_avg_sq, bias-corrected with its step, for every B: the state a
  resumed run starts from. Within a run of T steps, v moves a fraction 1 - beta2^T toward v_B; the
  median of v_B / v_saved per B is reported so a user sees how far the saved state is from the
  batch size asked about.
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


def choose_source(requested: str, saved: SavedAdamState | None) -> str:
    """``auto``: the checkpoint's moments when it has them, else the estimate."""
    if requested not in SOURCES:
        raise ValueError(f"unknown Adam state {requested!r}: use one of {', '.join(SOURCES)}")
    if requested == "saved" and saved is None:
        raise ValueError("adam_state='saved' needs the checkpoint's Adam moments (exp_avg_sq), which it does not carry")
    return ("saved" if saved is not None else "estimated") if requested == "auto" else requested


def preconditioning(source: str, moments: GradientMoments | None, saved: SavedAdamState | None, beta2: float,
                    eps: float, batch_sizes: list[int]) -> tuple[Tensor | Callable[[int], Tensor], AdamPreconditioning]:
    """D (one tensor, or a function of B) and its description."""
    if source == "saved":
        v_saved = saved.second_moment(beta2)
        ratios = None
        if moments is not None:
            floor = torch.finfo(v_saved.dtype).tiny
            ratios = {b: float(torch.median(moments.batch_second_moment(b).to(v_saved) / v_saved.clamp_min(floor)))
                      for b in batch_sizes}
        text = (f"the checkpoint's exp_avg_sq, bias-corrected with its step {saved.step:g} (v / (1 - beta2^step)), "
                "for every batch size; saved_to_batch_ratio gives, per B, the median of v_B / v_saved with v_B the "
                "second moment training at B would settle to (from per-example gradients)")
        return torch.sqrt(v_saved) + eps, AdamPreconditioning(source=source, beta2=beta2, eps=eps,
                                                               saved_step=float(saved.step),
                                                               saved_to_batch_ratio=ratios, description=text)
    text = ("estimated from per-example gradients at the checkpoint: v_B = g*g + x(B) (s - g*g), the second moment "
            "Adam settles to when it trains at batch size B (no saved state used)")

    def at(batch_size: int) -> Tensor:
        return torch.sqrt(moments.batch_second_moment(batch_size)) + eps

    return at, AdamPreconditioning(source=source, beta2=beta2, eps=eps, saved_step=None, saved_to_batch_ratio=None,
                                   description=text)


def starting_state(source: str, batch_size: int, moments: GradientMoments | None,
                   saved: SavedAdamState | None) -> tuple[Tensor, Tensor, float]:
    """(exp_avg, exp_avg_sq, step), flat, of the Adam run that tests the prediction at B: the saved
    state as it is, or the settled state m = g, v = v_B."""
    if source == "saved":
        first = saved.exp_avg if saved.exp_avg is not None else torch.zeros_like(saved.exp_avg_sq)
        return first, saved.exp_avg_sq, float(saved.step)
    return moments.mean, moments.batch_second_moment(batch_size), float(SETTLED_STEP)
