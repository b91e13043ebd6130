from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from helpers import train_briefly  # noqa: E402

from hessian_probe.demo import train_digits_mlp  # noqa: E402
from hessian_probe.loading.builtin_models import mlp, small_cnn  # noqa: E402
from hessian_probe.loading.datasets import load_digits  # noqa: E402


@functools.cache
def trained_digits(kind: str, n_samples: int = 237):
    """A briefly trained float64 tanh MLP or CNN on a seeded digits subset: (model, X, y)."""
    torch.manual_seed(0)
    image = kind == "cnn"
    x, y = load_digits(n_samples, seed=1, image=image)
    x = x.double()
    model = (small_cnn(channels=6) if image else mlp(hidden=32)).double()
    train_briefly(model, x, y, F.cross_entropy, steps=150, lr=0.01)
    return model, x, y


@pytest.fixture(params=["mlp", "cnn"])
def digits_network(request):
    return (request.param, *trained_digits(request.param))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """The demo's digits MLP, briefly trained (30 steps), saved as a user's checkpoint with Adam's state."""
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    train_digits_mlp(path, seed=0, steps=30)
    return path


@pytest.fixture(autouse=True)
def _signals_restored():
    """A command interrupted in-process (CliRunner) ignores further Ctrl-C and SIGTERM until its
    process ends, as a real one should; the test process gets its handlers back."""
    import signal

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)
