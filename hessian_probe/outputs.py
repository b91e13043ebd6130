"""What a run leaves behind: result.json with provenance, eigenvalues.csv, density plots, a summary.

A record is the JSON form of a library result (public keys ``operator``, ``n_params``,
``n_samples``, ``top_eigenvalues``, ``bottom_eigenvalues``, ``trace``, ``slq``, ``density``, ...)
plus a ``provenance`` block saying exactly how it was produced.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import InputError, first_line
from .files import write_atomically, write_text_atomically
from .plots import plot_densities
from .results import to_jsonable
from .runtime import torchrun as distributed


def file_digest(path: str | Path) -> str:
    """sha256 of a file, to tie a result to the exact checkpoint it came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def environment() -> dict[str, Any]:
    """Versions, platform, start time and, when run from the shell, the command line."""
    from_shell = Path(sys.argv[0]).name in ("hessian-probe", "__main__.py")
    return {
        "version": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": ["hessian-probe", *sys.argv[1:]] if from_shell else None,
    }


def input_digests(spec: Any) -> dict[str, str | None]:
    """sha256 of the checkpoint and of the data file (None for built-in or factory data)."""
    data_file = Path(spec.data.removeprefix("tensors:"))
    return {"checkpoint_sha256": file_digest(spec.checkpoint),
            "data_sha256": file_digest(data_file) if data_file.is_file() else None}


def provenance(env: dict[str, Any], command: str, config: Any, spec: Any, loaded: Any,
               timings: dict[str, float], digests: dict[str, str | None] | None = None) -> dict[str, Any]:
    """How a record was made: environment, command or config, every input (with file digests),
    device, dtype, seed, the parameters measured, and timings."""
    problem = loaded.problem
    return {
        **env,
        "command": command,
        "config": config,
        "inputs": {
            **dataclasses.asdict(spec),
            **(digests or input_digests(spec)),
            "weights_found_under": loaded.checkpoint.found_under,
            "optimizer_state": loaded.checkpoint.optimizer_state is not None,
            "loss_value": problem.loss_value(),
        },
        "device": str(problem.device),
        "processes": distributed.describe(),
        "dtype": str(problem.dtype).removeprefix("torch."),
        "seed": spec.seed,
        "parameters": list(problem.params),
        "timings": timings,
    }


