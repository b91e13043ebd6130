"""Matplotlib views of results: spectral densities with eigenvalue markers.

Plots read the JSON form of a spectrum result (``SpectrumResult.to_dict()`` or a saved
``result.json``), so a fresh run and ``hessian-probe plot`` on saved files draw the same figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .linalg import pool_probes, smoothed_density  # noqa: E402

COLOURS = {"hessian": "tab:blue", "ggn": "tab:orange"}
CYCLE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
LOG_FLOOR = 1e-7


def plot_densities(
    results: Sequence[Mapping[str, Any]],
    paths: Sequence[Path],
    title: str = "",
    labels: Sequence[str] | None = None,
) -> None:
    """Two panels. Left: the bulk on a linear scale (the central 99% of the spectral mass, kernel
    width 2% of that window), where most eigenvalues live. Right: the whole spectrum as
    log10(phi + 1e-7) with Ghorbani et al.'s narrow kernel, which shows outliers and edges.
    Extremal eigenvalues are marked with ticks along the bottom; the legend carries the trace."""
    labels = list(labels) if labels else [r["operator"] for r in results]
    measures = [pool_probes(r["slq"]["nodes"], r["slq"]["weights"]) for r in results]
    lo = min(float(nodes.min()) for nodes, _ in measures)
    hi = max(float(nodes.max()) for nodes, _ in measures)
    width = hi - lo or 1.0
    full = np.linspace(lo - 0.05 * width, hi + 0.05 * width, 4000)
    b_lo = min(_quantile(m, 0.005) for m in measures)
    b_hi = max(_quantile(m, 0.995) for m in measures)
    b_width = max(b_hi - b_lo, 0.01 * width)
    bulk = np.linspace(b_lo - 0.1 * b_width, b_hi + 0.1 * b_width, 2000)
    same_kind = len({r["operator"] for r in results}) < len(results)
    fig, (linear, log) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for i, (r, measure, label) in enumerate(zip(results, measures, labels)):
        colour = CYCLE[i % len(CYCLE)] if same_kind else COLOURS.get(r["operator"], CYCLE[i % len(CYCLE)])
        trace = r.get("trace") or {}
        if trace.get("estimate") is not None:
            label_with_trace = f"{label}  (tr = {trace['estimate']:.3g} ± {trace.get('stderr') or 0:.2g})"
        else:
            label_with_trace = label
        top = [v for v in r.get("top_eigenvalues", []) if v is not None]
        if top:
            label_with_trace += f", λmax = {top[0]:.4g}"
        smooth = smoothed_density(*measure, grid=bulk, variance=(0.02 * b_width) ** 2)
        linear.plot(bulk, smooth.values, color=colour, label=label_with_trace)
        narrow = smoothed_density(*measure, grid=full, variance=r["density"]["variance"])
        log.plot(full, np.log10(narrow.values + LOG_FLOOR), color=colour, label=label)
        marks = np.array(top + [v for v in r.get("bottom_eigenvalues", []) if v is not None])
        log.plot(marks, np.zeros_like(marks), "|", color=colour, markersize=14, markeredgewidth=2,
                 transform=log.get_xaxis_transform())
    linear.set(xlabel="eigenvalue", ylabel="density",
               title="bulk: central 99% of the spectral mass (linear scale)")
    log.set(xlabel="eigenvalue", ylabel="log10(density + 1e-7)",
            title="whole spectrum (log scale); ticks: extremal eigenvalues")
    linear.set_ylim(bottom=0)
    linear.legend(loc="upper right", fontsize=9)
    log.legend(loc="upper right", fontsize=9)
    if title:
        fig.suptitle(title)
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)


def _quantile(measure: tuple[np.ndarray, np.ndarray], q: float) -> float:
    """The q-quantile of a discrete measure (sorted nodes, weights summing to 1)."""
    nodes, weights = measure
    cdf = np.cumsum(weights) / weights.sum()
    return float(nodes[min(np.searchsorted(cdf, q), len(nodes) - 1)])
