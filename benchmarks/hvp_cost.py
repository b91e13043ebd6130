"""Cost of one Hessian and one GGN product in units of one gradient evaluation.

For a model and batch: time the gradient of the mean loss, a single-vector product, and a
block of k vectors (per vector), for both operators. Ratios taken in one run are what count
(machines are noisy); absolute times only mean something on a GPU.

    python benchmarks/hvp_cost.py --model mlp --batch-size 512 --device cpu
    python benchmarks/hvp_cost.py --model cnn --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from hessian_probe import curvature_operator, make_problem
from hessian_probe.linalg import random_probes
from hessian_probe.loading.builtin_models import mlp, small_cnn
from hessian_probe.loading.datasets import load_digits

MODELS = {
    "mlp": (lambda: mlp(hidden=(128, 128)), False),
    "cnn": (lambda: small_cnn(channels=16), True),
}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over ``repeats`` runs after two warm-ups."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(model_name: str, batch_size: int, device: str, dtype: torch.dtype, k: int, repeats: int) -> dict:
    build, image = MODELS[model_name]
    torch.manual_seed(0)
    x, y = load_digits(batch_size if batch_size <= 1797 else None, image=image)
    if batch_size > len(x):  # repeat the digits to reach large batches
        reps = -(-batch_size // len(x))
        x, y = x.repeat(reps, *([1] * (x.ndim - 1)))[:batch_size], y.repeat(reps)[:batch_size]
    problem = make_problem(build(), (x, y), "cross_entropy", dtype=dtype, device=device)
    dev = problem.device
    one = random_probes(1, problem.n_params, seed=0, dtype=dtype, device=dev)
    block = random_probes(k, problem.n_params, seed=1, dtype=dtype, device=dev)
    gradient = timed(problem.gradient, dev, repeats)
    row = {"model": model_name, "n_params": problem.n_params, "batch_size": batch_size, "k": k, "gradient_s": gradient}
    for kind in ("hessian", "ggn"):
        op = curvature_operator(problem, kind)
        single = timed(lambda: op.matmat(one), dev, repeats)
        batched = timed(lambda: op.matmat(block), dev, repeats) / k
        row[f"{kind}_single_in_gradients"] = single / gradient
        row[f"{kind}_per_vector_k{k}_in_gradients"] = batched / gradient
        row[f"{kind}_single_s"] = single
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the row to this file")
    args = parser.parse_args()
    row = measure(args.model, args.batch_size, args.device, getattr(torch, args.dtype), args.k, args.repeats)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    row.update(device=device_name, dtype=args.dtype, torch=torch.__version__, threads=torch.get_num_threads())
    print(f"{row['model']} (P={row['n_params']}, B={row['batch_size']}, {args.dtype}, {device_name}): "
          f"gradient {row['gradient_s'] * 1e3:.2f} ms")
    for kind in ("hessian", "ggn"):
        print(f"  {kind:8s} product = {row[f'{kind}_single_in_gradients']:.2f} gradients (one vector), "
              f"{row[f'{kind}_per_vector_k{args.k}_in_gradients']:.2f} gradients per vector with k={args.k}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(row, fh, indent=2)


if __name__ == "__main__":
    main()
