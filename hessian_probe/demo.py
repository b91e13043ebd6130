"""The built-in demo: train a small MLP on the bundled digits, save it, and measure its curvature."""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import __version__
from .analysis import SpectrumResult, spectrum
from .loading.builtin_models import mlp
from .loading.datasets import load_digits
from .operators import curvature_operator
from .plots import plot_densities
from .problem import make_problem


def train_digits_mlp(seed: int, steps: int = 60) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-32-10 tanh MLP trained with full-batch Adam on all 1,797 digits."""
    torch.manual_seed(seed)
    x, y = load_digits()
    model = mlp(hidden=32)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval(), x, y


def write_eigenvalues_csv(results: list[SpectrumResult], path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["operator", "end", "rank", "eigenvalue", "residual", "converged"])
        for r in results:
            for end, values, residuals, flags in (
                ("top", r.eigs.top_eigenvalues, r.eigs.top_residuals, r.eigs.top_converged),
                ("bottom", r.eigs.bottom_eigenvalues, r.eigs.bottom_residuals, r.eigs.bottom_converged),
            ):
                for rank, (v, res, ok) in enumerate(zip(values, residuals, flags), start=1):
                    writer.writerow([r.operator, end, rank, repr(float(v)), repr(float(res)), bool(ok)])


def run_demo(out_dir: Path, *, seed: int = 0) -> dict[str, Any]:
    """Train, save the checkpoint, run the spectrum of Hessian and GGN, write JSON, CSV and plots."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, x, y = train_digits_mlp(seed)
    torch.save({"model_state_dict": model.state_dict()}, out_dir / "checkpoint.pt")
    problem = make_problem(model, (x, y), "cross_entropy", dtype=torch.float64)
    results = [spectrum(curvature_operator(problem, kind), seed=seed) for kind in ("hessian", "ggn")]
    record = {
        "version": __version__,
        "command": "demo",
        "model": "builtin mlp 64-32-10 tanh, Adam 60 full-batch steps",
        "data": "digits (scikit-learn, 1797 examples)",
        "loss": "cross_entropy",
        "loss_value": problem.loss_value(),
        "mode": "eval",
        "device": str(problem.device),
        "dtype": str(problem.dtype).removeprefix("torch."),
        "seed": seed,
        "torch": torch.__version__,
        "platform": platform.platform(),
        "results": [r.to_dict() for r in results],
    }
    plot_densities(results, [out_dir / "density.png", out_dir / "density.pdf"],
                   title=f"digits MLP, P = {problem.n_params}, N = {problem.n_samples}")
    write_eigenvalues_csv(results, out_dir / "eigenvalues.csv")
    record["wall_time_s"] = time.perf_counter() - started
    (out_dir / "result.json").write_text(json.dumps(record, indent=1, allow_nan=False))
    return record


def summary(record: dict[str, Any], out_dir: Path) -> str:
    lines = [f"hessian-probe demo: {record['model']} on {record['data']}, loss {record['loss_value']:.4f}"]
    for r in record["results"]:
        top = ", ".join(f"{v:.4g}" for v in r["top_eigenvalues"])
        bottom = ", ".join(f"{v:.3g}" for v in r["bottom_eigenvalues"])
        converged = ", ".join(
            f"{end} {'converged' if all(r['eigs'][end + '_converged']) else 'NOT converged'}" for end in ("top", "bottom")
        )
        lines.append(
            f"  {r['operator']:8s} P={r['n_params']}  top: {top}  bottom: {bottom}  ({converged})"
            f"  trace {r['trace']['estimate']:.4g} ± {r['trace']['stderr']:.2g}"
        )
        lines += [f"    warning: {w}" for w in r["warnings"]]
    lines.append(f"  wrote result.json, eigenvalues.csv, density.png, density.pdf, checkpoint.pt to {out_dir}/ "
                 f"in {record['wall_time_s']:.1f} s")
    return "\n".join(lines)
