"""lr.png (the figure of `hessian-probe lr`, with validate-lr's measured points): no legend hides
a plotted point."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection

from hessian_probe.plots import plot_learning_rates

N = 4096
# lambda'(B) and the batch sharpness for B = 2 ... 2048 of a model whose sharpness barely depends on B:
# the means scatter about the full-sample lambda_max (300) across the whole right panel, leaving no
# place inside it where a legend covers no marker
MEANS = [301.6, 286.2, 303.1, 300.0, 306.4, 311.4, 320.8, 295.3, 312.5, 290.5, 289.3]
SHARPNESS = [219.0, 204.7, 234.5, 231.6, 239.7, 231.6, 241.5, 214.8, 222.0, 220.2, 217.7]


def _lr_record() -> dict[str, Any]:
    """lr.json's record (the keys the figure reads) for B = 2 ... 2048 and N: the statistics, SGD's
    thresholds, the fit, and validate-lr's measured blow-up and no-progress rates at two sizes."""
    rows = [dict(batch_size=b, lambda_max_mean=mean, lambda_max_std=0.15 * mean, batch_sharpness_mean=sharpness)
            for b, mean, sharpness in zip([2**k for k in range(1, 12)], MEANS, SHARPNESS)]
    rows.append(dict(batch_size=N, lambda_max_mean=300.0, lambda_max_std=0.0, batch_sharpness_mean=None))
    for r in rows:
        mean_square = (1 + r["batch_size"] / N) / r["lambda_max_mean"]
        r.update(lr_max_sgd=2 / r["lambda_max_mean"], lr_max_sgd_mss=mean_square, lr_recommended_sgd=0.6 * mean_square)
    measured = {criterion: [dict(optimizer="sgd", batch_size=rows[i]["batch_size"], criterion=criterion,
                                 measured_lr=factor * rows[i]["lr_max_sgd_mss"]) for i in (5, 9)]
                for criterion, factor in (("blowup", 1.3), ("no_progress", 0.9))}
    return dict(operator="hessian", n_samples=N, rows=rows, calibration=None, hyperparameters=dict(safety=1.0),
                full_sample=dict(lambda_max=300.0), validation=measured["blowup"],
                validation_no_progress=measured["no_progress"],
                fit=dict(converged=True, lambda_inf=300.0, kappa=28.3, p=0.73, critical_batch_size=None))


def _points(ax: Axes) -> tuple[np.ndarray, np.ndarray]:
    """Display coordinates of every point drawn inside ``ax`` (each line's vertices, each collection's
    offsets) and the radius of its marker in pixels (0 without one)."""
    pixels = ax.figure.dpi / 72
    points, radii = [], []
    for line in ax.lines:
        marked = line.get_marker() not in (None, "", " ", "None")
        points.append(line.get_transform().transform(line.get_xydata()))
        radii.append(np.full(len(points[-1]), line.get_markersize() / 2 * pixels if marked else 0.0))
    for collection in ax.collections:  # a scatter's markers: their sizes are areas in points^2
        sizes = collection.get_sizes() if isinstance(collection, PathCollection) else []
        points.append(collection.get_offset_transform().transform(collection.get_offsets()))
        radii.append(np.resize(np.sqrt(sizes) / 2 * pixels if len(sizes) else 0.0, len(points[-1])))
    xy, radius = np.concatenate(points), np.concatenate(radii)
    x, y = xy.T
    inside = (ax.bbox.x0 <= x) & (x <= ax.bbox.x1) & (ax.bbox.y0 <= y) & (y <= ax.bbox.y1)
    return xy[inside], radius[inside]


def test_no_legend_of_the_lr_figure_covers_a_plotted_point() -> None:
    """Every legend of lr.png lies clear of every point (and its marker) plotted on any of its panels."""
    fig = plot_learning_rates(_lr_record())
    FigureCanvasAgg(fig)  # a canvas that renders: the plots make a bare Figure, no pyplot
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2  # one per panel
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            points, radii = _points(ax)
            assert len(points)
            (x, y), r = points.T, radii
            hidden = points[(box.x0 - r <= x) & (x <= box.x1 + r) & (box.y0 - r <= y) & (y <= box.y1 + r)]
            assert not len(hidden), f"the legend {box} hides {len(hidden)} point(s) of '{ax.get_title()}': {hidden}"
