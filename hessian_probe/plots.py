"""Matplotlib views of results: spectral densities with eigenvalue markers.

Plots read the JSON form of a spectrum result (``SpectrumResult.to_dict()`` or a saved
``result.json``), so a fresh run and ``hessian-probe plot`` on saved files draw the same figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .files import save_figure
from .linalg import pool_probes, smoothed_density

COLOURS = {"hessian": "tab:blue", "ggn": "tab:orange", "fisher": "tab:green", "empirical-fisher": "tab:red"}
CYCLE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
LOG_FLOOR = 1e-7


# operators with no negative eigenvalues: no mass is ever drawn below 0
PSD_OPERATORS = ("ggn", "fisher", "empirical-fisher")
DEGENERATE_BULK = 1e-3  # a central-99% window narrower than this x the whole range carries no shape


def _axes(ax: Any, panels: int, figsize: tuple[float, float]) -> tuple[Figure, list[Any]]:
    """The figure and ``panels`` axes to draw on: a new Figure (no pyplot: the user's backend
    stays theirs), or the user's ``ax`` -- one Axes, or a sequence of ``panels`` of them."""
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        made = fig.subplots(1, panels)
        return fig, list(np.atleast_1d(made))
    given = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(given) != panels:
        raise ValueError(f"this figure has {panels} panel(s): pass ax= as {panels} Axes, got {len(given)}")
    return given[0].figure, given


def _record(result: Any) -> Mapping[str, Any]:
    """A record, or a typed result's (its ``to_dict()``): the plots take either."""
    return result.to_dict() if hasattr(result, "to_dict") else result


def plot_densities(
    results: Sequence[Any],
    paths: Sequence[Path] = (),
    title: str = "",
    labels: Sequence[str] | None = None,
    ax: Any = None,
) -> Figure:
    """Two panels. Left: the bulk on a linear scale (the central 99% of the spectral mass, kernel
    width 2% of that window), where most eigenvalues live. Right: the whole spectrum as
    log10(phi + 1e-7) with Ghorbani et al.'s narrow kernel, which shows outliers and edges.
    Extremal eigenvalues are marked with ticks along the bottom; the legend carries the trace.
    A positive semi-definite operator (the GGN) is drawn from 0 (a kernel would smear mass below
    it); when the central 99% sits in a window narrower than 1e-3 of the whole range (almost all
    weight at one point, e.g. zero), the bulk panel would show only the kernel and is left out.
    ``results``: records or SpectrumResults; the figure is saved to each of ``paths`` and returned
    (in a notebook it shows itself; no backend is chosen here). ``ax``: draw on your Axes instead
    -- two for both panels, or one for the whole spectrum alone."""
    results = [_record(r) for r in results]
    labels = list(labels) if labels else [r["operator"] for r in results]
    measures = [pool_probes(r["slq"]["nodes"], r["slq"]["weights"]) for r in results]
    full, width = _common_grid(measures, 4000)
    psd = all(r["operator"] in PSD_OPERATORS for r in results)
    if psd:
        full = full[full >= 0] if (full >= 0).sum() > 1 else full
    b_lo = min(_quantile(m, 0.005) for m in measures)
    b_hi = max(_quantile(m, 0.995) for m in measures)
    show_bulk = b_hi - b_lo > DEGENERATE_BULK * width
    b_width = max(b_hi - b_lo, 0.01 * width)
    bulk = np.linspace(max(b_lo - 0.1 * b_width, 0.0) if psd else b_lo - 0.1 * b_width, b_hi + 0.1 * b_width, 2000)
    same_kind = len({r["operator"] for r in results}) < len(results)
    if ax is not None and not isinstance(ax, (list, tuple, np.ndarray)):
        show_bulk = False  # one Axes: the whole spectrum
    if show_bulk:
        fig, (linear, log) = _axes(ax, 2, (12, 4.5))
    else:
        fig, (log,) = _axes(ax, 1, (7, 4.5))
        linear = None
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
        if linear is not None:
            smooth = smoothed_density(*measure, grid=bulk, variance=(0.02 * b_width) ** 2)
            linear.plot(bulk, smooth.values, color=colour, label=label_with_trace)
        narrow = smoothed_density(*measure, grid=full, variance=r["density"]["variance"])
        log.plot(full, np.log10(narrow.values + LOG_FLOOR), color=colour, label=label if linear is not None
                 else label_with_trace)
        marks = np.array(top + [v for v in r.get("bottom_eigenvalues", []) if v is not None])
        log.plot(marks, np.zeros_like(marks), "|", color=colour, markersize=14, markeredgewidth=2,
                 transform=log.get_xaxis_transform())
    log.set(xlabel="eigenvalue", ylabel="log10(density + 1e-7)",
            title="whole spectrum (log scale); ticks: extremal eigenvalues" if linear is not None else
            f"whole spectrum (log scale); 99% of the mass within [{b_lo:.2g}, {b_hi:.2g}], so no bulk panel")
    log.xaxis.set_major_locator(MaxNLocator(nbins=6))
    log.legend(loc="upper right", fontsize=9)
    if linear is not None:
        linear.set(xlabel="eigenvalue", ylabel="density", title="bulk: central 99% of the spectral mass (linear scale)")
        linear.set_ylim(bottom=0)
        linear.xaxis.set_major_locator(MaxNLocator(nbins=6))
        linear.legend(loc="upper right", fontsize=9)
    if title:
        fig.suptitle(title)
    for path in paths:
        save_figure(fig, path, dpi=120)
    return fig


