"""Small built-in models for the digits demo and the tests."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def mlp(in_features: int = 64, hidden: int | tuple[int, ...] = 32, out_features: int = 10,
        activation: str = "tanh") -> nn.Sequential:
    """Fully connected network: Linear -> activation -> ... -> Linear."""
    _check_activation(activation)
    widths = [in_features, *((hidden,) if isinstance(hidden, int) else hidden)]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(widths[-1], out_features))
    return nn.Sequential(*layers)


def small_cnn(channels: int = 4, out_features: int = 10, activation: str = "tanh") -> nn.Sequential:
    """Two 3x3 convolutions with 2x2 average pooling on 1 x 8 x 8 images, then a linear classifier."""
    act = ACTIVATIONS[_check_activation(activation)]
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), act(), nn.AvgPool2d(2),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), act(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 4, out_features),
    )


def _check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: use one of {', '.join(ACTIVATIONS)}")
    return name
