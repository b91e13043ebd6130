"""The benchmark workloads: a model at a fixed seed, equal-sized batches of data, a loss.

No downloads: the digits ship with scikit-learn; CIFAR-shaped images and language-model tokens
are synthetic (seeded Gaussian pixels, uniform tokens), which is all a timing needs. Batches are
of equal size because one peer (hessian-eigenthings) averages batch products without weights,
so only then do all tools multiply by the same matrix.

    digits-mlp      scikit-learn digits, MLP 64-128-128-10 (tanh), 1792 examples in 7 x 256
    resnet18        CIFAR ResNet-18 (3x3 stem, no max-pool, 11.2M parameters), synthetic images
    transformer-lm  4-layer pre-norm causal transformer, d=256, vocab 2048, synthetic tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class Workload:
    name: str
    model: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    description: str

    @property
    def n_samples(self) -> int:
        return sum(len(x) for x, _ in self.batches)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# --- CIFAR ResNet-18 (He et al. 2016, the 3x3-stem variant used for 32x32 images) -------------

class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, n_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c_in = [], width
        for i, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layers(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


# --- a small causal language model (plain ops: every torch.func transform supports them) ------

class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attention = scores.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return self.out((attention @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attention = CausalSelfAttention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """Token ids (B, T) -> logits (B, V, T): classes on dim 1, as cross-entropy expects."""

    def __init__(self, vocab: int = 2048, d: int = 256, layers: int = 4, heads: int = 4, context: int = 128) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(0.02 * torch.randn(context, d))
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.tokens(ids) + self.positions[: ids.shape[1]]
        return self.head(self.norm(self.blocks(h))).transpose(1, 2)


# --- the workloads --------------------------------------------------------------------------

def _split(x: Tensor, y: Tensor, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    n = len(x) - len(x) % batch_size
    if n == 0:
        raise ValueError(f"need at least one full batch of {batch_size}, have {len(x)} examples")
    return list(zip(x[:n].split(batch_size), y[:n].split(batch_size)))


def digits_mlp(n_samples: int = 1792, batch_size: int = 256) -> Workload:
    from hessian_probe.loading.builtin_models import mlp
    from hessian_probe.loading.datasets import load_digits

    torch.manual_seed(0)
    x, y = load_digits()
    model = mlp(hidden=(128, 128))
    batches = _split(x[:n_samples], y[:n_samples], batch_size)
    return Workload("digits-mlp", model, batches, "scikit-learn digits, MLP 64-128-128-10 tanh")


def resnet18(n_samples: int = 2000, batch_size: int = 500) -> Workload:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = CifarResNet18()
    x = torch.randn(n_samples, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (n_samples,), generator=generator)
    return Workload("resnet18", model, _split(x, y, batch_size),
                    "CIFAR ResNet-18, synthetic 3x32x32 images, 10 classes")


def transformer_lm(n_samples: int = 512, batch_size: int = 64, context: int = 128, vocab: int = 2048) -> Workload:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = TinyLM(vocab=vocab, context=context)
    tokens = torch.randint(0, vocab, (n_samples, context + 1), generator=generator)
    batches = _split(tokens[:, :-1], tokens[:, 1:], batch_size)
    return Workload("transformer-lm", model, batches, f"4-layer causal transformer d=256, vocab {vocab}, "
                    f"synthetic tokens, context {context}")


WORKLOADS = {"digits-mlp": digits_mlp, "resnet18": resnet18, "transformer-lm": transformer_lm}


def make_workload(name: str, n_samples: int | None = None, batch_size: int | None = None) -> Workload:
    kwargs = {k: v for k, v in (("n_samples", n_samples), ("batch_size", batch_size)) if v is not None}
    return WORKLOADS[name](**kwargs)