def _common_grid(measures: Sequence[tuple[np.ndarray, np.ndarray]], points: int) -> tuple[np.ndarray, float]:
    """A grid over every measure's nodes, padded by 5% each side, and the nodes' range (1 if a point)."""
    lo = min(float(nodes.min()) for nodes, _ in measures)
    hi = max(float(nodes.max()) for nodes, _ in measures)
    width = hi - lo or 1.0
    return np.linspace(lo - 0.05 * width, hi + 0.05 * width, points), width


def _quantile(measure: tuple[np.ndarray, np.ndarray], q: float) -> float:
    """The q-quantile of a discrete measure (sorted nodes, weights summing to 1)."""
    nodes, weights = measure
    cdf = np.cumsum(weights) / weights.sum()
    return float(nodes[min(np.searchsorted(cdf, q), len(nodes) - 1)])


LR_STYLES = {"sgd": ("SGD", "tab:blue"), "momentum": ("heavy ball", "tab:orange"),
             "nesterov": ("Nesterov", "tab:green"), "adam": ("Adam", "tab:red")}


def plot_learning_rates(record: Any, path: Path | None = None, ax: Any = None) -> Figure:
    """Left: per optimizer, the recommended rate (solid), the mean-square threshold under batch noise
    (dashed) and the fixed-Hessian one (dotted) against B (log-log), with validate-lr's measured
    thresholds (stars: blow-up, triangles: no progress) and a square-root reference slope.
    Right: lambda'(B) (mean and spread over batches) with the fit lambda_inf + kappa x^p, the batch
    sharpness, and the full-sample lambda_max. ``record``: lr.json's record or a LearningRateResult;
    saved to ``path`` when given, and returned; ``ax``: two Axes of yours to draw on."""
    record = _record(record)
    rows = record["rows"]
    n = record["n_samples"]
    b = np.array([r["batch_size"] for r in rows], dtype=float)
    fit = record["fit"]
    fig, (left, right) = _axes(ax, 2, (13, 6.5))

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    for key, (label, colour) in LR_STYLES.items():
        for column, style, name in ((f"lr_recommended_{key}", "o-", "recommended"),
                                    (f"lr_max_{key}_mss", "--", "mean-square"),
                                    (f"lr_max_{key}", ":", "fixed Hessian")):
            values = series(column)
            if np.isfinite(values).any():
                left.plot(b, values, style, color=colour, lw=2 if name == "recommended" else 1,
                          label=f"{label}: {name}" + (" (calibrated)" if name == "recommended" and
                                                      record.get("calibration") else ""))
    anchor = next((r["lr_recommended_sgd"] for r in rows if r.get("lr_recommended_sgd")), None)
    if anchor:
        ref = np.array([b[0], b[-1]])
        left.plot(ref, anchor * np.sqrt(ref / b[0]), "-", color="lightgrey", lw=1, label="slope 1/2 (square root)")
    labelled = set()
    for v in (record.get("validation") or []) + (record.get("validation_no_progress") or []):  # validate-lr's
        if v.get("measured_lr") is None:
            continue
        label, colour = LR_STYLES.get(v["optimizer"], (v["optimizer"], "black"))
        criterion = v.get("criterion", "blowup")
        marker = "*" if criterion == "blowup" else "v"
        name = f"{label}: measured {'blow-up' if criterion == 'blowup' else 'no progress'}"
        left.plot(v["batch_size"], v["measured_lr"], marker, color=colour, markersize=13 if marker == "*" else 8,
                  markeredgecolor="black", label=None if name in labelled else name)
        labelled.add(name)
    critical = fit.get("critical_batch_size")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        if critical and b[0] <= critical <= n:
            axis.axvline(critical, color="black", alpha=0.4, lw=1)
    left.set_yscale("log")
    left.set(xlabel="batch size B", ylabel="learning rate",
             title=f"largest stable learning rates (safety x{record['hyperparameters']['safety']:g})")
    left.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    mean, std = series("lambda_max_mean"), series("lambda_max_std")
    right.errorbar(b, mean, yerr=std, fmt="o", color="tab:blue", capsize=3, label="λ'(B): mean ± std over batches")
    sharpness = series("batch_sharpness_mean")
    if np.isfinite(sharpness[:-1]).any():
        right.plot(b[:-1], sharpness[:-1], "s--", color="tab:purple", label="batch sharpness E[gᵀHg/|g|²]")
    if fit.get("converged"):
        grid = np.geomspace(b[0], n, 200)
        x = (n - grid) / (grid * (n - 1))
        curve = fit["lambda_inf"] + fit["kappa"] * x ** fit["p"]
        right.plot(grid, curve, color="tab:orange",
                   label=f"fit λ∞ + κ x^p: λ∞ = {fit['lambda_inf']:.3g}, κ = {fit['kappa']:.3g}, p = {fit['p']:.2f}")
    right.axhline(record["full_sample"]["lambda_max"], color="grey", ls="--",
                  label=f"full sample λmax = {record['full_sample']['lambda_max']:.4g}")
    right.set(xlabel="batch size B", ylabel="curvature of the batch operator",
              title=f"{record['operator']} sharpness vs batch size" +
                    (f" (critical B ≈ {critical:.0f})" if critical else ""))
    right.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below: clear of the points
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig


