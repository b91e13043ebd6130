"""A user's map-style dataset as examples by index (streams.ExampleSource), and its batches as
(inputs, targets): a pair, or a dict (input_ids/attention_mask/labels, or an input key and a
label key, as Hugging Face and torchvision-style datasets give them)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from ..errors import InputError, first_line, worker_error

Batch = tuple[Tensor, Tensor]
LABEL_KEYS = ("labels", "label", "y", "targets", "target")
INPUT_KEYS = ("x", "inputs", "input", "pixel_values", "image", "images")


@dataclass(frozen=True, eq=False)
class DatasetSource:
    """``dataset[i]`` for the indices asked, batched by ``collate`` (a DataLoader's collate_fn, or
    torch's default_collate) into (inputs, targets); ``num_workers`` > 0 reads a pass's chunks with
    that many DataLoader workers (``loader_options``: the user's worker_init_fn, prefetch_factor,
    multiprocessing_context...), kept alive from one pass to the next. ``mismatch``: what to say
    when items cannot be batched together."""

    dataset: Any
    spec: str
    collate: Callable[[list], Any] = default_collate
    num_workers: int = 0
    mismatch: str = "pad them to one length"
    loader_options: dict[str, Any] = field(default_factory=dict)
    _loaders: dict[tuple, DataLoader] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_loaders": {}}  # workers stay with this process

    def read(self, indices: Sequence[int]) -> Batch:
        items = []
        for i in indices:
            try:
                items.append(self.dataset[i])
            except Exception as exc:
                raise InputError(f"reading item {i} of the dataset {self.spec!r} failed: {first_line(exc)}") from None
        where = f"item {indices[0]}" if len(indices) == 1 else f"items {indices[0]}..{indices[-1]}"
        return self._pair(self._collate(items), where)

    def read_chunks(self, chunks: Sequence[Sequence[int]]) -> Iterator[Batch]:
        if self.num_workers == 0:
            for chunk in chunks:
                yield self.read(chunk)
            return
        key = tuple(tuple(c) for c in chunks)
        loader = self._loaders.pop(key, None) or self._new_loader(key)  # taken out while in use: a second
        try:  # pass over the same chunks at the same time gets its own loader
            for i, batch in enumerate(loader):
                yield self._pair(batch, f"chunk {i}")
        except GeneratorExit:  # a pass left early: its workers are reset at the next one
            self._keep(key, loader)
            raise
        except InputError as exc:
            raise InputError(worker_error(str(exc))) from None
        except Exception as exc:
            raise InputError(f"reading the dataset {self.spec!r} failed: {first_line(exc)}") from None
        else:
            self._keep(key, loader)

    def _new_loader(self, chunks: tuple[tuple[int, ...], ...]) -> DataLoader:
        """The user's dataset, collate and worker settings over these chunks, its workers
        persistent: a streamed sample reads the same chunks at every product without starting
        its workers again."""
        return DataLoader(self.dataset, batch_sampler=[list(c) for c in chunks], collate_fn=self._collate,
                          num_workers=self.num_workers, persistent_workers=True, **self.loader_options)

    def _keep(self, key: tuple, loader: DataLoader) -> None:
        """Keep the loaders of the last two chunk lists used (their workers alive)."""
        self._loaders[key] = loader
        while len(self._loaders) > 2:
            self._loaders.pop(next(iter(self._loaders)))

    def close(self) -> None:
        """Stop the workers kept for the next pass (they also stop with this object)."""
        self._loaders.clear()

    @property
    def _collate(self) -> _Collate:
        return _Collate(self.collate, self.spec, self.mismatch)

    def _pair(self, batch: Any, where: str) -> Batch:
        return checked_pair(pair_of(batch, self.spec, where), self.spec)


@dataclass(frozen=True)
class _Collate:
    """The collate function, its failure one line that says how to fix it; with torch's default,
    the list values of dict items that become inputs or labels (a Hugging Face dataset without
    set_format('torch')) are made tensors first, as a tokenised dataset's are."""

    collate: Callable[[list], Any]
    spec: str
    mismatch: str

    def __call__(self, items: list) -> Any:
        ours = self.collate is default_collate
        try:
            return self.collate([_read_fields(item) for item in items] if ours else items)
        except InputError:
            raise
        except Exception as exc:
            if not ours:
                raise InputError(f"the collate_fn of {self.spec!r} failed: {first_line(exc)}") from None
            raise InputError(f"the examples of {self.spec!r} cannot be batched together ({self.mismatch}): "
                             f"{first_line(exc)}") from None


TENSOR_KEYS = ("input_ids", "attention_mask", *INPUT_KEYS, *LABEL_KEYS)  # the dict keys pair_of reads


def _read_fields(item: Any) -> Any:
    """A dict item as the fields pair_of reads (others, e.g. a text column of varying length, are
    never batched), lists as tensors; a dict with none of them, or any other item, as it is."""
    if not isinstance(item, dict) or not any(k in item for k in TENSOR_KEYS):
        return item
    return {k: torch.as_tensor(v) if isinstance(v, list) else v for k, v in item.items() if k in TENSOR_KEYS}


def pair_of(batch: Any, spec: str, where: str) -> tuple[Any, Any]:
    """(inputs, targets) of one batch: a pair, or a dict of tensors."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        if "input_ids" in batch:
            return token_inputs(batch, f"{spec} ({where})")
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
        raise InputError(f"{where} of {spec!r} is a dict with keys {', '.join(map(str, batch))}: need input_ids "
                         f"and labels, or one of {', '.join(INPUT_KEYS)} and one of {', '.join(LABEL_KEYS)}")
    raise InputError(f"{where} of {spec!r} gave a {type(batch).__name__}, not (input, target) pairs or a dict "
                     "of tensors")


def token_inputs(content: dict, path: Path | str) -> Batch:
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


def checked_pair(pair: Sequence[Any], spec: str) -> Batch:
    """Inputs and targets as tensors, as many of each, every float finite."""
    try:
        inputs, targets = (torch.as_tensor(t) for t in pair)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"the examples of {spec!r} are not (input, target) pairs of tensors, arrays or numbers: "
                         f"{first_line(exc)}") from None
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


@dataclass(frozen=True, eq=False)
class IndexedSample:
    """The examples ``order`` of a dataset (its DataLoader's sampler drawn once, or every index),
    not yet read: stacked into memory once, or streamed (streams.StreamedBatches) at every pass."""

    source: DatasetSource
    order: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.order)

    def subset(self, positions: Tensor) -> IndexedSample:
        return IndexedSample(self.source, tuple(self.order[int(p)] for p in positions))

    def stacked(self, chunk_size: int = 1024) -> Batch:
        """Every example read once, concatenated in order."""
        chunks = [self.order[i : i + chunk_size] for i in range(0, len(self.order), chunk_size)]
        inputs, targets = zip(*self.source.read_chunks(chunks))
        try:
            return torch.cat(inputs), torch.cat(targets)
        except RuntimeError as exc:
            raise InputError(f"the batches of {self.source.spec!r} differ in shape beyond the batch dimension "
                             f"({self.source.mismatch}): {first_line(exc)}") from None

    def stacked_bytes(self, dtype: torch.dtype) -> int:
        """About how much memory the stacked sample takes in ``dtype`` (from its first example)."""
        x, y = self.source.read(self.order[:1])
        per_example = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else 8) for t in (x, y))
        return per_example * len(self.order)

    def changes_between_reads(self) -> bool:
        """Whether the first example differs when read twice (random transforms)."""
        first, again = self.source.read(self.order[:1]), self.source.read(self.order[:1])
        return not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, again))
