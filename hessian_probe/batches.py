"""Examples in batches: consecutive chunks of a sample, and one rank's contiguous share of it
(torchrun data parallelism; the share is described by a runtime.torchrun.Shard)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .runtime.torchrun import Shard, shard_bounds

Batch = tuple[Tensor, Tensor]


def shard_batches(batches: Sequence[Batch], rank: int, world_size: int) -> tuple[list[Batch], Shard | None]:
    """Rank's contiguous share of the examples of ``batches``, in chunks as large as the largest
    batch, and the Shard describing it (None for one process: the batches unchanged)."""
    if world_size == 1:
        return list(batches), None
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    batches = [(x, y) for x, y in batches if len(x)]
    n = sum(len(x) for x, _ in batches)
    start, stop = shard_bounds(n, rank, world_size)
    if len({tuple(x.shape[1:]) for x, _ in batches}) > 1 or len({tuple(y.shape[1:]) for _, y in batches}) > 1:
        raise ValueError("sharding over processes needs batches of one example shape; pass (inputs, targets)")
    inputs, targets = joined(batches)
    chunk = max(len(x) for x, _ in batches)
    return split_batches(inputs[start:stop], targets[start:stop], chunk), Shard(rank, world_size, n)


def joined(batches: Sequence[Batch]) -> tuple[Tensor, Tensor]:
    """All inputs and all targets of ``batches``, concatenated in order."""
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def split_batches(inputs: Tensor, targets: Tensor, chunk_size: int | None) -> list[Batch]:
    """Consecutive chunks of ``chunk_size`` examples (the last may be smaller)."""
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    if chunk_size is None or chunk_size >= len(inputs):
        return [(inputs, targets)]
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    return list(zip(inputs.split(chunk_size), targets.split(chunk_size)))
