"""How a computation runs, apart from what it computes: two small protocols the maths accepts.

- :class:`Group`: the processes a problem's sums run over. The operator (through its problem)
  carries one; kernels ask it to agree on coefficients, analyses to deal out independent work.
  ``SOLO`` (one process) is the default; torchrun's group is ``runtime.torchrun.GROUP``.
- :class:`Pieces`: named pieces of work an analysis may be spared. ``COMPUTE_NOW`` computes every
  piece; the journal (``runtime.journal.Journal``) saves each as it finishes and reads it back
  on a resume.

The design follows hessian-eigenthings' small backend objects, which keep ranks out of its
algorithms; the code is our own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from torch import Tensor

T = TypeVar("T")
R = TypeVar("R")


class Group(Protocol):
    """Processes that share a sample: rank r of world_size, rank 0 the main one."""

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes, in place; returns it."""

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Every process's picklable ``value``, in rank order."""

    def broadcast_from_main(self, value: T) -> T:
        """Rank 0's picklable ``value`` on every process."""

    def smallest(self, value: float) -> float:
        """The smallest of every process's ``value``."""

    def spread(self, tasks: Sequence[T], work: Callable[[T], R]) -> list[R]:
        """``[work(t) for t in tasks]``, the tasks dealt out to the processes; all results everywhere."""

    def my_share(self, n_tasks: int) -> int:
        """How many of ``n_tasks`` spread tasks this process does."""


class Solo:
    """One process: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return tensor

    def all_gather_objects(self, value: Any) -> list[Any]:
        return [value]

    def broadcast_from_main(self, value: T) -> T:
        return value

    def smallest(self, value: float) -> float:
        return float(value)

    def spread(self, tasks: Sequence[T], work: Callable[[T], R]) -> list[R]:
        return [work(t) for t in tasks]

    def my_share(self, n_tasks: int) -> int:
        return n_tasks

    def __repr__(self) -> str:
        return "SOLO"


SOLO = Solo()


class Pieces(Protocol):
    """Named pieces of an analysis: each depends only on its own key and seed."""

    def own(self, key: str, compute: Callable[[], R]) -> R:
        """A piece this process computes alone (spread work)."""

    def shared(self, key: str, compute: Callable[[], R]) -> R:
        """A piece every process of the group computes together."""


class ComputeNow:
    """Every piece computed, nothing saved: the default of library calls."""

    def own(self, key: str, compute: Callable[[], R]) -> R:
        return compute()

    def shared(self, key: str, compute: Callable[[], R]) -> R:
        return compute()

    def __repr__(self) -> str:
        return "COMPUTE_NOW"


COMPUTE_NOW = ComputeNow()
