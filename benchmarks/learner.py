"""The seed authors' curvature learner against a constant-rate grid (issue 16 bar).

Two workloads from initialisation: the digits MLP (64-32-10 tanh) and the digits CNN (two 3x3
convolutions, 8 channels), 2,000 steps of torch.optim.SGD on seeded mini-batches of 64 (the same
batch order in every run), cross-entropy. The grid: 7 constant rates a factor of 2 apart
(--grid-centre x 2^-3 .. 2^3), plain SGD. The learner (hessian_probe.training.CurvatureLearner):
every 100 steps, 20 Lanczos steps of the Hessian on a fixed subset of 256 examples set the rate
(SGD mode: 2/(lambda_max + mu)) or the rate and momentum (heavy-ball mode), times a safety
factor (1: the seed authors' rule; 0.5, 0.25), with or without a cap on the rate's growth per
update (max_growth; the run starts from lr 0.1), with or without the batch-noise correction at the
training batch size (8 noise batches per estimate). Reported: each run's
final full-sample training loss, the learner's lr / momentum trajectory, and its cost as wall time
over one plain run's (curvature products included). Bar: learner loss within 10% of the grid's
best, cost under 1.5 runs (the grid costs 7).
Run: python benchmarks/learner.py   (about 2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from hessian_probe.loading.builtin_models import mlp, small_cnn
from hessian_probe.loading.datasets import load_digits
from hessian_probe.training import CurvatureLearner

LEARNERS = (("sgd", 1.0, None, False), ("sgd", 0.5, None, False), ("sgd", 0.5, 2.0, False), ("sgd", 1.0, 2.0, False),
            ("heavy-ball", 0.5, None, False), ("heavy-ball", 0.25, 2.0, False), ("sgd", 1.0, None, True),
            ("sgd", 0.5, 2.0, True), ("heavy-ball", 0.5, 2.0, True))
# (mode, safety, max_growth, batch-noise correction at the training batch size): the seed authors' rule is
# ("sgd", 1.0, None, False)
WORKLOADS = {"digits-mlp": (lambda: mlp(), False), "digits-cnn": (lambda: small_cnn(channels=8), True)}


def run(workload: str, steps: int, batch_size: int, lr: float | None, mode: str | None, every: int,
        subset: int, safety: float = 1.0, max_growth: float | None = None, noise: bool = False) -> dict:
    build, image = WORKLOADS[workload]
    x, y = load_digits(None, seed=0, image=image)
    torch.manual_seed(0)
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr or 0.1)  # a learner's first rate grows from 0.1
    learner = None
    if mode is not None:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:subset]
        learner = CurvatureLearner(model, F.cross_entropy, (x[pick], y[pick]), optimizer, every=every,
                                   heavy_ball=mode == "heavy-ball", safety=safety, max_growth=max_growth,
                                   batch_size=batch_size if noise else None)
    order = torch.Generator().manual_seed(2)
    t0 = time.perf_counter()
    for step in range(steps):
        if learner is not None:
            learner.step(step)
        idx = torch.randint(len(x), (batch_size,), generator=order)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            break
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        final = float(F.cross_entropy(model(x), y))
    out = {"final_loss": final if final == final else None, "seconds": seconds}
    if learner is not None:
        out.update(products=learner.n_products, learner_seconds=learner.seconds, skipped=learner.skipped[:3],
                   trajectory=[{"step": s, "lr": lr, "momentum": momentum, "rule_lr": (
                       g.heavy_ball_lr if mode == "heavy-ball" else g.sgd_lr), "lambda_max": g.lambda_max, "mu": g.mu,
                       "noise_rule_lr": g.noise_heavy_ball_lr if mode == "heavy-ball" else g.noise_sgd_lr}
                       for (s, g), (_, lr, momentum) in zip(learner.history, learner.applied)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--subset", type=int, default=256)
    parser.add_argument("--grid-centre", type=float, default=0.5)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"torch": torch.__version__, "steps": args.steps, "batch_size": args.batch_size, "every": args.every,
              "subset": args.subset, "workloads": {}}
    for workload in args.workloads:
        grid = [args.grid_centre * 2.0 ** k for k in range(-3, 4)]
        runs = {f"{lr:g}": run(workload, args.steps, args.batch_size, lr, None, args.every, args.subset) for lr in grid}
        finite = {k: v for k, v in runs.items() if v["final_loss"] is not None}
        best = min(finite, key=lambda k: finite[k]["final_loss"])
        plain_seconds = sum(v["seconds"] for v in runs.values()) / len(runs)
        edges = (f"{grid[0]:g}", f"{grid[-1]:g}")
        entry = {"grid": {k: v["final_loss"] for k, v in runs.items()}, "best_lr": float(best),
                 "best_loss": finite[best]["final_loss"], "best_at_grid_edge": best in edges,
                 "plain_run_s": plain_seconds}
        for mode, safety, growth, noise in LEARNERS:
            learned = run(workload, args.steps, args.batch_size, None, mode, args.every, args.subset, safety, growth,
                          noise)
            name = f"{mode} x{safety:g}" + (f" growth<={growth:g}" if growth else "") + (" noise" if noise else "")
            entry[name] = {**learned, "loss_over_best": (learned["final_loss"] / entry["best_loss"]
                                                         if learned["final_loss"] is not None else None),
                           "cost_in_runs": learned["seconds"] / plain_seconds}
            shown = "diverged" if learned["final_loss"] is None else f"{learned['final_loss']:.4g}"
            print(f"{workload} learner {name}: loss {shown} vs best constant {entry['best_loss']:.4g} "
                  f"(lr {best}); cost {entry[name]['cost_in_runs']:.2f} runs", flush=True)
        report["workloads"][workload] = entry
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
