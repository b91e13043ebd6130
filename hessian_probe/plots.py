"""Matplotlib views of results: spectral densities with eigenvalue markers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis.spectrum import SpectrumResult  # noqa: E402
from .linalg import smoothed_density  # noqa: E402

COLOURS = {"hessian": "tab:blue", "ggn": "tab:orange"}


def plot_densities(results: Sequence[SpectrumResult], paths: Sequence[Path], title: str = "") -> None:
    """Two panels: the density on a linear scale (kernel width 1% of the range, readable) and
    log10(phi + 1e-7) with Ghorbani et al.'s narrow kernel, which shows outliers and the bulk edge.
    Extremal eigenvalues are marked with ticks along the bottom."""
    measures = [r.slq.pooled() for r in results]
    lo = min(float(nodes.min()) for nodes, _ in measures)
    hi = max(float(nodes.max()) for nodes, _ in measures)
    pad = 0.05 * (hi - lo or 1.0)
    grid = np.linspace(lo - pad, hi + pad, 4000)
    fig, (linear, log) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for r, measure in zip(results, measures):
        colour = COLOURS.get(r.operator, None)
        label = f"{r.operator}  (tr = {r.trace.estimate:.3g} ± {r.trace.stderr or 0:.2g})"
        wide = smoothed_density(*measure, grid=grid, variance=(0.01 * (hi - lo or 1.0)) ** 2)
        linear.plot(grid, wide.values, color=colour, label=label)
        narrow = smoothed_density(*measure, grid=grid, variance=r.density.variance)
        log.plot(grid, np.log10(narrow.values + 1e-7), color=colour, label=r.operator)
        for axis in (linear, log):
            marks = np.concatenate([r.eigs.top_eigenvalues, r.eigs.bottom_eigenvalues])
            axis.plot(marks, np.zeros_like(marks), "|", color=colour, markersize=14, markeredgewidth=2,
                      transform=axis.get_xaxis_transform())
    linear.set(xlabel="eigenvalue", ylabel="density", title="spectral density (smoothed)")
    log.set(xlabel="eigenvalue", ylabel="log10(density + 1e-7)", title="log density: outliers and edges")
    linear.set_ylim(bottom=0)
    linear.legend(loc="upper right", fontsize=9)
    log.legend(loc="upper right", fontsize=9)
    if title:
        fig.suptitle(title)
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
