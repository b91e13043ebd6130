"""Turn a ``--data`` spec into one (inputs, targets) pair of tensors, optionally a seeded subset.

Specs: ``digits`` (bundled, flat 64 features) and ``digits:image`` (1 x 8 x 8); ``tensors:PATH``
(or just ``PATH``) for a ``.pt``/``.pth`` or ``.npz`` file holding inputs and targets under
``x``/``y`` or ``inputs``/``targets``, or tokens under ``input_ids``/``labels`` (and
``attention_mask``); ``imagefolder:ROOT`` (ROOT/CLASS/image.png, resized and normalised by
--data-arg size/mean/std); ``torchvision:NAME:ROOT`` for a torchvision dataset already on disk
(never downloaded); ``package.module:factory`` returning a Dataset or an (inputs, targets) pair.
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

from ..errors import InputError, UsageError, first_line
from ..imports import import_object, is_import_spec
from .checkpoints import refused_global
from .datasets import load_digits, subset_indices

KEY_PAIRS = (("x", "y"), ("inputs", "targets"))
TENSOR_SUFFIXES = (".pt", ".pth", ".npz")


def load_data(spec: str, samples: int | None = None, seed: int = 0, args: dict[str, Any] | None = None,
              notes: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """The examples the spec names as stacked tensors (inputs, targets); with ``samples``, a seeded
    random subset of that many (drawn before a Dataset's items are read). ``args``: keyword
    arguments of a ``package.module:factory`` (--data-arg); ``notes`` gets what the user should
    know about how a DataLoader was read."""
    args = dict(args or {})
    if args and not (is_import_spec(spec) or spec.startswith("imagefolder:")):
        raise UsageError(f"--data-arg applies to a package.module:factory or imagefolder:ROOT, not to "
                         f"--data {spec!r}")
    if spec in ("digits", "digits:image"):
        pair = load_digits(image=spec.endswith(":image"))
    elif spec.startswith("tensors:") or spec.endswith(TENSOR_SUFFIXES):
        pair = _tensor_file(Path(spec.removeprefix("tensors:")))
    elif spec.startswith("imagefolder:"):
        pair = image_folder(Path(spec.removeprefix("imagefolder:")), **_image_options(args, spec))
    elif spec.startswith("torchvision:"):
        pair = _stack_dataset(_torchvision(spec), spec, samples, seed)
        samples = None
    elif is_import_spec(spec):
        pair = _call_factory(spec, args)
        if isinstance(pair, torch.utils.data.DataLoader):
            pair = _read_loader(pair, spec, notes if notes is not None else [])
        elif not _is_pair(pair):
            pair, samples = _stack_dataset(pair, spec, samples, seed), None
    else:
        raise UsageError(
            f"unknown data spec {spec!r}: use digits, tensors:PATH, torchvision:NAME:ROOT or package.module:factory"
        )
    inputs, targets = _check(pair, spec)
    if samples is None:
        return inputs, targets
    idx = _subset(len(inputs), samples, seed)
    return inputs[idx], targets[idx]


def _subset(n_total: int, n: int, seed: int) -> Tensor:
    if not 0 < n <= n_total:
        raise UsageError(f"--samples {n} is outside 1..{n_total}, the size of the dataset")
    return subset_indices(n_total, n, seed)


def _is_pair(obj: Any) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, (Tensor, np.ndarray)) for t in obj)


def _check(pair: Sequence[Any], spec: str) -> tuple[Tensor, Tensor]:
    inputs, targets = (torch.as_tensor(t) for t in pair)
    if len(inputs) == 0:
        raise InputError(f"the dataset {spec!r} is empty")
    if len(inputs) != len(targets):
        raise InputError(f"the dataset {spec!r} has {len(inputs)} inputs but {len(targets)} targets")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise InputError(f"the dataset {spec!r} has non-finite inputs (NaN or inf)")
    if targets.is_floating_point() and not torch.isfinite(targets).all():
        count = int((~torch.isfinite(targets)).sum())
        raise InputError(f"the dataset {spec!r} has {count} non-finite target(s) (NaN or inf)")
    return inputs, targets


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
        return _token_inputs(content, path)
    if isinstance(content, dict):
        for x_key, y_key in KEY_PAIRS:
            if x_key in content and y_key in content:
                return content[x_key], content[y_key]
        found = ", ".join(map(str, list(content)[:6]))
    else:
        found = type(content).__name__
    raise InputError(f"data file {path} needs inputs and targets under keys x/y or inputs/targets; found {found}")


def _token_inputs(content: dict, path: Path | str) -> tuple[Tensor, Tensor]:
    """A tokenised file (a transformers model's inputs): x = input_ids (N, T), or input_ids and
    attention_mask stacked as (N, 2, T) (loading/pretrained.py unstacks them); y = labels."""
    if "labels" not in content:
        raise InputError(f"data {path} has input_ids but no labels: save labels too (for a causal language "
                         "model labels = input_ids, with -100 where no loss is taken, e.g. padding)")
    ids, labels = torch.as_tensor(content["input_ids"]), torch.as_tensor(content["labels"])
    if ids.is_floating_point() or ids.ndim != 2:
        raise InputError(f"input_ids in {path} must be integers of shape (N, T), got {ids.dtype} {tuple(ids.shape)}")
    if "attention_mask" not in content:
        return ids, labels
    mask = torch.as_tensor(content["attention_mask"])
    if mask.shape != ids.shape:
        raise InputError(f"attention_mask in {path} has shape {tuple(mask.shape)}, input_ids {tuple(ids.shape)}")
    return torch.stack([ids, mask.to(ids.dtype)], dim=1), labels


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_OPTIONS = ("size", "mean", "std", "mode")


def _image_options(args: dict[str, Any], spec: str) -> dict[str, Any]:
    unknown = sorted(set(args) - set(IMAGE_OPTIONS))
    if unknown:
        raise UsageError(f"--data {spec}: unknown --data-arg {', '.join(unknown)} (imagefolder takes "
                         f"{', '.join(IMAGE_OPTIONS)})")
    return args


def image_folder(root: Path, size: int | tuple[int, int] | None = None, mean: Any = None, std: Any = None,
                 mode: str = "RGB") -> tuple[Tensor, Tensor]:
    """torchvision's ImageFolder layout without torchvision: ROOT/CLASS/image.png, classes in sorted
    order (label = index), images in sorted order, read with Pillow in ``mode`` ('RGB' or 'L'),
    resized to ``size`` with bilinear filtering (an int: the shorter side, keeping the aspect, as
    torchvision's Resize(int); (height, width): exactly), scaled to [0, 1]
    and normalised as (x - mean) / std per channel -- the transform a model trained with
    torchvision's Resize, ToTensor and Normalize saw."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - matplotlib depends on Pillow
        raise InputError("imagefolder:ROOT needs Pillow (pip install pillow)") from None
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, label) for label, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(f"{root} holds no images in class folders (ROOT/CLASS/image.png, as torchvision's "
                         "ImageFolder)")
    if mode not in ("RGB", "L"):
        raise UsageError(f"imagefolder mode must be RGB or L, got {mode!r}")
    if size is not None and not isinstance(size, int):
        size = tuple(size)
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if isinstance(size, int):  # the shorter side to size, as Resize(int) (its rounding down)
                    w, h = img.size
                    short, long = (w, h) if w <= h else (h, w)
                    other = int(size * long / short)
                    img = img.resize((size, other) if w <= h else (other, size), Image.BILINEAR)
                elif size is not None:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                array = np.asarray(img, dtype=np.float32) / 255.0
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {first_line(exc)}") from None
        images.append(torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1))
    try:
        x = torch.stack(images)
    except RuntimeError:
        raise InputError(f"the images under {root} differ in size: pass --data-arg size=N (or size=(H, W))"
                         ) from None
    channels = x.shape[1]
    for name, value in (("mean", mean), ("std", std)):
        if value is not None and len(np.atleast_1d(value)) not in (1, channels):
            raise UsageError(f"imagefolder {name} needs 1 or {channels} values, got {value!r}")
    if mean is not None:
        x = x - torch.as_tensor(np.atleast_1d(mean), dtype=x.dtype).reshape(1, -1, 1, 1)
    if std is not None:
        scale = torch.as_tensor(np.atleast_1d(std), dtype=x.dtype).reshape(1, -1, 1, 1)
        if not bool((scale > 0).all()):
            raise UsageError(f"imagefolder std must be positive, got {std!r}")
        x = x / scale
    return x, torch.tensor([label for _, label in files])


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


LABEL_KEYS = ("labels", "label", "y", "targets", "target")
INPUT_KEYS = ("x", "inputs", "input", "pixel_values", "image", "images")


def _read_loader(loader: Any, spec: str, notes: list[str]) -> tuple[Tensor, Tensor]:
    """Every batch of the user's DataLoader (its dataset, transforms and collate), once, in its
    order, concatenated: (x, y) pairs, or dicts (input_ids/attention_mask/labels, or an input key
    and a label key). Nothing may be dropped (drop_last is refused); a shuffling loader is noted:
    its order does not change the operator, but random transforms are drawn once, here."""
    if loader.drop_last and len(loader.dataset) % (loader.batch_size or 1):
        raise InputError(f"the DataLoader of {spec!r} drops its last incomplete batch (drop_last=True): the "
                         "curvature would leave those examples out; return a loader with drop_last=False")
    if isinstance(loader.sampler, torch.utils.data.RandomSampler):
        notes.append(f"the DataLoader of {spec!r} shuffles: every example is used once, so the order changes "
                     "nothing, but random transforms were drawn once, when its batches were read")
    inputs, targets = [], []
    for i, batch in enumerate(loader):
        x, y = _pair_of(batch, spec, i)
        inputs.append(torch.as_tensor(x))
        targets.append(torch.as_tensor(y))
    if not inputs:
        raise InputError(f"the DataLoader of {spec!r} gave no batches")
    try:
        return torch.cat(inputs), torch.cat(targets)
    except RuntimeError as exc:
        raise InputError(f"the batches of {spec!r} differ in shape beyond the batch dimension (pad them to one "
                         f"length): {first_line(exc)}") from None


def _pair_of(batch: Any, spec: str, i: int) -> tuple[Any, Any]:
    """(inputs, targets) of one batch: a pair, or a dict of tensors."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        if "input_ids" in batch:
            ids, labels = _token_inputs(batch, Path(f"{spec} (batch {i})"))
            return ids, labels
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
        raise InputError(f"batch {i} of {spec!r} is a dict with keys {', '.join(map(str, batch))}: need input_ids "
                         f"and labels, or one of {', '.join(INPUT_KEYS)} and one of {', '.join(LABEL_KEYS)}")
    raise InputError(f"batch {i} of {spec!r} is a {type(batch).__name__}: need (inputs, targets) or a dict")


def _stack_dataset(dataset: Any, spec: str, samples: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise InputError(f"data {spec!r} gave a {type(dataset).__name__}: need a map-style Dataset or "
                         "(inputs, targets)")
    if len(dataset) == 0:
        raise InputError(f"the dataset {spec!r} is empty")
    chosen = range(len(dataset)) if samples is None else _subset(len(dataset), samples, seed).tolist()
    items = []
    for i in chosen:
        try:
            items.append(dataset[i])
        except Exception as exc:
            raise InputError(f"reading item {i} of the dataset {spec!r} failed: {first_line(exc)}") from None
    try:
        inputs = torch.stack([torch.as_tensor(x) for x, _ in items])
        targets = torch.stack([torch.as_tensor(y) for _, y in items])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"the examples of {spec!r} are not (input, target) pairs of equal shapes: "
                         f"{first_line(exc)}") from None
    return inputs, targets
