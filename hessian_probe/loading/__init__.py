"""From names and files to a Problem: checkpoint + model + data + loss, validated, on a device.

``ProblemSpec`` is exactly what the command line and config files describe; ``load_problem``
turns it into a :class:`~hessian_probe.problem.Problem` or raises an ``InputError`` whose one
line names what is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, UsageError
from ..losses import get_loss
from ..parameters import select_names
from ..problem import Problem, make_problem
from ..runtime import torchrun as distributed
from ..seeds import derive
from ..streams import StreamedBatches
from .checkpoints import Checkpoint, fit_state_dict, load_checkpoint
from .data import open_data, sample_size, stream_of, subset
from .models import build_model, parse_model_args
from .sources import IndexedSample, checked_pair

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MIXED = "mixed"  # float32 products, float64 vectors and Krylov arithmetic (ProductSettings.vector_dtype)


@dataclass(frozen=True, kw_only=True)
class ProblemSpec:
    """Where the model, weights, examples and loss come from, and how to evaluate them.

    ``batch_size`` B analyses the curvature of one seeded random batch of B examples (the
    batch Hessian) instead of the full sample; ``chunk_size`` only bounds memory (the operator
    of the mean loss is the same for any chunking). ``stream_data``: whether a dataset's examples
    (a Dataset, DataLoader, image folder) are read chunk by chunk at every pass, memory bounded
    by a chunk ("always"), read once and held ("never"), or streamed only when holding them would
    take more than STREAM_MEMORY_FRACTION of the free memory ("auto").
    """

    checkpoint: str
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False
    safe_globals: tuple[str, ...] = ()  # "module.Name" objects torch's weights_only loader may build
    data: str = "digits"
    data_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of a data factory
    samples: int | None = None
    batch_size: int | None = None
    chunk_size: int | None = 1024
    stream_data: str = "auto"  # a dataset's examples read at every pass (always), held (never), or by size
    loss: str = "cross_entropy"
    params: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0


@dataclass(frozen=True)
class LoadedProblem:
    problem: Problem
    checkpoint: Checkpoint
    model: nn.Module
    spec: ProblemSpec | None = None  # what it was loaded from
    data_notes: tuple[str, ...] = ()  # how the data was read (a shuffling DataLoader, ...)


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu or cuda[:i]") from None
    if device.type == "cpu" and device.index not in (None, 0):
        raise UsageError(f"--device {name}: there is one CPU device, use --device cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}: use auto, cpu or cuda[:i]")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The problem's dtype: ``auto`` is float64 on the CPU (exact enough for every test) and
    float32 on GPUs; ``mixed`` is float32 (its products float32, its vectors float64: MIXED)."""
    if name == "auto":
        return torch.float64 if device.type == "cpu" else torch.float32
    if name == MIXED:
        return torch.float32
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: use auto, float32, float64 or {MIXED}")
    return DTYPES[name]


def load_model(spec: ProblemSpec) -> tuple[nn.Module, Checkpoint]:
    """The model with the checkpoint's weights in it."""
    checkpoint = load_checkpoint(spec.checkpoint, trust=spec.trust_checkpoint, safe_globals=spec.safe_globals)
    if spec.model is None:
        if checkpoint.module is None:
            raise UsageError("--model is required: the checkpoint holds weights only, not the model's code")
        return checkpoint.module, checkpoint
    model = build_model(spec.model, spec.model_args, offered=checkpoint.hyper_parameters,
                        checkpoint_path=str(spec.checkpoint))
    meta = [name for name, p in model.state_dict().items() if p.is_meta]
    if meta:
        raise InputError(f"the model {spec.model!r} is built on the meta device ({len(meta)} tensors without storage, "
                         f"e.g. {meta[0]!r}): build it on the CPU; hessian-probe moves it to --device")
    weights = checkpoint.module.state_dict() if checkpoint.module is not None else checkpoint.state_dict
    fit_state_dict(model, weights)
    return model, checkpoint


def load_problem(spec: ProblemSpec) -> LoadedProblem:
    """Load and validate everything; under torchrun the problem holds this rank's shard (each rank
    validates its own: call it through distributed.everywhere so that one bad shard stops all).
    User code (model, data and loss factories, their modules) that calls sys.exit is an InputError."""
    try:
        return _load_problem(spec)
    except SystemExit as exc:
        raise InputError(f"user code called sys.exit({exc.code!r}) while the model, data or loss were loaded "
                         "(--model, --data, --loss): a factory must return its object, not exit") from None


