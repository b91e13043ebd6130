"""Seeded random probe vectors, drawn on the CPU so a seed means the same numbers on any device."""

from __future__ import annotations

import torch
from torch import Tensor


def random_probes(
    k: int,
    size: int,
    *,
    seed: int,
    dtype: torch.dtype,
    device: torch.device | str,
    distribution: str = "rademacher",
) -> Tensor:
    """k x size probes: Rademacher (+-1, E zz^T = I) or standard Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    if distribution == "rademacher":
        z = torch.randint(0, 2, (k, size), generator=generator, dtype=torch.int8).to(dtype) * 2 - 1
    elif distribution == "gaussian":
        z = torch.randn(k, size, generator=generator, dtype=torch.float64).to(dtype)
    else:
        raise ValueError(f"unknown probe distribution {distribution!r}: use 'rademacher' or 'gaussian'")
    return z.to(device)
