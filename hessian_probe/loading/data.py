"""Turn a ``--data`` spec into examples: (inputs, targets) tensors, or a dataset's indices to read
(stacked once, or streamed at every pass: loading/sources.py), optionally a seeded subset.

Specs: ``digits`` (bundled, flat 64 features) and ``digits:image`` (1 x 8 x 8); ``tensors:PATH``
(or just ``PATH``) for a ``.pt``/``.pth`` or ``.npz`` file holding inputs and targets under
``x``/``y`` or ``inputs``/``targets``, or tokens under ``input_ids``/``labels`` (and
``attention_mask``); ``imagefolder:ROOT`` (ROOT/CLASS/image.png, resized and normalised by
--data-arg size/mean/std); ``torchvision:NAME:ROOT`` for a torchvision dataset already on disk
(never downloaded); ``package.module:factory`` returning a Dataset, a DataLoader or an (inputs,
targets) pair.
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from ..errors import InputError, UsageError, first_line
from ..imports import import_object, is_import_spec
from ..streams import StreamedBatches
from .checkpoints import refused_global
from .datasets import load_digits, subset_indices
from .images import IMAGE_OPTIONS, ImageFolder
from .sources import DatasetSource, IndexedSample, checked_pair, pair_of, token_inputs

KEY_PAIRS = (("x", "y"), ("inputs", "targets"))
TENSOR_SUFFIXES = (".pt", ".pth", ".npz")


def load_data(spec: str, samples: int | None = None, seed: int = 0, args: dict[str, Any] | None = None,
              notes: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """The examples the spec names as stacked tensors (inputs, targets); with ``samples``, a seeded
    random subset of that many (drawn before a Dataset's items are read). ``args``: keyword
    arguments of a ``package.module:factory`` (--data-arg); ``notes`` gets what the user should
    know about how a DataLoader was read."""
    sample = subset(open_data(spec, args, notes), samples, seed)
    return checked_pair(sample.stacked() if isinstance(sample, IndexedSample) else sample, spec)


def open_data(spec: str, args: dict[str, Any] | None = None, notes: list[str] | None = None
              ) -> tuple[Tensor, Tensor] | IndexedSample:
    """The examples the spec names: tensors when they come whole (digits, a tensor file, an
    (inputs, targets) factory), else an IndexedSample of a dataset, read when it is stacked or
    streamed. ``notes`` gets what the user should know about how a DataLoader is read."""
    args = dict(args or {})
    notes = notes if notes is not None else []
    if args and not (is_import_spec(spec) or spec.startswith("imagefolder:")):
        raise UsageError(f"--data-arg applies to a package.module:factory or imagefolder:ROOT, not to "
                         f"--data {spec!r}")
    if spec in ("digits", "digits:image"):
        return checked_pair(load_digits(image=spec.endswith(":image")), spec)
    if spec.startswith("tensors:") or spec.endswith(TENSOR_SUFFIXES):
        return checked_pair(_tensor_file(Path(spec.removeprefix("tensors:"))), spec)
    if spec.startswith("imagefolder:"):
        root = Path(spec.removeprefix("imagefolder:"))
        return _dataset_sample(ImageFolder(root, **_image_options(args, spec)), spec, mismatch=(
            f"the images under {root} differ in size: pass --data-arg size=N (or size=(H, W))"))
    if spec.startswith("torchvision:"):
        return _dataset_sample(_torchvision(spec), spec)
    if is_import_spec(spec):
        made = _call_factory(spec, args)
        if isinstance(made, torch.utils.data.DataLoader):
            return _loader_sample(made, spec, notes)
        if _is_pair(made):
            return checked_pair(made, spec)
        return _dataset_sample(made, spec)
    raise UsageError(
        f"unknown data spec {spec!r}: use digits, tensors:PATH, torchvision:NAME:ROOT or package.module:factory"
    )


def subset(sample: tuple[Tensor, Tensor] | IndexedSample, n: int | None, seed: int
           ) -> tuple[Tensor, Tensor] | IndexedSample:
    """A seeded random subset of ``n`` examples (all of them for None); a dataset's are not read."""
    if n is None:
        return sample
    idx = _subset(sample_size(sample), n, seed)
    return sample.subset(idx) if isinstance(sample, IndexedSample) else (sample[0][idx], sample[1][idx])


def sample_size(sample: tuple[Tensor, Tensor] | IndexedSample) -> int:
    return len(sample) if isinstance(sample, IndexedSample) else len(sample[0])


def _subset(n_total: int, n: int, seed: int) -> Tensor:
    if not 0 < n <= n_total:
        raise UsageError(f"--samples {n} is outside 1..{n_total}, the size of the dataset")
    return subset_indices(n_total, n, seed)


def _is_pair(obj: Any) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, (Tensor, np.ndarray)) for t in obj)


