"""Batch-noise statistics: how the batch operator and the batch gradient scatter around the full sample's.

For a batch of B examples drawn without replacement from N, the batch mean of any per-example
quantity q_i has covariance x(B) Sigma, with x(B) = (N - B)/(B (N - 1)) and Sigma = (1/N) sum_i
(q_i - q)(q_i - q)^T the per-example covariance (Cochran, Sampling Techniques, 1977, thm 2.2).
So one Sigma, estimated from batches of any size, gives the noise at every B:

- the batch Hessian projected on k orthonormal directions Q (rows): H_B,k = Q H_B Q^T, whose
  deviations D_B = H_B,k - H_k have E[D_B (x) D_B] = x(B) Sigma_H (``SubspaceNoise``);
- the batch gradient, coordinate by coordinate: E[g_B * g_B] = g * g + x(B) (s - g * g) with
  s = (1/N) sum_i g_i * g_i (``GradientMoments``): Adam's second moment when it trains at B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..results import saveable
from ..streams import batch_targets


def effective_noise(batch_size: int, n_samples: int) -> float:
    """x = (N - B) / (B (N - 1)): the variance factor of a batch mean drawn without replacement."""
    return (n_samples - batch_size) / (batch_size * (n_samples - 1)) if n_samples > 1 else 0.0


@saveable
@dataclass(frozen=True, kw_only=True)
class SubspaceNoise:
    """The full-sample operator in a k-dim subspace (``mean``, k x k) and the per-example covariance
    of the batch operators there (``covariance`` = Sigma, k^2 x k^2, row-major vec), estimated from
    ``n_batches`` batches."""

    mean: np.ndarray
    covariance: np.ndarray
    n_batches: int
    n_samples: int

    @classmethod
    def from_batches(cls, mean: np.ndarray, projected: Sequence[tuple[int, np.ndarray]],
                     n_samples: int) -> SubspaceNoise:
        """Sigma = mean over batches of D_j (x) D_j / x(B_j) from (B_j, H_Bj,k) pairs (batches with B_j < N):
        unbiased for every mix of batch sizes."""
        mean = 0.5 * (np.asarray(mean, dtype=float) + np.asarray(mean, dtype=float).T)
        k = len(mean)
        total, used = np.zeros((k * k, k * k)), 0
        for batch_size, matrix in projected:
            x = effective_noise(batch_size, n_samples)
            if x <= 0:
                continue
            deviation = 0.5 * (matrix + matrix.T) - mean
            total += np.kron(deviation, deviation) / x
            used += 1
        return cls(mean=mean, covariance=total / max(used, 1), n_batches=used, n_samples=n_samples)

    def at(self, batch_size: int) -> np.ndarray:
        """E[D_B (x) D_B] = x(B) Sigma."""
        return effective_noise(batch_size, self.n_samples) * self.covariance

    def direction_std(self, batch_size: int) -> np.ndarray:
        """Standard deviation of q_i^T H_B q_i over batches of size B, per direction i."""
        k = len(self.mean)
        diagonal = self.at(batch_size)[np.arange(k) * (k + 1), np.arange(k) * (k + 1)]
        return np.sqrt(np.clip(diagonal, 0, None))


@saveable
@dataclass(frozen=True, kw_only=True)
class GradientMoments:
    """The mean gradient g and the mean per-example squared gradient s = (1/N) sum_i g_i * g_i (flat)."""

    mean: Tensor
    mean_square: Tensor
    n_samples: int

    def batch_second_moment(self, batch_size: int) -> Tensor:
        """v_B = E[g_B * g_B] = g * g + x(B) (s - g * g): the second moment Adam averages at batch size B."""
        square = self.mean * self.mean
        return square + effective_noise(batch_size, self.n_samples) * (self.mean_square - square).clamp_min(0)

    @property
    def noise_trace(self) -> float:
        """tr Sigma_g = sum (s - g * g): the per-example gradient variance, summed over coordinates."""
        return float((self.mean_square - self.mean * self.mean).clamp_min(0).sum())


def _check_equal_terms(problem) -> None:
    """The moments weigh examples equally: refused where examples count different numbers of terms
    (labels -100 on some positions), where each example's own mean would be wrong weights."""
    counts = {problem.loss.term_count(y[i : i + 1]) for y in batch_targets(problem.batches) for i in range(len(y))}
    if len(counts) > 1:
        from ..errors import UsageError

        raise UsageError("per-example gradient moments (Adam's preconditioner estimated at the checkpoint) need "
                         "examples that count the same number of labels: some have labels -100 (padding); give "
                         "the checkpoint's Adam state, or data without left-out labels")


def gradient_moments(problem) -> GradientMoments:
    """Per-example gradients (torch.func.vmap of grad over the examples of each batch, in slices that
    keep slice x P values near 2^25) reduced to their mean and mean square."""
    space = problem.space
    _check_equal_terms(problem)

    def example_loss(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return problem.batch_loss(params, x[None], y[None])

    per_example = torch.func.vmap(torch.func.grad(example_loss), in_dims=(None, 0, 0))
    slice_size = max(1, (1 << 25) // max(space.size, 1))

    def moments(x: Tensor, y: Tensor) -> Tensor:
        total = None
        for xs, ys in zip(x.split(slice_size), y.split(slice_size)):
            grads = space.flatten(per_example(problem.params, xs, ys), batch_dims=1)
            part = torch.stack([grads.sum(0), grads.square().sum(0)])
            total = part if total is None else total + part
        return total / len(x)

    both = problem.sample_mean("the per-example gradients", moments)
    return GradientMoments(mean=both[0], mean_square=both[1], n_samples=problem.n_samples)
