"""Bundled data: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes, no download)."""

from __future__ import annotations

import torch
from torch import Tensor


def load_digits(n_samples: int | None = None, *, seed: int = 0, image: bool = False) -> tuple[Tensor, Tensor]:
    """Digits as float32 inputs in [0, 1] (N x 64, or N x 1 x 8 x 8 with ``image``) and int64 labels.

    ``n_samples`` takes a seeded random subset without replacement.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a dependency
        raise RuntimeError("the bundled digits data needs scikit-learn: pip install scikit-learn") from exc
    bunch = sklearn_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    if n_samples is not None:
        idx = subset_indices(len(x), n_samples, seed)
        x, y = x[idx], y[idx]
    return (x.reshape(-1, 1, 8, 8) if image else x), y


def subset_indices(n_total: int, n: int, seed: int) -> Tensor:
    """Indices of a seeded random subset of ``n`` out of ``n_total`` examples, without replacement."""
    if not 0 < n <= n_total:
        raise ValueError(f"a subset of {n} examples out of {n_total} is impossible")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]