def _tensor_file(path: Path) -> tuple[Tensor, Tensor]:
    if not path.is_file():
        raise InputError(f"data file not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                content = {k: archive[k] for k in archive.files}
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = refused_global(exc)
        what = f"Python objects ({found})" if found else "objects torch cannot load safely"
        raise InputError(f"data file {path} holds {what}: save tensors (torch.from_numpy for arrays) "
                         "or use an .npz file") from None
    except Exception as exc:
        raise InputError(f"cannot read data file {path}: {first_line(exc)}") from None
    if _is_pair(content):
        return tuple(content)
    if isinstance(content, dict) and "input_ids" in content:
        return token_inputs(content, path)
    if isinstance(content, dict):
        for x_key, y_key in KEY_PAIRS:
            if x_key in content and y_key in content:
                return content[x_key], content[y_key]
        found = ", ".join(map(str, list(content)[:6]))
    else:
        found = type(content).__name__
    raise InputError(f"data file {path} needs inputs and targets under keys x/y or inputs/targets; found {found}")


def _image_options(args: dict[str, Any], spec: str) -> dict[str, Any]:
    unknown = sorted(set(args) - set(IMAGE_OPTIONS))
    if unknown:
        raise UsageError(f"--data {spec}: unknown --data-arg {', '.join(unknown)} (imagefolder takes "
                         f"{', '.join(IMAGE_OPTIONS)})")
    return args


def _torchvision(spec: str) -> Any:
    parts = spec.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise InputError(f"expected torchvision:NAME:ROOT, got {spec!r}")
    _, name, root = parts
    try:
        import torchvision.datasets
        from torchvision.transforms.functional import pil_to_tensor
    except ImportError:
        raise InputError("torchvision:NAME:ROOT needs torchvision installed") from None
    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise InputError(f"torchvision has no dataset named {name!r}")
    options = {"transform": lambda img: pil_to_tensor(img).float() / 255.0}
    if "download" in inspect.signature(cls).parameters:
        options["download"] = False  # never fetch anything: the data must already be on disk
    try:
        dataset = cls(root, **options)
    except (RuntimeError, FileNotFoundError, OSError) as exc:
        raise InputError(f"torchvision dataset {name} not found under {root} (hessian-probe never downloads): "
                         f"{first_line(exc)}") from None
    return dataset


def _call_factory(spec: str, args: dict[str, Any]) -> Any:
    factory = import_object(spec, "data")
    if not callable(factory) or isinstance(factory, torch.utils.data.DataLoader):
        if args:
            raise UsageError(f"--data {spec!r} is not a factory: it takes no --data-arg")
        return factory
    try:
        inspect.signature(factory).bind(**args)
    except TypeError as exc:
        raise UsageError(f"data factory {spec!r} does not accept the arguments {args}: {first_line(exc)}") from None
    except ValueError:
        pass
    try:
        return factory(**args)
    except Exception as exc:
        raise InputError(f"data factory {spec!r} failed: {first_line(exc)}") from exc


def _loader_sample(loader: torch.utils.data.DataLoader, spec: str, notes: list[str]
                   ) -> tuple[Tensor, Tensor] | IndexedSample:
    """The user's DataLoader as its dataset, its collate_fn and workers, and the indices its sampler
    gives (drawn once; a shuffling sampler's in index order, which changes nothing). Nothing may be
    dropped (drop_last is refused). A loader over an iterable dataset has no indices: its batches
    are read once, in its order, and held."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        if loader.drop_last:
            raise InputError(f"the DataLoader of {spec!r} may drop its last incomplete batch (drop_last=True over an "
                             "iterable dataset): the curvature would leave those examples out; use drop_last=False")
        notes.append(f"the DataLoader of {spec!r} reads an iterable dataset: its batches were read once and are "
                     "held in memory")
        return _read_loader(loader, spec)
    batches = loader.batch_sampler
    sampler = getattr(batches, "sampler", loader.sampler)  # a batch sampler's own sampler draws the indices
    own_batches = batches is not None and not isinstance(batches, torch.utils.data.BatchSampler)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        notes.append(f"the DataLoader of {spec!r} has a DistributedSampler (one rank's share, padded): the whole "
                     "dataset is read instead, in index order; under torchrun hessian-probe shares it out itself")
        drawn = list(range(len(loader.dataset)))
    else:
        if getattr(batches, "drop_last", False) and not _divides(sampler, getattr(batches, "batch_size", None)):
            raise InputError(f"the DataLoader of {spec!r} drops its last incomplete batch (drop_last=True): the "
                             "curvature would leave those examples out; return a loader with drop_last=False")
        drawn = [i for batch in batches for i in batch] if batches is not None else list(sampler)
    if isinstance(sampler, torch.utils.data.RandomSampler) and not sampler.replacement \
            and len(drawn) == len(loader.dataset):
        notes.append(f"the DataLoader of {spec!r} shuffles: its dataset is read in index order instead (every "
                     "example is used once, so the order changes nothing)")
        drawn.sort()
    elif own_batches or not isinstance(sampler, (torch.utils.data.SequentialSampler,
                                                 torch.utils.data.DistributedSampler)):
        drawer = batches if own_batches else sampler
        notes.append(f"the DataLoader of {spec!r} draws its examples with a {type(drawer).__name__}: one draw was "
                     f"taken ({len(drawn)} indices, {len(set(drawn))} distinct) and the curvature is that of those "
                     "examples, each counted as often as drawn")
    collate = loader.collate_fn if batches is not None else default_collate  # batch_size=None: no collation
    return _dataset_sample(loader.dataset, spec, order=drawn, collate=collate, num_workers=loader.num_workers,
                           loader_options=_worker_options(loader))


def _divides(sampler: Any, batch_size: int | None) -> bool:
    """Batches of ``batch_size`` take every index the sampler draws (False where either is unknown)."""
    try:
        return bool(batch_size) and len(sampler) % batch_size == 0
    except TypeError:
        return False


def _worker_options(loader: torch.utils.data.DataLoader) -> dict[str, Any]:
    """The loader's settings that its workers need, for reading it again (pin_memory only with CUDA)."""
    if loader.num_workers == 0:
        return {}
    options = {"worker_init_fn": loader.worker_init_fn, "prefetch_factor": loader.prefetch_factor,
               "multiprocessing_context": loader.multiprocessing_context, "timeout": loader.timeout}
    if loader.pin_memory and torch.cuda.is_available():
        options["pin_memory"] = True
    return options


def _read_loader(loader: Any, spec: str) -> tuple[Tensor, Tensor]:
    """Every batch of the loader, once, in its order, concatenated."""
    inputs, targets = [], []
    for i, batch in enumerate(loader):
        x, y = pair_of(batch, spec, f"batch {i}")
        inputs.append(torch.as_tensor(x))
        targets.append(torch.as_tensor(y))
    if not inputs:
        raise InputError(f"the DataLoader of {spec!r} gave no batches")
    try:
        return checked_pair((torch.cat(inputs), torch.cat(targets)), spec)
    except RuntimeError as exc:
        raise InputError(f"the batches of {spec!r} differ in shape beyond the batch dimension (pad them to one "
                         f"length): {first_line(exc)}") from None


def _dataset_sample(dataset: Any, spec: str, order: Sequence[int] | None = None, **source: Any) -> IndexedSample:
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise InputError(f"data {spec!r} gave a {type(dataset).__name__}: need a map-style Dataset or "
                         "(inputs, targets)")
    if len(dataset) == 0 or (order is not None and not order):
        raise InputError(f"the dataset {spec!r} is empty")
    return IndexedSample(DatasetSource(dataset, spec, **source), tuple(range(len(dataset)) if order is None else order))


DEFAULT_STREAM_CHUNK = 1024  # examples per chunk of a streamed sample when none is given (the CLI's --chunk-size)


def streamed(data: Any, chunk_size: int | None = DEFAULT_STREAM_CHUNK) -> StreamedBatches:
    """A map-style Dataset or a DataLoader as batches read at every pass, for
    ``make_problem(model, streamed(loader), loss)``: memory is bounded by ``chunk_size`` examples
    (None: DEFAULT_STREAM_CHUNK), not by the dataset. A loader keeps its collate_fn and workers;
    its sampler is drawn once (a shuffling one read in index order); drop_last, and examples that
    change from one read to the next (random transforms), are refused: the operator must be one
    fixed matrix."""
    what = type(data).__name__
    if isinstance(data, torch.utils.data.DataLoader):
        sample = _loader_sample(data, what, [])
    else:
        sample = _dataset_sample(data, what)
    if not isinstance(sample, IndexedSample):
        raise InputError("a DataLoader over an iterable dataset has no indices to stream: pass its batches "
                         "(list(loader)) or tensors")
    return stream_of(sample, chunk_size, f"the {what}")


def stream_of(sample: IndexedSample, chunk_size: int | None, what: str, fix: str = "") -> StreamedBatches:
    """The sample read at every pass, refused (``fix``: how else to run) when its examples change
    from one read to the next."""
    if sample.changes_between_reads():
        raise InputError(f"the examples of {what} change from one read to the next (random transforms?): streamed "
                         f"data must give the same examples at every product{fix}")
    return StreamedBatches(sample.source, sample.order, chunk_size or DEFAULT_STREAM_CHUNK)
