"""How many rows (examples x vectors) one product pass may take on the CPU, sized from memory.

A forward-over-reverse product keeps, per example and per vector, the forward's saved
activations a few times over (primal, tangent, their gradients). Measured once with
``torch.autograd.graph.saved_tensors_hooks`` on one example, the bytes a saved per example give
the bound rows <= FRACTION x available memory / (BYTES_PER_ACTIVATION x a).
The bound only decides how a batch is split into pieces (the operator is the same; the rounding
may differ in the last bits). Issue 19: a conv net's default spectrum asked for 64 GiB at once.
"""

from __future__ import annotations

import torch

FRACTION = 0.5  # of the memory the system says is available
BYTES_PER_ACTIVATION = 8  # saved activations per row, counted generously (primal, tangent, both gradients, slack)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def activation_bytes(problem) -> int:
    """Bytes autograd saves for one example's loss (the forward's activations)."""
    x, y = (t.to(problem.device) for t in problem.batches[0])  # not weighted_batches: no collective here
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    params = {n: p.detach().requires_grad_() for n, p in problem.params.items()}
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        problem.loss(problem.forward(params, x[:1]), y[:1])
    return total


def cpu_row_budget(problem, memory: int | None = None) -> int | None:
    """The most rows one CPU product pass should take (None: no bound needed or known)."""
    memory = available_memory() if memory is None else memory
    try:
        per_row = BYTES_PER_ACTIVATION * activation_bytes(problem)
    except Exception:  # a model that cannot run on one example: leave the splitting to allocation failures
        return None
    if memory is None or per_row <= 0:
        return None
    return max(1, int(FRACTION * memory // per_row))
