"""Data parallelism under torchrun: every rank holds a shard of the sample; products are summed.

The mean-loss operator over N examples split into shards S_0, ..., S_{W-1} is

    A = sum_r sum_{b in S_r} (|b| / N) A_b,

so each rank computes the size-weighted product of its own batches (weights over the *global* N)
and an all-reduce (sum) hands every rank the same A V. Krylov kernels then run identically on
every rank, from the same seeds on the same products, without knowing about ranks. Work made of
independent pieces (the batches of a batch-size scan, training runs) is spread instead: rank r
takes pieces r, r + W, r + 2W, ... and every rank gathers all results. Rank 0 writes outputs and
shows progress. The backend follows the device: NCCL for CUDA, Gloo for the CPU.

Outside torchrun (or with one process) every function here is a no-op and costs nothing.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import UsageError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Shard:
    """This rank's share of a sample of ``n_total`` examples spread over ``world_size`` ranks."""

    rank: int
    world_size: int
    n_total: int


# How long a rank waits at a collective for the others. Spread work (a batch-size scan's batches)
# can leave one rank waiting for the slowest for a long time, far beyond torch's default of
# 10 minutes for NCCL; a rank that fails makes torchrun stop the others, so this bounds only a hang
# (a rank alive but stuck). HESSIAN_PROBE_COLLECTIVE_TIMEOUT (seconds) sets it.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
TIMEOUT_ENV = "HESSIAN_PROBE_COLLECTIVE_TIMEOUT"


