"""Curvature over training, end to end, on the digits CNN (issue 16):

1. train the CNN with torch.optim.SGD whose learning rate the curvature learner sets every 100
   steps (the seed authors' rule 2/(lambda_max + mu) from 20 Lanczos steps on 256 examples,
   times 0.5, its growth capped at 2x per update), with the sharpness monitor logging lambda_max
   every 50 steps to sharpness.csv, and save --checkpoints checkpoints (weights, optimizer state,
   step) evenly over the run;
2. run `hessian-probe track` over the saved checkpoints, as from the shell;
3. draw monitor.png: the monitor's lambda_max, 2/eta of the learner's rate, and the rate itself.

    python examples/curvature_over_training.py --out runs/cnn      (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hessian_probe.loading.builtin_models import small_cnn
from hessian_probe.loading.datasets import load_digits
from hessian_probe.training import CurvatureLearner, SharpnessMonitor


def train(out: Path, steps: int, checkpoints: int, batch_size: int = 64) -> tuple[SharpnessMonitor, CurvatureLearner]:
    x, y = load_digits(None, seed=0, image=True)
    torch.manual_seed(0)
    model = small_cnn(channels=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:256]
    learner = CurvatureLearner(model, F.cross_entropy, (x[pick], y[pick]), optimizer, every=100, safety=0.5,
                               max_growth=2.0)
    monitor = SharpnessMonitor(model, F.cross_entropy, (x[:512], y[:512]), every=50,
                               csv_path=out / "sharpness.csv", overwrite=True)
    order = torch.Generator().manual_seed(2)
    save_every = max(1, steps // (checkpoints - 1))
    for step in range(steps + 1):
        learner.step(step)
        if step % save_every == 0:
            torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                        "step": step}, out / f"checkpoint_{step:05d}.pt")
        idx = torch.randint(len(x), (batch_size,), generator=order)
        optimizer.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        optimizer.step()
        monitor.step(step, optimizer)
    return monitor, learner


def plot_monitor(out: Path) -> None:
    from matplotlib.figure import Figure

    with (out / "sharpness.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    step = [int(r["step"]) for r in rows]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    axis = fig.subplots()
    axis.plot(step, [float(r["lambda_max"]) for r in rows], "o-", label="λmax (monitor, 512 examples)")
    axis.plot(step, [float(r["line_sgd"]) for r in rows], "--", color="tab:red", label="2/η (the learner's η)")
    axis.set(xlabel="training step", ylabel="curvature", yscale="log", title="digits CNN, SGD set by the learner")
    rate = axis.twinx()
    rate.plot(step, [float(r["lr"]) for r in rows], ":", color="grey", label="η")
    rate.set_ylabel("learning rate η")
    lines = axis.get_lines() + rate.get_lines()
    axis.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="lower right")
    fig.savefig(out / "monitor.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/cnn"))
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--checkpoints", type=int, default=9)
    parser.add_argument("--track-samples", type=int, default=None, help="track on a subset [default: all 1,797]")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    monitor, learner = train(args.out, args.steps, max(2, args.checkpoints))
    print(f"trained {args.steps} steps; the learner set the rate {len(learner.history)} times "
          f"({learner.n_products} products), the monitor measured {len(monitor.rows)} times "
          f"({monitor.n_products} products, {monitor.seconds:.2f} s)")
    track = [sys.executable, "-m", "hessian_probe", "track", str(args.out / "checkpoint_*.pt"), "--model", "cnn",
             "--model-arg", "channels=8", "--data", "digits:image", "--batch-size", "64", "--trace-products", "30",
             "--quiet", "--overwrite", "--out", str(args.out / "track")]
    if args.track_samples:
        track += ["--samples", str(args.track_samples)]
    subprocess.run(track, check=True)
    plot_monitor(args.out)
    print(f"wrote {args.out / 'track'}/track.png and {args.out}/monitor.png")


if __name__ == "__main__":
    main()
