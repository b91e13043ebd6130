"""`hessian-probe track` on a full-batch GD run at a fixed rate: the edge of stability on digits
(issue 16 bar), and every row's lambda_max against a separate `hessian-probe eigs` on that file.

The built-in 64-32-10 tanh MLP trains on all 1,797 digits with MSE on one-hot targets (Cohen et
al. 2021 see the effect most cleanly with MSE) by full-batch torch.optim.SGD at --lr for --steps
steps, saving 10 checkpoints (with the optimizer state and the step). Then, from the shell as a
user would: `hessian-probe track` over them, and `hessian-probe eigs` (defaults: top-5) on each.
Prints the rows, the largest relative difference to eigs, and where lambda_max meets 2/eta.
Run: python benchmarks/edge_of_stability.py --out eos   (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits


def train(out: Path, lr: float, steps: int, checkpoints: int) -> Path:
    torch.manual_seed(0)
    x, y = load_digits(None, seed=0)
    targets = F.one_hot(y, 10).float()
    data = out / "digits_onehot.pt"
    torch.save({"inputs": x, "targets": targets}, data)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    every = steps // (checkpoints - 1)
    for step in range(steps + 1):
        if step % every == 0:
            torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict(),
                        "step": step}, out / f"checkpoint_{step:05d}.pt")
        optimizer.zero_grad()
        F.mse_loss(model(x), targets).backward()
        optimizer.step()
    return data


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "hessian_probe", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=4500)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    t0 = time.perf_counter()
    data = train(args.out, args.lr, args.steps, 10)
    trained = time.perf_counter() - t0
    problem = ["--model", "mlp", "--data", f"tensors:{data}", "--loss", "mse", "--quiet"]
    t0 = time.perf_counter()
    print(cli("track", str(args.out / "checkpoint_*.pt"), *problem, "--batch-size", "64", "--out",
              str(args.out / "track")))
    tracked = time.perf_counter() - t0
    rows = json.loads((args.out / "track" / "track.json").read_text())["rows"]
    differences = []
    for row in rows:
        eigs = json.loads(cli("eigs", "--checkpoint", row["name"], *problem, "--json", "--out",
                              str(args.out / f"eigs_{row['step']}")))
        differences.append(abs(row["lambda_max"] - eigs["top_eigenvalues"][0]) / abs(eigs["top_eigenvalues"][0]))
    line = 2 / args.lr
    reached = next((r["step"] for r in rows if r["lambda_max"] >= 0.95 * line), None)
    summary = {"lr": args.lr, "line_2_over_lr": line, "steps": args.steps, "training_s": trained, "track_s": tracked,
               "max_rel_diff_to_eigs": max(differences),
               "lambda_max": {r["step"]: r["lambda_max"] for r in rows},
               "loss": {r["step"]: r["loss"] for r in rows},
               "first_step_within_5pct_of_2_over_lr": reached,
               "torch": torch.__version__}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