def collective_timeout() -> timedelta:
    """COLLECTIVE_TIMEOUT, or the seconds HESSIAN_PROBE_COLLECTIVE_TIMEOUT gives."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return COLLECTIVE_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{TIMEOUT_ENV}={text!r}: give the collective timeout in seconds, a positive number")
    return timedelta(seconds=seconds)


def launched() -> bool:
    """Started by torchrun (or a like launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """A process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_world_size() -> int:
    """The processes of the group on this node (torchrun's LOCAL_WORLD_SIZE; 1 without a group)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if active() else 1


def is_main() -> bool:
    """Rank 0 (or no process group): the process that writes outputs and shows progress."""
    return rank() == 0


def initialise(device: str = "auto") -> str:
    """Join the process group torchrun describes (no-op outside torchrun); return this rank's device.

    ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is available (each process its own
    GPU), else ``cpu``. The backend is NCCL for CUDA devices and Gloo for the CPU.
    """
    if not launched():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if device in ("auto", "cuda"):
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    elif device.startswith("cuda:") and local_world > 1:
        raise UsageError(f"--device {device} under torchrun: use --device cuda (or auto), and each of the "
                         f"{local_world} processes on this node takes cuda:LOCAL_RANK")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started {local_world} processes on this node but it has "
                             f"{torch.cuda.device_count()} CUDA device(s): use --nproc-per-node "
                             f"{torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(torch.device(device))
    timeout = collective_timeout()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=timeout)
        atexit.register(shutdown)
    if GROUP.objects is None and dist.get_backend() != "gloo":  # objects travel through host memory, not the GPU
        GROUP.objects = dist.new_group(backend="gloo", timeout=timeout)
    return device


def describe() -> dict[str, Any]:
    """For provenance: how many processes shared the work, and over which backend."""
    if not active():
        return {"world_size": 1, "backend": None}
    return {"world_size": world_size(), "backend": str(dist.get_backend())}


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the ranks, in place (every rank gets the same sum); returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank."""
    if not active():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value, group=GROUP.objects)
    return gathered


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` (picklable) on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=GROUP.objects)
    return box[0]


def smallest(value: float) -> float:
    """The smallest of every rank's ``value``."""
    return min(all_gather_objects(float(value)))


class RankFailure(RuntimeError):
    """An error raised on another rank, re-raised on this one so that every rank stops alike."""


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (to travel to the other ranks), else a RankFailure naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RankFailure(f"{type(exc).__name__}: {exc}")


def _attempt(work: Callable[[], R]) -> tuple[bool, Any]:
    """(True, work()) or (False, the error, fit to travel to the other ranks)."""
    try:
        return True, work()
    except Exception as exc:
        return False, _portable(exc)


def _raise_first_failure(outcomes: Sequence[tuple[bool, Any]]) -> None:
    """Raise the first error among gathered outcomes, marked as raised on every rank alike (so
    that only rank 0 needs to print it)."""
    for ok, value in outcomes:
        if not ok:
            value.on_every_rank = True
            raise value


def everywhere(work: Callable[[], R]) -> R:
    """``work()`` on every rank; if it fails on any rank, every rank raises that rank's error
    (the lowest failing rank's), instead of the others waiting forever at the next collective."""
    if not active():
        return work()
    ok, value = _attempt(work)
    _raise_first_failure(all_gather_objects((ok, None if ok else value)))
    return value


def on_main(work: Callable[[], R]) -> R:
    """``work()`` run on rank 0 only (e.g. reading a file), its result (or error) on every rank."""
    if not active():
        return work()
    outcome = broadcast_from_main(_attempt(work) if is_main() else None)
    _raise_first_failure([outcome])
    return outcome[1]


def spread(tasks: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """``[work(t) for t in tasks]`` with rank r doing tasks r, r + W, ...; every rank gets all
    results, in task order. An error on any rank is raised on every rank."""
    if not active():
        return [work(t) for t in tasks]
    mine: dict[int, tuple[bool, Any]] = {}
    for i in range(rank(), len(tasks), world_size()):
        mine[i] = _attempt(lambda: work(tasks[i]))
        if not mine[i][0]:
            break  # the run fails anyway; the other ranks learn why at the gather
    merged: dict[int, tuple[bool, Any]] = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    _raise_first_failure([merged[i] for i in sorted(merged)])
    return [merged[i][1] for i in range(len(tasks))]


def my_share(n_tasks: int) -> int:
    """How many of ``n_tasks`` spread tasks this rank does."""
    return len(range(rank(), n_tasks, world_size()))


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of n examples; shares differ by at most one."""
    if n < world_size:
        raise ValueError(f"the sample has {n} examples, too few for {world_size} processes: "
                         f"run with at most {n} processes")
    return n * rank // world_size, n * (rank + 1) // world_size


PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted",
             "Timed out waiting", "timed out", "Socket Timeout", "ProcessGroupNCCL")


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank died or hung (Gloo or NCCL
    report it as a RuntimeError naming the transport; the collective timeout bounds the wait)."""
    text = str(exc)
    return isinstance(exc, (RuntimeError, OSError)) and any(marker in text for marker in PEER_LOST)


def brief(exc: BaseException) -> str:
    """The first clause of a transport error, without its source path and advice."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for marker in PEER_LOST:
        if marker in text:
            return marker.lower()
    return text[:80]


class TorchrunGroup:
    """The processes torchrun started, as a protocols.Group (each method is the module function of
    that name: one process, or a group not yet joined, behaves like protocols.SOLO)."""

    rank = property(lambda self: rank())
    world_size = property(lambda self: world_size())

    def __init__(self) -> None:
        self.objects: Any = None  # a Gloo group for pickled objects when the main group is NCCL (initialise)

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        return all_reduce_sum(tensor)

    def all_gather_objects(self, value: Any) -> list[Any]:
        return all_gather_objects(value)

    def broadcast_from_main(self, value: T) -> T:
        return broadcast_from_main(value)

    def smallest(self, value: float) -> float:
        return smallest(value)

    def spread(self, tasks: Sequence[T], work: Callable[[T], R]) -> list[R]:
        return spread(tasks, work)

    def my_share(self, n_tasks: int) -> int:
        return my_share(n_tasks)

    def __repr__(self) -> str:
        return f"TorchrunGroup(rank={self.rank}, world_size={self.world_size})"


GROUP = TorchrunGroup()
