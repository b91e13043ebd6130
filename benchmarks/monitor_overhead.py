"""SharpnessMonitor's overhead in a training loop (issue 16 bar: under 10% of the training time on
the demo MLP with every=50, CPU).

The demo's network (64-32-10 tanh MLP, full-batch Adam at lr 0.01 on the 1,797 digits) trains for
--steps steps without the monitor, then again from the same seed with it (every 50 steps, on a
fixed curvature sample of --sample examples, tol 1e-3, warm-started Lanczos); the runs alternate
--repeats times and the medians are compared. Run: python benchmarks/monitor_overhead.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.training import SharpnessMonitor


def train(steps: int, monitor_sample: int | None, every: int, tol: float | None = None
          ) -> tuple[float, SharpnessMonitor | None]:
    torch.manual_seed(0)
    x, y = load_digits()
    model = mlp(hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    monitor = None
    if monitor_sample:
        options = {"tol": tol} if tol is not None else {}  # else the monitor's default
        monitor = SharpnessMonitor(model, F.cross_entropy, (x[:monitor_sample], y[:monitor_sample]), every=every,
                                   **options)
    t0 = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if monitor is not None:
            monitor.step(step, optimizer)
    return time.perf_counter() - t0, monitor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--sample", type=int, nargs="+", default=[512, 1797])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tol", type=float, default=None, help="[default: the monitor's]")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for sample in args.sample:
        plain, monitored, rows = [], [], None
        for _ in range(args.repeats):
            plain.append(train(args.steps, None, args.every)[0])
            seconds, monitor = train(args.steps, sample, args.every, args.tol)
            monitored.append(seconds)
            rows = monitor.rows
        base, with_monitor = statistics.median(plain), statistics.median(monitored)
        results[sample] = {
            "training_s": base, "with_monitor_s": with_monitor, "overhead": with_monitor / base - 1,
            "measurements": len(rows), "mean_lanczos_steps": statistics.mean(r.lanczos_steps for r in rows),
            "monitor_s": sum(r.seconds for r in rows), "products": sum(r.n_products for r in rows),
            "lambda_max_first_last": [rows[0].lambda_max, rows[-1].lambda_max],
            "all_converged": all(r.converged for r in rows)}
        print(f"curvature sample {sample}: training {base:.2f} s, with the monitor {with_monitor:.2f} s "
              f"(overhead {100 * results[sample]['overhead']:.1f}%), {len(rows)} measurements, "
              f"{results[sample]['mean_lanczos_steps']:.1f} Lanczos steps each", flush=True)
    print(json.dumps({"steps": args.steps, "every": args.every, "tol": args.tol, "torch": torch.__version__,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