def write_json(record: Mapping[str, Any], path: Path) -> None:
    write_text_atomically(path, json.dumps(to_jsonable(record), indent=1, allow_nan=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_eigenvalues_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One row per eigenvalue: operator, end (top/bottom), rank, eigenvalue, residual, converged."""
    table = [["operator", "end", "rank", "eigenvalue", "residual", "converged"]]
    for r in records:
        eigs = r["eigs"]
        for end in ("top", "bottom"):
            rows = zip(eigs[f"{end}_eigenvalues"], eigs[f"{end}_residuals"], eigs[f"{end}_converged"])
            table += [[r["operator"], end, rank, value, residual, converged]
                      for rank, (value, residual, converged) in enumerate(rows, start=1)]
    _write_csv(table, path)


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """One row per mapping, the given columns in order (missing values left empty)."""
    _write_csv([list(columns), *(["" if row.get(c) is None else row.get(c) for c in columns] for row in rows)], path)


def _write_csv(table: Sequence[Sequence[Any]], path: Path) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as fh:
            csv.writer(fh).writerows(table)

    write_atomically(path, write)


def write_record(record: Mapping[str, Any], out_dir: Path, title: str = "") -> list[str]:
    """result.json always; eigenvalues.csv when there are eigenvalues; density.png/.pdf when there is SLQ."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, out_dir / "result.json")
    written = ["result.json"]
    if "eigs" in record:
        write_eigenvalues_csv([record], out_dir / "eigenvalues.csv")
        written.append("eigenvalues.csv")
    if "slq" in record:
        plot_densities([record], [out_dir / "density.png", out_dir / "density.pdf"], title=title)
        written += ["density.png", "density.pdf"]
    return written


def plot_title(record: Mapping[str, Any]) -> str:
    inputs = record.get("provenance", {}).get("inputs", {})
    what = f"{inputs.get('model') or 'model'} on {inputs.get('data', 'data')}"
    batch = inputs.get("batch_size")
    one_batch = f" (one batch of {batch})" if batch else ""
    return f"{what}: P = {record['n_params']:,}, N = {record['n_samples']:,}" + one_batch


def summary(record: Mapping[str, Any]) -> str:
    """A few human lines: extremal eigenvalues (flagging unconverged ones), trace, warnings."""
    head = f"{record['operator']}: P = {record['n_params']:,} parameters, N = {record['n_samples']:,} examples"
    lines = [head]
    if "eigs" in record:
        eigs = record["eigs"]
        for end in ("top", "bottom"):
            values = record[f"{end}_eigenvalues"]
            if values:
                flags = eigs[f"{end}_converged"]
                shown = ", ".join(_number(v) + ("" if ok else "*") for v, ok in zip(values, flags))
                note = "" if all(flags) else "   (* not converged: see residuals)"
                lines.append(f"  {end:6s} eigenvalues: {shown}{note}")
    if "trace" in record:
        t = record["trace"]
        stderr = f" ± {t['stderr']:.3g}" if t.get("stderr") is not None else ""
        lines.append(f"  trace: {_number(t['estimate'])}{stderr} ({t['method']}, {t['n_probes']} probes)")
    if "slq" in record:
        s = record["slq"]
        steps = max(s["n_steps"]) if isinstance(s["n_steps"], list) else s["n_steps"]
        lines.append(f"  SLQ: {len(s['nodes'])} probes x {steps} Lanczos steps, trace {_number(s['trace_estimate'])}")
    if "rows" in record:
        lines += lr_table(record)
    if "validation" in record and isinstance(record["validation"], list):
        lines.append(f"  measured vs predicted maximal learning rate ({record['definition']}):")
        lines.append(f"  {'optimizer':>9} {'B':>6} {'criterion':>11} {'measured':>10} {'fixed':>10} {'ratio':>7} "
                     f"{'best':>10} {'ratio':>7} {'recommended':>11} {'ratio':>7}")
        for v in record["validation"] + (record.get("validation_no_progress") or []):
            lines.append(f"  {v['optimizer']:>9} {v['batch_size']:>6} {v.get('criterion', 'blowup'):>11} "
                         f"{_cell(v['measured_lr'])} {_cell(v['predicted_lr'])} {_ratio(v['ratio'])} "
                         f"{_cell(v.get('best_prediction'))} {_ratio(v.get('ratio_to_best'))} "
                         f"{_cell(v.get('recommended_lr'), 11)} {_ratio(v.get('ratio_to_recommended'))}"
                         + (f"  ({v['note']})" if v["note"] else ""))
    lines += [f"  warning: {w}" for w in record.get("warnings", [])]
    mode = (record.get("provenance") or {}).get("evaluation_mode")
    if mode:
        lines.append(f"  note: {mode}")
    return "\n".join(lines)


def lr_table(record: Mapping[str, Any]) -> list[str]:
    """Per B: sharpness and the recommended rate of each optimizer (the headline), then every model's
    divergence threshold, then the fit and the calibration."""
    cell = _cell
    hp = record["hyperparameters"]
    optimizers = record.get("optimizers") or ["sgd", "momentum", "nesterov", "adam"]
    calibrated = bool(record.get("calibration"))
    lines = [f"  recommended learning rates ({record.get('recommended_is', '')}; "
             + ("calibrated" if calibrated else "not calibrated: lr --calibrate-at B0 measures the factor") + ")",
             f"  {'B':>6} {'lmax mean':>10} {'lmax std':>10} {'lmin mean':>10} {'BS mean':>10} "
             + " ".join(f"{LR_NAMES[o]:>10}" for o in optimizers)]
    for r in record["rows"]:
        lines.append(f"  {r['batch_size']:>6} {cell(r['lambda_max_mean'])} {cell(r['lambda_max_std'])} "
                     f"{cell(r['lambda_min_mean'])} {cell(r.get('batch_sharpness_mean'))} "
                     + " ".join(cell(r.get(f"lr_recommended_{o}")) for o in optimizers)
                     + ("" if r["converged"] else "  *"))
    from .analysis.lr import MODELS

    models = [m for o in optimizers for m in MODELS[o]]
    lines.append(f"  maximal stable learning rates by model (divergence thresholds x safety {hp['safety']:g}; "
                 f"momentum {hp['momentum']:g}, Adam beta1 {hp['beta1']:g}, Adam model: {record['adam_model']}; "
                 "fixed: fixed Hessian, mss: mean-square under batch noise, bs: 2/batch sharpness)")
    lines.append(f"  {'B':>6} " + " ".join(f"{m.replace('_', ' '):>10}" for m in
                                          (_model_label(m) for m in models)))
    for r in record["rows"]:
        lines.append(f"  {r['batch_size']:>6} " + " ".join(cell(r.get(f"lr_max_{m}")) for m in models))
    fit = record["fit"]
    if fit["converged"]:
        def pm(value, err):
            return f"{value:.4g}" + (f" ± {err:.2g}" if err is not None else "")
        critical = fit["critical_batch_size"]
        lines.append(f"  fit: lambda_inf = {pm(fit['lambda_inf'], fit['lambda_inf_stderr'])} (full sample "
                     f"{record['full_sample']['lambda_max']:.4g}), kappa = {pm(fit['kappa'], fit['kappa_stderr'])}, "
                     f"p = {pm(fit['p'], fit['p_stderr'])}, critical batch size "
                     + (f"{critical:.0f}" if critical else "undefined"))
    if calibrated:
        cal = record["calibration"]
        shown = ", ".join(f"{o} x{f:.3g}" if f is not None else f"{o}: none" for o, f in cal["factors"].items())
        lines.append(f"  calibration at B = {cal['batch_size']} (measured blow-up / best model): {shown}")
    return lines


LR_NAMES = {"sgd": "SGD", "momentum": "momentum", "nesterov": "Nesterov", "adam": "Adam"}


def _model_label(model: str) -> str:
    """'sgd' -> 'SGD fixed', 'momentum_mss' -> 'mom mss', 'sgd_batch_sharpness' -> 'SGD bs'."""
    short = {"sgd": "SGD", "momentum": "mom", "nesterov": "nest", "adam": "Adam"}
    name, _, kind = model.partition("_")
    return f"{short[name]} {dict(mss='mss', batch_sharpness='bs').get(kind, 'fixed')}"


def _ratio(value: float | None) -> str:
    return f"{'-':>7}" if value is None else f"{value:>7.3f}"


def _cell(value: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4g}"


def _number(value: float | None) -> str:
    return "non-finite" if value is None else f"{value:.6g}"


def read_record(path: str | Path) -> dict[str, Any]:
    """A saved result (a result.json, or a folder holding one) that has an SLQ density to draw."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.is_file():
        raise InputError(f"result file not found: {path}")
    try:
        record = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    slq = record.get("slq") if isinstance(record, dict) else None
    if not isinstance(slq, dict) or not {"nodes", "weights"} <= set(slq) or "operator" not in record:
        raise InputError(f"{path} has no spectral density to plot (written by `hessian-probe spectrum`?)")
    _check_quadrature(slq, path)
    return record


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
