"""The built-in demo's network: a small MLP trained on the bundled digits, saved as a checkpoint.

``hessian-probe demo`` then analyses the saved file exactly as a user's checkpoint would be,
through ``hessian-probe spectrum --model mlp --data digits``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .files import write_atomically
from .loading.builtin_models import mlp
from .loading.datasets import load_digits


def train_digits_mlp(path: Path, *, seed: int = 0, steps: int = 60, lr: float = 0.01) -> torch.nn.Module:
    """Train the built-in 64-32-10 tanh MLP with ``steps`` full-batch Adam steps on all 1,797 digits
    and save ``{"model_state_dict", "optimizer_state_dict"}`` to ``path`` (Adam's state included)."""
    torch.manual_seed(seed)
    x, y = load_digits()
    model = mlp(hidden=32)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimiser.state_dict()}
    write_atomically(Path(path), lambda temporary: torch.save(state, temporary))
    return model.eval()
