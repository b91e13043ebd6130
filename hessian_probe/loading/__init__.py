"""From names and files to a Problem: checkpoint + model + data + loss, validated, on a device.

``ProblemSpec`` is exactly what the command line and config files describe; ``load_problem``
turns it into a :class:`~hessian_probe.problem.Problem` or raises an ``InputError`` whose one
line names what is wrong and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError, UsageError
from ..losses import get_loss
from ..parameters import select_names
from ..problem import Problem, make_problem
from ..runtime import torchrun as distributed
from ..seeds import derive
from .checkpoints import Checkpoint, fit_state_dict, load_checkpoint
from .data import load_data
from .datasets import subset_indices
from .models import build_model, parse_model_args

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True, kw_only=True)
class ProblemSpec:
    """Where the model, weights, examples and loss come from, and how to evaluate them.

    ``batch_size`` B analyses the curvature of one seeded random batch of B examples (the
    batch Hessian) instead of the full sample; ``chunk_size`` only bounds memory (the operator
    of the mean loss is the same for any chunking).
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
    """``auto`` is float64 on the CPU (cheap there, and exact enough for every test) and float32 on GPUs."""
    if name == "auto":
        return torch.float64 if device.type == "cpu" else torch.float32
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: use auto, float32 or float64")
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
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    loss = _usage(get_loss, spec.loss)
    model, checkpoint = load_model(spec)
    if spec.params is not None:
        _usage(select_names, [n for n, _ in model.named_parameters()], spec.params)
    notes: list[str] = []
    inputs, targets = load_data(spec.data, spec.samples, spec.seed, spec.data_args, notes)
    if spec.batch_size is not None:
        if spec.batch_size > len(inputs):
            raise UsageError(f"--batch-size {spec.batch_size} is larger than the sample ({len(inputs)} examples); "
                              f"use at most {len(inputs)}, or omit it for the full sample")
        idx = subset_indices(len(inputs), spec.batch_size, derive(spec.seed, "batch-subset"))
        inputs, targets = inputs[idx], targets[idx]
    shard = (distributed.rank(), distributed.world_size()) if distributed.active() else None

    def build() -> Problem:
        try:
            return make_problem(model, (inputs, targets), loss, params=spec.params,
                                chunk_size=spec.chunk_size, dtype=dtype, device=device, shard=shard)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(str(exc)) from None

    return LoadedProblem(build(), checkpoint, model, spec, tuple(notes))


def _usage(check, *args):
    """Run a check of an option's value; its ValueError is a usage error (exit code 2)."""
    try:
        return check(*args)
    except InputError:
        raise
    except ValueError as exc:
        raise UsageError(str(exc)) from None


__all__ = ["DTYPES", "LoadedProblem", "ProblemSpec", "load_model", "load_problem", "parse_model_args",
           "resolve_device", "resolve_dtype"]