def _load_problem(spec: ProblemSpec) -> LoadedProblem:
    """Under torchrun in three steps that every rank takes alike (an error in one is raised on
    every rank before the next): open the model and data, agree whether to stream, build."""
    device, dtype, loss, model, checkpoint, sample, notes, wants_stream = distributed.everywhere(lambda: _opened(spec))
    stream = distributed.smallest(0.0 if wants_stream else 1.0) == 0.0  # one rank short of memory: all stream
    if stream and not wants_stream:
        notes.append("the data is read from its dataset at every product (--stream-data auto): another process of "
                     "this run had too little free memory to hold it")
    shard = (distributed.rank(), distributed.world_size()) if distributed.active() else None

    def build() -> Problem:
        data = _held_or_streamed(sample, spec, stream, notes)
        try:
            return make_problem(model, data, loss, params=spec.params,
                                chunk_size=spec.chunk_size, dtype=dtype, device=device, shard=shard)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(str(exc)) from None

    return LoadedProblem(distributed.everywhere(build), checkpoint, model, spec, tuple(notes))


def _opened(spec: ProblemSpec) -> tuple:
    """The device, dtype, loss, the model with its weights, the sample (not yet read), notes, and
    whether this process would stream it (--stream-data)."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    loss = _usage(get_loss, spec.loss)
    model, checkpoint = load_model(spec)
    if spec.params is not None:
        _usage(select_names, [n for n, _ in model.named_parameters()], spec.params)
    notes: list[str] = []
    sample = subset(open_data(spec.data, spec.data_args, notes), spec.samples, spec.seed)
    if spec.batch_size is not None:
        n = sample_size(sample)
        if spec.batch_size > n:
            raise UsageError(f"--batch-size {spec.batch_size} is larger than the sample ({n} examples); use at "
                             f"most {n}, or omit it for the full sample")
        sample = subset(sample, spec.batch_size, derive(spec.seed, "batch-subset"))
    return device, dtype, loss, model, checkpoint, sample, notes, _wants_stream(sample, spec, dtype, notes)


STREAM_MEMORY_FRACTION = 0.25  # auto streams a dataset that would take more of the free host memory
STREAM_CHOICES = ("auto", "always", "never")


def _wants_stream(sample: tuple[Tensor, Tensor] | IndexedSample, spec: ProblemSpec, dtype: torch.dtype,
                  notes: list[str]) -> bool:
    """Whether a dataset is to be streamed (--stream-data): always, never, or auto, when holding it
    would take over STREAM_MEMORY_FRACTION of the free memory (every process on this node holds it)."""
    if spec.stream_data not in STREAM_CHOICES:
        raise UsageError(f"--stream-data {spec.stream_data!r}: use {', '.join(STREAM_CHOICES)}")
    if not isinstance(sample, IndexedSample) or spec.stream_data != "auto":
        return spec.stream_data == "always"
    processes = distributed.local_world_size()
    need, free = sample.stacked_bytes(dtype) * processes, free_host_memory()
    if need <= STREAM_MEMORY_FRACTION * free:
        return False
    each = f", {processes} processes on this node" if processes > 1 else ""
    notes.append(f"the data ({need / 2**30:.1f} GiB held{each}) is read from its dataset at every product, chunk by "
                 f"chunk (--stream-data auto: over {STREAM_MEMORY_FRACTION:.0%} of the {free / 2**30:.1f} GiB "
                 "free); --stream-data never holds it")
    return True


def _held_or_streamed(sample: tuple[Tensor, Tensor] | IndexedSample, spec: ProblemSpec, stream: bool,
                      notes: list[str]) -> tuple[Tensor, Tensor] | StreamedBatches:
    """Tensors stay tensors; a dataset is read once and held, or streamed."""
    if not isinstance(sample, IndexedSample):
        return sample
    if stream:
        return stream_of(sample, spec.chunk_size, repr(spec.data), "; use deterministic transforms, or "
                         "--stream-data never to draw them once and hold them in memory")
    if sample.changes_between_reads():
        notes.append(f"the examples of {spec.data!r} change from one read to the next (random transforms?): they "
                     "were drawn once, when the data was read, and held")
    return checked_pair(sample.stacked(), spec.data)


def free_host_memory() -> int:
    """Bytes of host memory available now (Linux MemAvailable; 8 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def _usage(check, *args):
    """Run a check of an option's value; its ValueError is a usage error (exit code 2)."""
    try:
        return check(*args)
    except InputError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


__all__ = ["DTYPES", "MIXED", "STREAM_CHOICES", "LoadedProblem", "ProblemSpec", "load_model", "load_problem",
           "parse_model_args", "resolve_device", "resolve_dtype"]
