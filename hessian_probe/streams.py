"""A sample read from its source at every pass, chunk by chunk, instead of held in memory.

A :class:`StreamedBatches` is a fixed list of example indices cut into chunks; each pass over it
(one operator product, one loss) asks its :class:`ExampleSource` for the chunks in order, so
memory is bounded by a chunk, not by the sample. The chunks, their order and their sizes are the
same at every pass, so the operator is the same fixed matrix as that of the stacked sample:
sum_b (|b|/N) H_b does not depend on how the examples are cut or where they are kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .errors import InputError
from .placement import placed
from .runtime.torchrun import Shard, shard_bounds

Batch = tuple[Tensor, Tensor]


class ExampleSource(Protocol):
    """Examples by index: a map-style dataset with its collate (loading.sources.DatasetSource)."""

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> Batch:
        """The examples at ``indices``, in that order, as one (inputs, targets) batch."""

    def read_chunks(self, chunks: Sequence[Sequence[int]]) -> Iterator[Batch]:
        """``read(c)`` for every chunk c, in order (a loader's workers may read ahead)."""


class StreamedBatches(Sequence[Batch]):
    """The examples ``indices`` of ``source`` in chunks of ``chunk_size``, read at every pass and
    placed on ``device`` in ``dtype`` (integers as int64). ``whole``: the indices of the whole
    sample when these are one rank's shard of it (``examples_at`` addresses the whole sample)."""

    def __init__(self, source: ExampleSource, indices: Sequence[int], chunk_size: int | None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 whole: Sequence[int] | None = None) -> None:
        self.source = source
        self.indices = tuple(int(i) for i in indices)
        if not self.indices:
            raise ValueError("the dataset is empty: a curvature operator needs at least one example")
        self.chunk_size = min(chunk_size or len(self.indices), len(self.indices))
        self.device, self.dtype = torch.device(device), dtype
        self.whole = self.indices if whole is None else tuple(int(i) for i in whole)
        step = self.chunk_size
        self.chunks = tuple(self.indices[i : i + step] for i in range(0, len(self.indices), step))
        self._targets: tuple[Tensor, ...] | None = None

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Batch]:
        targets = []
        for chunk, (x, y) in zip(self.chunks, self.source.read_chunks(self.chunks), strict=True):
            if len(x) != len(chunk) or len(y) != len(chunk):
                raise InputError(f"reading {len(chunk)} examples of the data gave {len(x)} inputs and {len(y)} "
                                 "targets: each item must be one (input, target) example")
            x, y = placed(x, self.device, self.dtype), placed(y, self.device, self.dtype)
            targets.append(y)
            yield x, y
        if self._targets is None:
            self._targets = tuple(targets)

    def __getitem__(self, i: int | slice) -> Batch | list[Batch]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        return self._placed(self.source.read(self.chunks[range(len(self))[i]]))

    def targets(self) -> tuple[Tensor, ...]:
        """Every chunk's targets (kept from the first whole pass: labels are small beside inputs)."""
        if self._targets is None:
            for _ in self:
                pass
        return self._targets

    @property
    def n_examples(self) -> int:
        """N: the examples of the whole sample."""
        return len(self.whole)

    def examples_at(self, positions: Tensor) -> Batch:
        """The examples at ``positions`` of the whole sample (0..N-1, in the sample's order)."""
        return self._placed(self.source.read([self.whole[int(p)] for p in positions]))

    def _placed(self, batch: Batch) -> Batch:
        return placed(batch[0], self.device, self.dtype), placed(batch[1], self.device, self.dtype)

    def on(self, device: torch.device | str, dtype: torch.dtype) -> StreamedBatches:
        """The same examples placed on another device or in another dtype."""
        moved = StreamedBatches(self.source, self.indices, self.chunk_size, device, dtype, self.whole)
        if self._targets is not None:
            moved._targets = tuple(placed(y, moved.device, dtype) for y in self._targets)
        return moved

    def rechunked(self, chunk_size: int | None) -> StreamedBatches:
        """The same examples in chunks of ``chunk_size`` (the operator is the same)."""
        if chunk_size is None or min(chunk_size, len(self.indices)) == self.chunk_size:
            return self
        return self._with(self.indices, chunk_size, self.whole, 0)

    def sharded(self, rank: int, world_size: int) -> tuple[StreamedBatches, Shard | None]:
        """Rank's contiguous share of the indices, in chunks of the same size (None: one process)."""
        if world_size == 1:
            return self, None
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        start, stop = shard_bounds(len(self.indices), rank, world_size)
        return self._with(self.indices[start:stop], self.chunk_size, self.indices, start), \
            Shard(rank, world_size, len(self.indices))

    def gathered(self) -> StreamedBatches:
        """The whole sample (every rank can read every example of the source itself)."""
        if self.whole == self.indices:
            return self
        return StreamedBatches(self.source, self.whole, self.chunk_size, self.device, self.dtype)

    def _with(self, indices: Sequence[int], chunk_size: int | None, whole: Sequence[int],
              start: int) -> StreamedBatches:
        """The examples ``indices`` (those at ``start``.. of self.indices), keeping the targets
        already read when the chunks' targets can be cut anew (same shape beyond the batch)."""
        other = StreamedBatches(self.source, indices, chunk_size, self.device, self.dtype, whole)
        cached = self._targets
        if cached is not None and len({tuple(y.shape[1:]) for y in cached}) == 1:
            every = torch.cat(cached)[start : start + len(other.indices)]
            other._targets = tuple(every.split(other.lengths))
        return other

    def __repr__(self) -> str:
        return f"StreamedBatches({len(self.indices)} examples in {len(self)} chunks of {self.chunk_size})"


@dataclass(frozen=True)
class HeldExamples:
    """A sample held in memory, by position (what StreamedBatches.examples_at reads on demand)."""

    inputs: Tensor
    targets: Tensor

    @property
    def n_examples(self) -> int:
        return len(self.inputs)

    def examples_at(self, positions: Tensor) -> Batch:
        positions = positions.to(self.inputs.device)
        return self.inputs[positions], self.targets[positions]


def batch_lengths(batches: Sequence[Batch]) -> tuple[int, ...]:
    """The size of every batch, without reading a streamed sample."""
    if isinstance(batches, StreamedBatches):
        return batches.lengths
    return tuple(len(x) for x, _ in batches)


def batch_targets(batches: Sequence[Batch]) -> tuple[Tensor, ...]:
    """The targets of every batch (a streamed sample's from its first whole pass)."""
    if isinstance(batches, StreamedBatches):
        return batches.targets()
    return tuple(y for _, y in batches)


Examples = HeldExamples | StreamedBatches  # a whole sample by position (Problem.indexed_examples)
