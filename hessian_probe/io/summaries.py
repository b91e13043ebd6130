"""The few human lines each command prints: one summary per result type, read from the record the
run writes (so what is printed is what is saved, its messages already showing --flags)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Record = Mapping[str, Any]


def _head(record: Record) -> list[str]:
    return [f"{record['operator']}: P = {record['n_params']:,} parameters, N = {record['n_samples']:,} examples"]


def _tail(record: Record) -> list[str]:
    """Warnings, then how the model was evaluated."""
    lines = [f"  warning: {w}" for w in record.get("warnings", [])]
    mode = (record.get("provenance") or {}).get("evaluation_mode")
    return lines + ([f"  note: {mode}"] if mode else []) + [f"  note: {n}" for n in record.get("notes", [])]


def _framed(body: Callable[[Record], list[str]]) -> Callable[[Record], str]:
    return lambda record: "\n".join(_head(record) + body(record) + _tail(record))


def eigenvalue_lines(record: Record) -> list[str]:
    """Extremal eigenvalues, an unconverged one starred."""
    lines, eigs = [], record["eigs"]
    for end in ("top", "bottom"):
        values = record[f"{end}_eigenvalues"]
        if values:
            flags = eigs[f"{end}_converged"]
            shown = ", ".join(_number(v) + ("" if ok else "*") for v, ok in zip(values, flags))
            note = "" if all(flags) else "   (* not converged: see residuals)"
            lines.append(f"  {end:6s} eigenvalues: {shown}{note}")
    return lines


def trace_lines(record: Record) -> list[str]:
    t = record["trace"]
    stderr = f" ± {t['stderr']:.3g}" if t.get("stderr") is not None else ""
    return [f"  trace: {_number(t['estimate'])}{stderr} ({t['method']}, {t['n_probes']} probes)"]


def spectrum_lines(record: Record) -> list[str]:
    s = record["slq"]
    steps = max(s["n_steps"]) if isinstance(s["n_steps"], list) else s["n_steps"]
    return (eigenvalue_lines(record) + trace_lines(record)
            + [f"  SLQ: {len(s['nodes'])} probes x {steps} Lanczos steps, trace {_number(s['trace_estimate'])}"])


def lr_table(record: Record) -> list[str]:
    """Per B: sharpness and the recommended rate of each optimizer (the headline), then every model's
    divergence threshold, then the fit and the calibration."""
    from ..analysis.lr import MODELS

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
    learner = record.get("learner")
    if learner:
        lines.append(f"  learner (seed authors' rules, {learner['lanczos_steps']} Lanczos steps; optimal rates of a "
                     f"quadratic, not thresholds): SGD {learner['sgd_lr']:.4g}; heavy ball "
                     f"{learner['heavy_ball_lr']:.4g} with momentum {learner['heavy_ball_momentum']:.3g} "
                     f"(lambda_max {learner['lambda_max']:.4g}, mu {learner['mu']:.3g})")
    if calibrated:
        cal = record["calibration"]
        shown = ", ".join(f"{o} x{f:.3g}" if f is not None else f"{o}: none" for o, f in cal["factors"].items())
        lines.append(f"  calibration at B = {cal['batch_size']} (measured blow-up / best model): {shown}")
    return lines


def validation_lines(record: Record) -> list[str]:
    """Measured against predicted thresholds, one row per optimizer, B and criterion."""
    lines = [f"  measured vs predicted maximal learning rate ({record['definition']}):",
             f"  {'optimizer':>9} {'B':>6} {'criterion':>11} {'measured':>10} {'fixed':>10} {'ratio':>7} "
             f"{'best':>10} {'ratio':>7} {'recommended':>11} {'ratio':>7}"]
    for v in record["validation"] + (record.get("validation_no_progress") or []):
        lines.append(f"  {v['optimizer']:>9} {v['batch_size']:>6} {v.get('criterion', 'blowup'):>11} "
                     f"{_cell(v['measured_lr'])} {_cell(v['predicted_lr'])} {_ratio(v['ratio'])} "
                     f"{_cell(v.get('best_prediction'))} {_ratio(v.get('ratio_to_best'))} "
                     f"{_cell(v.get('recommended_lr'), 11)} {_ratio(v.get('ratio_to_recommended'))}"
                     + (f"  ({v['note']})" if v["note"] else ""))
    return lines


def track_lines(record: Record) -> list[str]:
    """One line per checkpoint in training order: lambda_max (starred if not converged) against 2/eta."""
    lines = [f"  {len(record['rows'])} checkpoints in training order (by {record['order']}); sharpest: "
             f"{record['sharpest']}",
             f"  {'step':>8} {'lambda_max':>11} {'2/lr':>10} {'trace':>10} {'batch lmax':>10} {'batch BS':>10} "
             f"{'Adam lmax':>10} {'Adam line':>10}  checkpoint"]
    for r in record["rows"]:
        step = "-" if r["step"] is None else str(r["step"])
        def star(flag: str) -> str:
            return "*" if r.get(flag) is False else " "

        lines.append(f"  {step:>8} {_cell(r['lambda_max'], 10)}{star('lambda_max_converged')} {_cell(r['line_sgd'])} "
                     f"{_cell(r['trace'])} {_cell(r['batch_lambda_max'], 9)}{star('batch_converged')} "
                     f"{_cell(r['batch_sharpness'])} {_cell(r['adam_sharpness'], 9)}{star('adam_converged')} "
                     f"{_cell(r['line_adam'])}  {r['name']}")
    if any(r.get(f) is False for r in record["rows"]
           for f in ("lambda_max_converged", "batch_converged", "adam_converged")):
        lines.append("  (* not converged: see the residuals in track.json)")
    return lines


spectrum_summary = _framed(spectrum_lines)
eigenvalue_summary = _framed(eigenvalue_lines)
trace_summary = _framed(trace_lines)
learning_rate_summary = _framed(lr_table)
validation_summary = _framed(validation_lines)
track_summary = _framed(track_lines)

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
