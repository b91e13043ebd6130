"""Files a run leaves for later use and reads back: a result to redraw (``plot``), eigenvectors
(``eigs --eigenvectors``), and lr's typed result (lr_state.pt, which validate-lr continues from).
Everything loads with ``weights_only=True``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, UsageError, first_line
from ..files import write_atomically
from ..results import from_state, to_state
from .names import LR_STATE
from .records import file_digest, read_json

PLOTTED = ("result.json", "lr.json", "track.json")  # what a folder may hold to redraw, in this order


def read_record(path: str | Path) -> dict[str, Any]:
    """A saved result (a result.json, or a folder holding one) that has an SLQ density to draw."""
    kind, record, where = read_plottable(path)
    if kind != "density":
        raise InputError(f"{where} has no spectral density to plot (written by `hessian-probe spectrum`?)")
    return record


def read_plottable(path: str | Path) -> tuple[str, dict[str, Any], Path]:
    """A saved result to redraw: ('density', a spectrum's record), ('lr', lr.json's) or ('track',
    track.json's), and the file it came from. A folder is read for result.json, lr.json or
    track.json, the first it holds."""
    path = Path(path)
    if path.is_dir():
        path = next((path / name for name in PLOTTED if (path / name).is_file()), path / "result.json")
    if not path.is_file():
        raise InputError(f"result file not found: {path}")
    try:
        record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        record = {}
    slq = record.get("slq")
    if isinstance(slq, dict) and {"nodes", "weights"} <= set(slq) and "operator" in record:
        _check_quadrature(slq, path)
        return "density", record, path
    if isinstance(record.get("rows"), list) and record["rows"] and "operator" in record:
        if isinstance(record.get("fit"), dict):
            return "lr", record, path
        if "order" in record:
            return "track", record, path
    raise InputError(f"{path} has no spectral density, learning rates or track to plot (written by "
                     "`hessian-probe spectrum`, `lr` or `track`?)")


MAX_PLOT_NODES = 1_000_000  # SLQ nodes a plot reads (probes x steps); a real run has thousands


def _check_quadrature(slq: Mapping[str, Any], path: Path) -> None:
    """SLQ nodes and weights as a plot needs them: lists of finite numbers of equal lengths, weights
    non-negative (Gauss weights are), a bounded count."""
    import numpy as np

    nodes, weights = slq["nodes"], slq["weights"]
    try:
        if len(nodes) != len(weights) or any(len(a) != len(b) for a, b in zip(nodes, weights)):
            raise ValueError("nodes and weights differ in shape")
        count = sum(len(a) for a in nodes)
        if count > MAX_PLOT_NODES:
            raise ValueError(f"{count:,} nodes, more than a plot reads ({MAX_PLOT_NODES:,})")
        flat_nodes = np.concatenate([np.asarray(a, dtype=float) for a in nodes]) if count else np.zeros(0)
        flat_weights = np.concatenate([np.asarray(a, dtype=float) for a in weights]) if count else np.zeros(0)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: its slq nodes and weights cannot be plotted ({first_line(exc)})") from None
    if not count or not (np.isfinite(flat_nodes).all() and np.isfinite(flat_weights).all()):
        raise InputError(f"{path}: its slq nodes and weights are empty or not finite; rerun `hessian-probe spectrum`")
    if (flat_weights < 0).any() or np.abs(flat_nodes).max() > 1e150:
        raise InputError(f"{path}: its slq weights are negative or its nodes beyond 1e150: not a Gauss quadrature "
                         "hessian-probe wrote; rerun `hessian-probe spectrum`")


def save_eigenvectors(result: Any, space: Any, path: Path) -> None:
    """Eigenvectors as rows (top: descending, bottom: ascending) plus the parameter layout, so
    ``space.unflatten`` can be undone by hand: names, shapes, and the eigenvalues they belong to.
    Loads with ``torch.load(path, weights_only=True)``."""
    state = {
        "top_eigenvalues": torch.as_tensor(result.top_eigenvalues),
        "top_eigenvectors": None if result.top_eigenvectors is None else result.top_eigenvectors.cpu(),
        "bottom_eigenvalues": torch.as_tensor(result.bottom_eigenvalues),
        "bottom_eigenvectors": None if result.bottom_eigenvectors is None else result.bottom_eigenvectors.cpu(),
        "parameter_names": list(space.names),
        "parameter_shapes": [list(shape) for shape in space.shapes],
    }
    write_atomically(path, lambda temporary: torch.save(state, temporary))


def save_learning_rates(result: Any, path: Path) -> dict[str, str]:
    """lr's typed result (tensors and plain values only) for validate-lr; returns lr.json's
    ``state_file`` entry (its name and digest)."""
    state = to_state(result.without_vectors())
    write_atomically(path, lambda temporary: torch.save(state, temporary))
    return {"name": path.name, "sha256": file_digest(path)}


def saved_learning_rates(out_dir: Path, header: Mapping[str, Any], checkpoint: Path, parameters: list[str]) -> Any:
    """The typed result of an earlier `lr` run in ``out_dir`` on the same checkpoint, data (``header``:
    operator, n_params, n_samples), parameters and operator (None when there is none)."""
    path = out_dir / "lr.json"
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        inputs = record["provenance"]["inputs"]
        state_file = record["state_file"]
        _ = record["rows"], record["fit"]  # an lr record has both
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not an lr.json written by this version of `hessian-probe lr`; rerun lr with "
                         "this --out, or choose another --out") from None
    then = {k: record.get(k) for k in header}
    same_checkpoint = inputs.get("checkpoint_sha256") == file_digest(checkpoint)
    if then != dict(header) or not same_checkpoint or record["provenance"].get("parameters") != parameters:
        raise UsageError(f"{path} was computed for another checkpoint, sample, parameters or operator; "
                         "rerun `hessian-probe lr` with this --out, or choose another --out")
    state_path = out_dir / LR_STATE
    if not state_path.is_file() or file_digest(state_path) != state_file.get("sha256"):
        raise UsageError(f"{state_path} is missing or is not the one {path} was written with; rerun "
                         "`hessian-probe lr` with this --out")
    try:
        return from_state(torch.load(state_path, weights_only=True))
    except Exception as exc:
        raise UsageError(f"{state_path} cannot be read ({first_line(exc)}); rerun `hessian-probe lr` with this --out") \
            from None
