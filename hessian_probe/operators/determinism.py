"""Is the operator a fixed matrix? A check before a long run, at the cost of two products.

Every Krylov method here assumes that A v is the same linear map each time it is applied. It is
not when the model or the loss draws random numbers (dropout applied regardless of mode, e.g.
``F.dropout(x, training=True)``; a random loss), when the forward changes state it then reads
(a counter, a buffer written in place), or when BatchNorm normalises with batch statistics
(``track_running_stats=False``: then the numbers depend on how the sample is chunked). Such
runs give normal-looking, wrong results. curvlinops checks the same property (its
``check_deterministic``); here the batch-statistics case is found from the modules up front, and
the others by applying the operator twice to one random vector.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..seeds import derive

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}  # relative difference two equal products may show
OVERRIDE = "`allow_nondeterministic`"


class NondeterministicError(InputError):
    """The operator is not a fixed matrix (its message names the likely cause and the override)."""


def batch_statistics_layers(module: nn.Module) -> list[str]:
    """Names of BatchNorm layers that normalise with batch statistics even in eval mode."""
    return [name or type(m).__name__ for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats]


def check_fixed_operator(op, seed: int = 0) -> float:
    """Refuse a model whose curvature operator is not one fixed matrix; return the relative
    difference of two products with the same random vector (0.0 for a deterministic model)."""
    module = op.problem.module
    layers = batch_statistics_layers(module)
    if layers:
        raise NondeterministicError(
            f"BatchNorm layer {layers[0]!r} has track_running_stats=False: it normalises with the statistics of each "
            f"chunk of examples, so every number would depend on `chunk_size`; give it running statistics "
            f"(track_running_stats=True, from training), or pass {OVERRIDE}")
    generator = torch.Generator().manual_seed(derive(seed, "determinism"))
    v = torch.randn(1, op.size, generator=generator, dtype=torch.float64).to(device=op.device, dtype=op.dtype)
    before = {n: b.clone() for n, b in op.problem.buffers.items()}
    first, second = op.matmat(v), op.matmat(v)
    changed = [n for n, b in op.problem.buffers.items() if not torch.equal(b, before[n])]
    scale = float(first.norm())
    difference = float((first - second).norm()) / scale if scale > 0 else float((first - second).norm())
    if changed:
        raise NondeterministicError(f"the model's forward changes its buffer {changed[0]!r} in place: the operator "
                                    f"is not a fixed matrix; make the forward free of side effects, or pass {OVERRIDE}")
    products = op.product_dtype  # their rounding, not the vectors', sets the tolerance
    tolerance = TOLERANCE.get(products, 1e-4)
    if not difference <= tolerance:
        dropout = [n for n, m in module.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        hint = (f" (the model has dropout layers, e.g. {dropout[0]!r}, and eval mode did not turn them off: is it "
                "applied with training=True?)" if dropout else
                " (dropout applied regardless of mode, e.g. F.dropout(x, training=True), a forward that changes state, "
                "or a loss that draws random numbers)")
        raise NondeterministicError(
            f"two products with the same vector differ by {difference:.2g} (relative; at most "
            f"{tolerance:g} expected in {str(products).removeprefix('torch.')}): the model or loss "
            f"is not deterministic{hint}; fix it, or pass {OVERRIDE}")
    return difference


def evaluation_note(module: nn.Module) -> str | None:
    """What eval mode changes for this model (every product, and validate-lr's training runs, use
    it), or None when it changes nothing."""
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    dropouts = sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())
    parts = ([f"{norms} BatchNorm layer(s) use their running statistics"] if norms else []) + \
            ([f"{dropouts} dropout layer(s) are off"] if dropouts else [])
    if not parts:
        return None
    return "evaluated in eval mode: " + " and ".join(parts) + " (in every product and in validate-lr's training runs)"
