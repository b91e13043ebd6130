"""Cost of one curvature product in units of one gradient evaluation, for every way to run it.

For a workload's model and one batch of ``--batch-size`` examples: time the gradient of the mean
loss (plain autograd, the same precision = 1), then each product variant, per vector:

    hessian-reverse / hessian-forward   reverse- or forward-over-reverse (k = 1 and k = --k)
    ggn                                 jvp + vjp (k = 1 and k = --k)
    ...-compiled                        the same through torch.compile (k = --k only)

each under strict float32 and, on CUDA with ``--tf32``, under TF32 as well. Ratios taken in one
run are what count (machines are noisy); absolute times only mean something on a GPU.

    python benchmarks/hvp_cost.py --workload digits-mlp --batch-size 512
    python benchmarks/hvp_cost.py --workload resnet18 --batch-size 512 --device cuda --tf32 --compile --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from workloads import WORKLOADS, make_workload  # noqa: E402

from hessian_probe import curvature_operator, make_problem  # noqa: E402
from hessian_probe.linalg import random_probes  # noqa: E402
from hessian_probe.operators import float32_precision  # noqa: E402


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


def variants(k: int, compile: bool) -> list[tuple[str, str, dict, int]]:
    """(label, operator kind, operator keywords, vectors per product)."""
    out = []
    for label, kind, kw in (("hessian-reverse", "hessian", {"hessian_mode": "reverse"}),
                            ("hessian-forward", "hessian", {"hessian_mode": "forward"}),
                            ("ggn", "ggn", {})):
        out += [(label, kind, kw, 1), (label, kind, kw, k)]
        if compile:
            out.append((f"{label}-compiled", kind, {**kw, "compile": True}, k))
    return out


def measure(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    workload = make_workload(args.workload, n_samples=args.batch_size, batch_size=args.batch_size)
    model = workload.model.to(device).eval()
    x, y = (t.to(device) for t in workload.batches[0])
    problem = make_problem(model, [(x, y)], "cross_entropy", device=device, dtype=torch.float32)
    params = [p for p in model.parameters()]

    def gradient() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        torch.autograd.grad(loss, params)

    rows = []
    for tf32 in ([False, True] if args.tf32 else [False]):
        with float32_precision(tf32=tf32):
            grad_s = timed(gradient, device, args.repeats)
        for label, kind, kw, k in variants(args.k, args.compile):
            op = curvature_operator(problem, kind, tf32=tf32, **kw)
            V = random_probes(k, problem.n_params, seed=k, dtype=torch.float32, device=device)
            try:
                seconds = timed(lambda: op.matmat(V), device, args.repeats) / k
                ratio = seconds / grad_s
            except torch.cuda.OutOfMemoryError:
                seconds = ratio = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append({"variant": label, "k": k, "precision": "tf32" if tf32 else "fp32", "gradient_ms": 1e3 * grad_s,
                         "per_vector_ms": None if seconds is None else 1e3 * seconds, "per_vector_in_gradients": ratio,
                         "split_rows": op.max_rows})
            shown = "out of memory" if ratio is None else f"{ratio:.2f} gradients ({1e3 * seconds:.2f} ms)"
            print(f"{'tf32' if tf32 else 'fp32'} {label:26s} k={k:<3d} per vector {shown}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="digits-mlp")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tf32", action="store_true", help="also measure with TF32 allowed (CUDA)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd products")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.workload == "digits-mlp" and args.batch_size > 1792:
        parser.error("the digits give at most 1792 examples")
    rows = measure(args)
    device_name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                   else platform.processor() or "cpu")
    header = {"workload": args.workload, "batch_size": args.batch_size, "device": device_name,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv)}
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
