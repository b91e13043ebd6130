"""Parameter selection and the flat vector layout of the parameters a curvature operator acts on.

A vector of length P is the concatenation, in ``named_parameters`` order, of the flattened
selected parameters. Blockwise spectra select a subset by name pattern.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def matches(name: str, pattern: str) -> bool:
    """Glob match on the full name, or a module prefix: 'fc1' selects 'fc1.weight' and 'fc1.bias'."""
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern.rstrip(".") + ".")


def select_names(names: Iterable[str], patterns: str | Sequence[str] | None) -> list[str]:
    """Names matching any pattern (comma-separated string or sequence); all names if None.

    Raises ValueError naming the available parameters if a pattern matches nothing.
    """
    names = list(names)
    if patterns is None:
        return names
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    if not patterns:
        raise ValueError("empty parameter pattern")
    for pattern in patterns:
        if not any(matches(n, pattern) for n in names):
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"parameter pattern {pattern!r} matches no parameter; available: {shown}")
    return [n for n in names if any(matches(n, p) for p in patterns)]


@dataclass(frozen=True)
class ParameterSpace:
    """Layout of named tensors inside a flat vector: names, shapes and offsets."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, tensors: Mapping[str, Tensor]) -> ParameterSpace:
        return cls(tuple(tensors), tuple(t.shape for t in tensors.values()))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.numels)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """(..., P) -> {name: (..., *shape)} as views where possible."""
        lead = flat.shape[:-1]
        parts = torch.split(flat, self.numels, dim=-1)
        return {n: p.reshape(*lead, *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def flatten(self, tensors: Mapping[str, Tensor], batch_dims: int = 0) -> Tensor:
        """{name: (*batch, *shape)} -> (*batch, P)."""
        parts = [tensors[n] for n in self.names]
        lead = parts[0].shape[:batch_dims]
        return torch.cat([p.reshape(*lead, -1) for p in parts], dim=-1)
