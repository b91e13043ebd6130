# %% [markdown]
# # hessian-probe from a notebook
# Cells separated by `# %%` (VS Code, Jupyter's jupytext, or `python examples/notebook.py`).
# Every analysis is one library call returning a typed result; plots take it and return a
# matplotlib Figure (no backend is chosen for you; pass `ax=` to draw on your own axes).

# %%
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hessian_probe import curvature_operator, extremal_eigs, make_problem, spectrum
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.plots import plot_densities

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("notebook-out")
out.mkdir(parents=True, exist_ok=True)

# %% Train a small network for a few steps (stands in for your model)
torch.manual_seed(0)
x, y = load_digits(512)
model = mlp(hidden=32)
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(100):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

# %% Top eigenvalues of the Hessian, with residuals
problem = make_problem(model, (x, y), "cross_entropy", dtype=torch.float64)
hessian = curvature_operator(problem, "hessian")
eigs = extremal_eigs(hessian, top_k=3, tol=1e-8)
print("top eigenvalues", eigs.top_eigenvalues, "residuals", eigs.top_residuals, "converged", eigs.converged)

# %% The spectral density of the Hessian and the GGN, on axes of our own
from matplotlib.figure import Figure  # noqa: E402

results = [spectrum(curvature_operator(problem, name), n_probes=4, n_steps=40) for name in ("hessian", "ggn")]
figure = Figure(figsize=(12, 4.5), layout="constrained")
plot_densities(results, ax=figure.subplots(1, 2), labels=["Hessian", "GGN"])
figure.savefig(out / "density.png", dpi=100)
trace = results[0].trace
print(f"trace of the Hessian {trace.estimate:.4g} ± {trace.stderr:.2g}; wrote {out / 'density.png'}")
