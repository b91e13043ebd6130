"""torchvision's ImageFolder layout without torchvision: ROOT/CLASS/image.png as a map-style dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, UsageError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_OPTIONS = ("size", "mean", "std", "mode")


class ImageFolder:
    """ROOT/CLASS/image.png, classes in sorted order (label = index), images in sorted order, read
    with Pillow in ``mode`` ('RGB' or 'L'), resized to ``size`` with bilinear filtering (an int: the
    shorter side, keeping the aspect, as torchvision's Resize(int); (height, width): exactly), scaled
    to [0, 1] and normalised as (x - mean) / std per channel -- the transform a model trained with
    torchvision's Resize, ToTensor and Normalize saw. Item i is (C x H x W float32, label)."""

    def __init__(self, root: Path, size: int | tuple[int, int] | None = None, mean: Any = None, std: Any = None,
                 mode: str = "RGB") -> None:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - matplotlib depends on Pillow
            raise InputError("imagefolder:ROOT needs Pillow (pip install pillow)") from None
        self._image = Image
        if not root.is_dir():
            raise InputError(f"image folder not found: {root}")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.files = [(f, label) for label, c in enumerate(classes) for f in sorted((root / c).iterdir())
                      if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.files:
            raise InputError(f"{root} holds no images in class folders (ROOT/CLASS/image.png, as torchvision's "
                             "ImageFolder)")
        if mode not in ("RGB", "L"):
            raise UsageError(f"imagefolder mode must be RGB or L, got {mode!r}")
        self.mode, self.size = mode, size if size is None or isinstance(size, int) else tuple(size)
        channels = 3 if mode == "RGB" else 1
        self.shift, self.scale = (self._per_channel(name, value, channels) for name, value in (("mean", mean),
                                                                                               ("std", std)))
        if self.scale is not None and not bool((self.scale > 0).all()):
            raise UsageError(f"imagefolder std must be positive, got {std!r}")

    @staticmethod
    def _per_channel(name: str, value: Any, channels: int) -> Tensor | None:
        if value is None:
            return None
        values = np.atleast_1d(value)
        if len(values) not in (1, channels):
            raise UsageError(f"imagefolder {name} needs 1 or {channels} values, got {value!r}")
        return torch.as_tensor(values, dtype=torch.float32).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, label = self.files[i]
        try:
            with self._image.open(path) as img:
                img = self._resized(img.convert(self.mode))
                array = np.asarray(img, dtype=np.float32) / 255.0
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {first_line(exc)}") from None
        x = torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)
        if self.shift is not None:
            x = x - self.shift
        if self.scale is not None:
            x = x / self.scale
        return x, label

    def _resized(self, img: Any) -> Any:
        if isinstance(self.size, int):  # the shorter side to size, as Resize(int) (its rounding down)
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            other = int(self.size * long / short)
            return img.resize((self.size, other) if w <= h else (other, self.size), self._image.BILINEAR)
        if self.size is not None:
            return img.resize((self.size[1], self.size[0]), self._image.BILINEAR)
        return img
