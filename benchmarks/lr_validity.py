"""How right are `hessian-probe lr`'s learning rates? Predictions against real training runs.

Trains four checkpoints (no download): a digits MLP trained with momentum SGD, a digits CNN
trained with Adam (its state saved), a regression MLP with MSE loss on scikit-learn's bundled
diabetes data, and a digits MLP saved as a bare state dict (no optimizer state). For each, runs
``learning_rates`` (uncalibrated, then calibrated at B = 64) and ``validate_learning_rates`` at
B in {16, 64, 256, 1024 or N} for SGD, heavy ball and Adam: bisected blow-up and no-progress
thresholds, 3 seeds with a majority vote, 200 steps. Prints one table and the bar's three figures:

- measured blow-up / lr_recommended in [1.0, 2.0] at every point;
- uncalibrated best model (mean-square stability) within [0.67, 1.5] x of measured at >= 80%;
- calibrated (at B = 64) within +-25% everywhere.

    python benchmarks/lr_validity.py --out lr-validity          # about 25 min on 2 CPU cores
    python benchmarks/lr_validity.py --quick --out /tmp/quick   # toy sizes, a minute (the dry run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hessian_probe import make_problem
from hessian_probe.analysis.lr import Hyperparameters, calibrate, learning_rates
from hessian_probe.analysis.validate import TrainingRecipe, validate_learning_rates
from hessian_probe.loading.builtin_models import mlp, small_cnn
from hessian_probe.loading.datasets import load_digits
from hessian_probe.loading.optimizer import found_hyperparameters, read_optimizer_state, saved_adam_state
from hessian_probe.results import to_state

OPTIMIZERS = ("sgd", "momentum", "adam")


def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)[:, None]
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def train(model, x, y, loss, optimizer, steps: int, batch_size: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=generator)[:batch_size]
        optimizer.zero_grad()
        loss(model(x[idx]), y[idx]).backward()
        optimizer.step()


def checkpoints(steps: int, n_samples: int | None):
    """(name, model, (x, y), loss, optimizer state dict or None) for the four checkpoints."""
    digits, images = load_digits(n_samples, seed=0), load_digits(n_samples, seed=0, image=True)
    made = []
    torch.manual_seed(0)
    model = mlp(hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(model, *digits, F.cross_entropy, opt, steps, 64, 0)
    made.append(("mlp-momentum", model, digits, "cross_entropy", opt.state_dict()))
    torch.manual_seed(1)
    model = small_cnn(channels=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train(model, *images, F.cross_entropy, opt, steps, 64, 1)
    made.append(("cnn-adam", model, images, "cross_entropy", opt.state_dict()))
    torch.manual_seed(2)
    regression = diabetes()
    if n_samples:
        regression = tuple(t[:n_samples] for t in regression)
    model = mlp(in_features=10, hidden=(32, 32), out_features=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    train(model, *regression, F.mse_loss, opt, steps, 32, 2)
    made.append(("regression-mse", model, regression, "mse", opt.state_dict()))
    torch.manual_seed(3)
    model = mlp(hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, *digits, F.cross_entropy, opt, steps, 32, 3)
    made.append(("mlp-no-state", model, digits, "cross_entropy", None))
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="toy sizes: a dry run that checks the script")
    parser.add_argument("--criteria", default="blowup,no_progress")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    recipe = TrainingRecipe(steps=20 if quick else 200, seeds=3, precision=0.2 if quick else 0.05)
    criteria = tuple(args.criteria.split(","))
    calibration_size = 16 if quick else 64
    points, started = [], time.perf_counter()
    for name, model, data, loss, state in checkpoints(30 if quick else 1500, 120 if quick else None):
        problem = make_problem(model.eval(), data, loss, dtype=torch.float64, chunk_size=1024)
        n = problem.n_samples
        names = [p for p, _ in model.named_parameters()]
        info = read_optimizer_state(state, names)
        saved = saved_adam_state(info, problem)
        hp = Hyperparameters.resolve({}, found_hyperparameters(info))
        sizes = sorted({min(b, n) for b in ((16, 32, 64) if quick else (16, 64, 256, 1024))})
        grid = None if not quick else sorted({8, 16, 32, 64, n})
        t0 = time.perf_counter()
        result = learning_rates(problem, batch_sizes=grid, hyperparameters=hp, saved_state=saved, seed=0,
                                n_batches=3 if quick else 5, subspace=4 if quick else 8)
        scan_s = time.perf_counter() - t0
        validation = validate_learning_rates(problem, result, recipe, optimizers=OPTIMIZERS, batch_sizes=sizes,
                                             criteria=criteria, saved_state=saved, seed=0)
        calibrated = calibrate(problem, result, calibration_size, recipe, saved_state=saved, seed=0)
        cost = result.to_dict()["cost"]
        print(f"{name}: P = {problem.n_params}, N = {n}, Adam state {result.adam.source}, lr scan {scan_s:.1f} s, "
              f"validation {validation.wall_time_s:.1f} s; products {json.dumps(cost)}", flush=True)
        for t in validation.thresholds:
            best = result.best_model(t.optimizer)
            point = dict(checkpoint=name, optimizer=t.optimizer, batch_size=t.batch_size, criterion=t.criterion,
                         measured=t.measured_lr, predictions=t.predictions, best=t.predictions.get(best),
                         recommended=t.recommended_lr, calibrated=calibrated.calibrated(t.optimizer, t.batch_size),
                         recommended_calibrated=calibrated.recommended(t.optimizer, t.batch_size),
                         factor=calibrated.calibration.factors.get(t.optimizer), note=t.note)
            points.append(point)
            print("  " + row(point), flush=True)
        torch.save({"result": to_state(calibrated.without_vectors()), "validation": to_state(validation)},
                   args.out / f"{name}_state.pt")  # the typed results, for studying calibration rules offline
        (args.out / f"{name}.json").write_text(json.dumps({"lr": result.to_dict(), "points": [
            p for p in points if p["checkpoint"] == name]}, indent=1, default=str))
    summary = summarise(points)
    (args.out / "points.json").write_text(json.dumps({"points": points, "summary": summary}, indent=1, default=str))
    (args.out / "table.md").write_text(markdown(points))
    print(json.dumps(summary, indent=1))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def row(p: dict) -> str:
    def fmt(v: float | None) -> str:
        return f"{v:9.4g}" if v is not None else f"{'-':>9}"

    return (f"{p['optimizer']:9s} B={p['batch_size']:5d} {p['criterion']:11s} measured {fmt(p['measured'])} "
            f"best {fmt(p['best'])} (x{fmt(ratio(p['measured'], p['best']))}) recommended {fmt(p['recommended'])} "
            f"(x{fmt(ratio(p['measured'], p['recommended']))}) calibrated {fmt(p['calibrated'])} "
            f"(x{fmt(ratio(p['measured'], p['calibrated']))})")


def summarise(points: list[dict]) -> dict:
    blowup = [p for p in points if p["criterion"] == "blowup" and p["measured"] is not None]
    to_recommended = [ratio(p["measured"], p["recommended"]) for p in blowup]
    to_best = [ratio(p["measured"], p["best"]) for p in blowup]
    to_calibrated = [ratio(p["measured"], p["calibrated"]) for p in blowup]
    to_recommended_calibrated = [ratio(p["measured"], p["recommended_calibrated"]) for p in blowup]

    def share(values, lo, hi):
        known = [v for v in values if v is not None]
        return {"within": sum(lo <= v <= hi for v in known), "of": len(known),
                "min": min(known, default=None), "max": max(known, default=None)}

    return {"points": len(blowup),
            "measured_over_recommended_in_1_2": share(to_recommended, 1.0, 2.0),
            "best_model_within_0.67_1.5": share([1 / v if v else None for v in to_best], 0.67, 1.5),
            "calibrated_within_25pct": share(to_calibrated, 0.75, 1.25),
            "measured_over_recommended_calibrated_in_1_2": share(to_recommended_calibrated, 1.0, 2.0)}


def markdown(points: list[dict]) -> str:
    """One row per checkpoint, optimizer and B: measured thresholds and every prediction's ratio."""
    def fmt(v: float | None, spec: str = ".3g") -> str:
        return "-" if v is None else format(v, spec)

    lines = ["| checkpoint | optimizer | B | measured blow-up | measured no progress | fixed Hessian (ratio) | "
             "mean-square (ratio) | recommended (ratio) | calibrated at 64 (ratio) |", "|" + "---|" * 9]
    by_key = {(p["checkpoint"], p["optimizer"], p["batch_size"], p["criterion"]): p for p in points}
    for (name, opt, b, criterion), p in by_key.items():
        if criterion != "blowup":
            continue
        other = by_key.get((name, opt, b, "no_progress"), {})
        m = p["measured"]
        fixed = p["predictions"].get(opt)
        lines.append(f"| {name} | {opt} | {b} | {fmt(m)} | {fmt(other.get('measured'))} | {fmt(fixed)} "
                     f"({fmt(ratio(m, fixed), '.2f')}) | {fmt(p['best'])} ({fmt(ratio(m, p['best']), '.2f')}) | "
                     f"{fmt(p['recommended'])} ({fmt(ratio(m, p['recommended']), '.2f')}) | {fmt(p['calibrated'])} "
                     f"({fmt(ratio(m, p['calibrated']), '.2f')}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
