"""A curvature problem: the model as a pure function of its parameters, a loss and examples.

The loss of a problem is the mean training loss over all its examples, exactly as a loop with
``reduction='mean'`` minimises it: batches b of unequal size are weighted by |b| / N.
Under torchrun a problem may hold one rank's shard of the sample (``shard``): N is then the
size of the whole sample, and sums over batches are completed by an all-reduce over the problem's
``group`` (protocols.Group; torchrun's is runtime.torchrun.GROUP). How the examples are chunked
and shared out is batches.py; where they live (device or pinned host memory) is placement.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .batches import Batch, joined, shard_batches, split_batches
from .dtypes import SUPPORTED_DTYPES
from .errors import NonFiniteError, first_line
from .losses import IGNORE_INDEX, Loss, get_loss
from .parameters import ParameterSpace, select_names
from .placement import placed, prepare_batches
from .protocols import SOLO, Group
from .runtime.torchrun import GROUP, Shard
from .streams import HeldExamples, StreamedBatches, batch_lengths, batch_targets


@dataclass(frozen=True)
class Problem:
    """Model, parameters (``params`` are the differentiated ones), buffers, loss and batches
    (this rank's share of them when ``shard`` is set, the sums completed over ``group``): held
    tensors, or a streams.StreamedBatches read from its dataset at every pass."""

    module: nn.Module
    loss: Loss
    params: dict[str, Tensor]
    frozen: dict[str, Tensor]
    buffers: dict[str, Tensor]
    batches: Sequence[Batch]
    shard: Shard | None = None
    group: Group = SOLO

    @property
    def space(self) -> ParameterSpace:
        return ParameterSpace.of(self.params)

    @property
    def n_params(self) -> int:
        return self.space.size

    @property
    def n_samples(self) -> int:
        """N: the examples of the whole sample (all ranks' shards together)."""
        return self.shard.n_total if self.shard is not None else self.n_local_samples

    @property
    def n_local_samples(self) -> int:
        return sum(batch_lengths(self.batches))

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """f(x; w) with the given values of the selected parameters, always in eval mode."""
        with evaluation_mode(self.module):
            return functional_call(self.module, ({**self.frozen, **params}, self.buffers), (x,))

    def batch_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return self.loss(self.forward(params, x), y)

    def examples(self) -> tuple[Tensor, Tensor]:
        """All inputs and all targets, the batches concatenated in order (a sharded problem
        gathers the shards from every rank, a collective call, and returns them in host memory;
        a streamed one reads the whole sample into memory: prefer indexed_examples)."""
        if isinstance(self.batches, StreamedBatches):
            return joined(list(self.batches.gathered()))
        inputs, targets = joined(self.batches)
        if self.shard is None:
            return inputs, targets
        self._check_group()
        parts = self.group.all_gather_objects((inputs.cpu(), targets.cpu()))
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])  # host memory: may not fit a GPU

    def indexed_examples(self) -> HeldExamples | StreamedBatches:
        """The whole sample by position (``examples_at(positions)``, ``n_examples``), for random
        batches: a held sample's tensors (gathered from every rank, a collective call, when
        sharded), or a streamed sample that reads the examples asked for, and only those."""
        if isinstance(self.batches, StreamedBatches):
            return self.batches
        return HeldExamples(*self.examples())

    def reduce(self, partial: Tensor) -> Tensor:
        """A sum over this rank's batches completed to the sum over the whole sample (in place)."""
        if self.shard is None:
            return partial
        self._check_group()
        return self.group.all_reduce_sum(partial)

    def _check_group(self) -> None:
        if self.group.world_size != self.shard.world_size or self.group.rank != self.shard.rank:
            raise RuntimeError(f"this problem is shard {self.shard.rank} of {self.shard.world_size}: it needs the "
                               f"process of that rank in a group of that size (torchrun) to complete its sums, but "
                               f"this is rank {self.group.rank} of {self.group.world_size}")

    def weighted_batches(self) -> Iterator[tuple[Tensor, Tensor, float]]:
        """(x, y, |b|/N) for every batch, on the parameters' device: sum_b weight * batch mean =
        mean over the sample. A sample kept in host memory is copied over batch by batch. A loss
        that averages over the labels that count (cross-entropy with labels -100, causal_lm) is
        weighted by those instead: M_b / M, so that the sum is still the mean over the sample (a
        batch with no label that counts weighs 0 and is left out: its own mean is 0 / 0)."""
        for _, x, y, weight in self.numbered_batches():
            yield x, y, weight

    def numbered_batches(self) -> Iterator[tuple[int, Tensor, Tensor, float]]:
        """(i, x, y, weight) for the batches of weighted_batches, i their position in ``batches``
        (zero-weight batches left out, but counted), for messages that name a batch."""
        device = self.device
        for i, ((x, y), weight) in enumerate(zip(self.batches, self.batch_weights)):
            if weight > 0:
                yield i, x.to(device, non_blocking=True), y.to(device, non_blocking=True), weight

    @functools.cached_property
    def batch_weights(self) -> tuple[float, ...]:
        """|b| / N per batch, or M_b / M where the loss counts its terms (Loss.term_count; under
        torchrun M is all-reduced, once, at the first product or loss)."""
        lengths = batch_lengths(self.batches)
        counts = [self.loss.term_count(y) for y in batch_targets(self.batches)]
        if any(c is None for c in counts):
            n = self.n_samples
            return tuple(size / n for size in lengths)
        total = float(sum(counts))
        if self.shard is not None:
            self._check_group()
            total = float(self.group.all_reduce_sum(torch.tensor([total], dtype=torch.float64, device=self.device)))
        if not total > 0:
            raise ValueError("no label counts (every one is ignore_index -100): there is no loss")
        return tuple(c / total for c in counts)

    @torch.no_grad()
    def loss_value(self) -> float:
        return float(self.sample_mean("the loss", lambda x, y: self.batch_loss(self.params, x, y)))

    def gradient(self) -> Tensor:
        """Flat gradient of the mean loss."""
        return self.sample_mean("the gradient", lambda x, y: self.space.flatten(
            torch.func.grad(lambda p: self.batch_loss(p, x, y))(self.params)))

    def sample_mean(self, what: str, per_batch: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """sum_b (|b|/N) per_batch(b) over the whole sample (all-reduced under torchrun), refused
        with the first offending batch when it is not finite (every rank learns of it, and stops)."""
        total, bad = None, None
        for i, x, y, w in self.numbered_batches():
            value = per_batch(x, y)
            if bad is None and not bool(torch.isfinite(value).all()):
                bad = (i, len(x))
            total = w * value if total is None else total.add_(value, alpha=w)
        if total is None:  # every local batch weighs 0 (no label counts in this shard): its share is zero
            x, y = (t.to(self.device) for t in self.batches[0])
            total = torch.zeros_like(per_batch(x, y))
        total = self.reduce(total)
        if not bool(torch.isfinite(total).all()):
            raise NonFiniteError(what, self.where(bad))
        return total

    def where(self, batch: tuple[int, int] | None) -> str:
        """'on batch i (n examples)' of this process's batches (naming the rank under torchrun), for
        error messages; ``None``: the fault lies in another rank's shard."""
        if batch is None:
            return "on another process's shard of the sample"
        rank = f" of rank {self.shard.rank}'s shard" if self.shard is not None else ""
        return f"on batch {batch[0]} ({batch[1]} examples){rank}"

    def with_batches(self, batches: Sequence[Batch]) -> Problem:
        """The same model and loss on other examples (e.g. one random batch of a scan), held
        whole by this process (never sharded)."""
        problem = replace(self, batches=prepare_batches(batches, self.device, self.dtype), shard=None, group=SOLO)
        _validate_data(problem)
        return problem

    def gathered(self) -> Problem:
        """The whole sample in this process (a collective call when sharded): for work that each
        rank does on its own, such as training runs."""
        if self.shard is None:
            return self
        if isinstance(self.batches, StreamedBatches):
            return replace(self, batches=self.batches.gathered(), shard=None, group=SOLO)
        return self.with_batches(split_batches(*self.examples(), self.chunk_size))

    def sharded(self, rank: int | None = None, world_size: int | None = None) -> Problem:
        """This rank's contiguous share of the sample (default: the current torchrun group's rank)."""
        rank = GROUP.rank if rank is None else rank
        world_size = GROUP.world_size if world_size is None else world_size
        if self.shard is not None:
            raise ValueError("the problem is sharded already")
        if isinstance(self.batches, StreamedBatches):
            batches, shard = self.batches.sharded(rank, world_size)
        else:
            batches, shard = shard_batches(self.batches, rank, world_size)
            batches = prepare_batches(batches, self.device, self.dtype)
        return replace(self, batches=batches, shard=shard, group=GROUP if shard is not None else SOLO)

    def cast(self, dtype: torch.dtype) -> Problem:
        """The same problem in another floating dtype (parameters, buffers and floating data), e.g.
        float32 training runs from a problem measured in float64."""
        if dtype == self.dtype:
            return self
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"curvature problems are float32 or float64, got {dtype}")

        def to(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}

        if isinstance(self.batches, StreamedBatches):
            batches = self.batches.on(self.device, dtype)
        else:
            batches = tuple((x.to(dtype) if x.is_floating_point() else x,
                             y.to(dtype) if y.is_floating_point() else y) for x, y in self.batches)
        return replace(self, params=to(self.params), frozen=to(self.frozen), buffers=to(self.buffers), batches=batches)

    @property
    def chunk_size(self) -> int:
        """The largest batch: the chunk size the sample was split with."""
        return max(batch_lengths(self.batches))

    def restricted(self, patterns: str | Sequence[str]) -> Problem:
        """The same problem differentiated only in the parameters matching ``patterns``."""
        every = {**self.params, **self.frozen}
        order = [n for n, _ in self.module.named_parameters()] or list(every)
        chosen = select_names(order, patterns)
        return replace(
            self,
            params={n: every[n] for n in chosen},
            frozen={n: every[n] for n in order if n not in chosen},
        )


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode (dropout off, BN running stats), then restore the modes."""
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def make_problem(
    model: nn.Module,
    data: tuple[Tensor, Tensor] | Sequence[Batch] | StreamedBatches,
    loss: str | Loss | Callable[[Tensor, Tensor], Tensor],
    *,
    params: str | Sequence[str] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
    group: Group | None = None,
) -> Problem:
    """Build a :class:`Problem`, evaluated in eval mode (dropout off, BN running statistics).

    ``data`` is either ``(inputs, targets)`` (split into chunks of ``chunk_size``, which only
    bounds memory: the operator is the same; ``batch_size`` is an older name for it) or an
    explicit sequence of batches, or a streams.StreamedBatches (read from its dataset at every
    pass, in its own chunks unless ``chunk_size`` is given). ``shard=(rank, world_size)`` keeps
    only that rank's share of the examples (torchrun data parallelism; see
    :mod:`hessian_probe.runtime.torchrun`), its sums
    completed over ``group`` (default: torchrun's process group, runtime.torchrun.GROUP).
    ``params`` selects parameters by name pattern for blockwise curvature. Parameters, buffers
    and floating-point data are copied to ``device`` and ``dtype`` (default: the model's, with
    half precision raised to float32, which Krylov methods need); the module's own tensors and
    its train/eval mode are left untouched.
    """
    if group is not None and shard is None:
        raise ValueError("group= completes the sums of a shard: pass shard=(rank, world_size) with it")
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters")
    first = next(iter(named.values()))
    dtype = dtype or (first.dtype if first.dtype in SUPPORTED_DTYPES else torch.float32)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"curvature products need float32 or float64, got {dtype}")
    device = torch.device(device) if device is not None else first.device
    every = {n: placed(p.detach(), device, dtype) for n, p in named.items()}
    bad = [n for n, p in every.items() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"non-finite values in parameters: {', '.join(bad[:5])}")
    chosen = select_names(every, params)
    buffers = {n: placed(b.detach(), device, dtype) for n, b in model.named_buffers()}

    sharding = None
    if isinstance(data, StreamedBatches):
        batches = data.on(device, dtype).rechunked(chunk_size or batch_size)
        if shard is not None:
            batches, sharding = batches.sharded(*shard)
    else:
        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
            batches = split_batches(*data, chunk_size or batch_size)
        else:
            batches = list(data)
        if shard is not None:
            batches, sharding = shard_batches(batches, *shard)
        batches = prepare_batches(batches, device, dtype)

    problem = Problem(
        module=model,
        loss=get_loss(loss),
        params={n: every[n] for n in chosen},
        frozen={n: every[n] for n in every if n not in chosen},
        buffers=buffers,
        batches=batches,
        shard=sharding,
        group=(group or GROUP) if sharding is not None else SOLO,
    )
    _validate_data(problem)
    return problem


@torch.no_grad()
def _validate_data(problem: Problem) -> None:
    """One forward pass: the model returns a tensor, targets fit it, labels are in range, and the
    loss is a finite scalar; some label counts (a batch with none, all ignore_index, weighs 0)."""
    counted: int | None = 0
    for i, (x, y) in enumerate(problem.batches):  # not weighted_batches: no collective here (batch_weights)
        x, y = x.to(problem.device), y.to(problem.device)
        try:
            outputs = problem.forward(problem.params, x)
        except RuntimeError as exc:
            hint = (" (the inputs are integers: convert images to float, e.g. x.float() / 255)"
                    if not x.is_floating_point() else "")
            raise ValueError(f"the model cannot run on inputs of shape {tuple(x.shape)} (batch {i}): "
                             f"{first_line(exc)}; check that `data` matches the model{hint}") from exc
        if not isinstance(outputs, Tensor):
            raise ValueError(f"the model returns a {type(outputs).__name__}, not a tensor: "
                             "wrap it so that forward returns the outputs the loss takes")
        problem.loss.validate(outputs, y)
        value = problem.loss(outputs, y)
        if not isinstance(value, Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"the loss must return the mean over the batch, a scalar; it returned {shape}")
        if not value.is_floating_point():
            raise ValueError(f"the loss must return a real floating-point scalar; it returned a {value.dtype} tensor")
        terms = problem.loss.term_count(y)
        counted = None if terms is None or counted is None else counted + terms
        if not torch.isfinite(value) and terms != 0:  # no label counts: left out, weight 0
            raise ValueError(f"the loss is not finite on batch {i}")
        if i == 0:
            _check_mean_reduction(problem, x[:8], y[:8])
    if counted == 0 and problem.shard is None:  # under torchrun another shard may hold them (batch_weights)
        raise ValueError(f"every label is {IGNORE_INDEX} (ignore_index): there is no loss to take the curvature of")


def _check_mean_reduction(problem: Problem, x: Tensor, y: Tensor) -> None:
    """The loss of a batch given twice equals its loss (a mean); a sum doubles it, and every
    number would then be N times too large (one forward pass of at most 16 examples)."""
    once = float(problem.loss(problem.forward(problem.params, x), y))
    twice = float(problem.loss(problem.forward(problem.params, torch.cat([x, x])), torch.cat([y, y])))
    margin = 1e-3 * abs(once)
    if once != 0 and abs(twice - 2 * once) < margin < abs(twice - once):
        raise ValueError("the loss sums over the batch (it doubles when every example is given twice): the curvature "
                         "would be N times too large; use reduction='mean'")
