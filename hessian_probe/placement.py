"""Where a problem's examples live: on its device when they fit, else in pinned host memory, in the
problem's floating dtype (integer labels and tokens as int64)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor]


def placed(t: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Floating tensors to ``dtype``; integer labels and tokens to int64 (as torch expects); detached."""
    t = t.detach()
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device, dtype=torch.bool if t.dtype == torch.bool else torch.int64)


DEVICE_DATA_FRACTION = 0.25  # the largest share of free GPU memory the sample may take there


def prepare_batches(batches: Sequence[Batch], device: torch.device, dtype: torch.dtype) -> tuple[Batch, ...]:
    """The batches cast to ``dtype``, on ``device`` when they fit (at most DEVICE_DATA_FRACTION of
    its free memory), else in pinned host memory (copied to the device batch by batch)."""
    batches = [(x, y) for x, y in batches if len(x)]
    if not batches:
        raise ValueError("the dataset is empty: a curvature operator needs at least one example")
    home = torch.device(device)
    if home.type == "cuda":
        nbytes = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else 8) for b in batches for t in b)
        if nbytes > DEVICE_DATA_FRACTION * torch.cuda.mem_get_info(home)[0]:
            return tuple((placed(x, "cpu", dtype).pin_memory(), placed(y, "cpu", dtype).pin_memory())
                         for x, y in batches)
    return tuple((placed(x, home, dtype), placed(y, home, dtype)) for x, y in batches)