def plot_batch_spectra(record: Mapping[str, Any], path: Path | None = None, ax: Any = None) -> Figure:
    """log10 densities of one batch operator per batch size, overlaid (the full sample in black);
    saved to ``path`` when given, and returned; ``ax``: an Axes of yours to draw on."""
    curves = sorted(record["densities"], key=lambda d: d["batch_size"])
    measures = [pool_probes(d["slq"]["nodes"], d["slq"]["weights"]) for d in curves]
    grid, width = _common_grid(measures, 3000)
    fig, (axis,) = _axes(ax, 1, (8, 4.5))
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, len(curves)))
    for d, measure, colour in zip(curves, measures, colours):
        full = d["batch_size"] == record["n_samples"]
        density = smoothed_density(*measure, grid=grid, variance=(0.005 * width) ** 2)
        axis.plot(grid, np.log10(density.values + LOG_FLOOR), color="black" if full else colour,
                  lw=2 if full else 1,
                  label=f"full sample (N = {d['batch_size']})" if full else f"B = {d['batch_size']}")
    axis.set(xlabel="eigenvalue", ylabel="log10(density + 1e-7)",
             title=f"{record['operator']} spectrum of one batch per batch size")
    axis.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig


def plot_track(record: Any, path: Path | None = None, ax: Any = None) -> Figure:
    """Sharpness against training step: lambda_max (with the batch's lambda_max and batch sharpness
    when measured) and each checkpoint's stability lines 2/eta and 2(1 + rho)/eta (dashed); on a
    second panel, when any checkpoint is Adam's, the preconditioned sharpness against
    (2 + 2 beta1)/((1 - beta1) eta): the edge-of-stability picture. ``record``: track.json's record
    or a TrackResult; saved to ``path`` when given, and returned; ``ax``: your Axes (two when a
    checkpoint is Adam's)."""
    record = _record(record)
    rows = record["rows"]
    by_step = record.get("order") == "step"
    x = np.array([r["step"] if by_step else i for i, r in enumerate(rows)], dtype=float)

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)

    adam = np.isfinite(series("adam_sharpness")).any()
    fig, axes = _axes(ax, 2 if adam else 1, (12 if adam else 7.5, 4.8))
    left = axes[0]
    operator = record["operator"]
    for key, style, colour, label in (("lambda_max", "o-", "tab:blue", f"λmax ({operator}, full sample)"),
                                      ("batch_lambda_max", "s-", "tab:cyan", "λmax of one batch"),
                                      ("batch_sharpness", "^-", "tab:purple", "batch sharpness gᵀHg/|g|²"),
                                      ("line_sgd", "--", "tab:red", "2/η"),
                                      ("line_momentum", "--", "tab:orange", "2(1+ρ)/η")):
        values = series(key)
        if np.isfinite(values).any():
            left.plot(x, values, style, color=colour, lw=1.5, markersize=4, label=label)
    left.set_yscale("log")
    left.set(xlabel="training step" if by_step else "checkpoint", ylabel="curvature",
             title="sharpness over training")
    left.legend(fontsize=8)
    if adam:
        right = axes[1]
        right.plot(x, series("adam_sharpness"), "o-", color="tab:green", label="λ1(D⁻¹ᐟ²HD⁻¹ᐟ²) (Adam)")
        right.plot(x, series("line_adam"), "--", color="tab:red", label="(2+2β1)/((1-β1)η)")
        right.set_yscale("log")
        right.set(xlabel="training step" if by_step else "checkpoint", ylabel="preconditioned curvature",
                  title="Adam's preconditioned sharpness")
        right.legend(fontsize=8)
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig
