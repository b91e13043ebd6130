"""Maximal stable learning rates from batch-Hessian sharpness, and the batch-size fit.

Fit (THEORY.md section 3): lambda'(B) = lambda_inf + kappa * x^p, x = (N - B)/(B (N - 1)),
p in [1/2, 1], by weighted least squares on the per-B mean top eigenvalues (B < N); the
critical batch size is where the noise term equals lambda_inf: x_c = (lambda_inf/kappa)^(1/p),
B_crit = N / (1 + x_c (N - 1)) (= kappa/lambda_inf for p = 1 and B << N).

Thresholds (THEORY.md section 4), quadratic-model divergence limits, not optimal rates:
  SGD 2/(lambda' + wd); heavy ball 2(1 + rho)/(lambda' + wd);
  Nesterov (2 + 2 rho)/((1 + 2 rho)(lambda' + wd));
  Adam: (2 + 2 beta1)/((1 - beta1) s) with s the top eigenvalue of D^-1/2 H_B D^-1/2 when the
  checkpoint carries exp_avg_sq (Cohen et al. 2022), else the square-root model
  2 (sqrt(lambda') + eps)/lambda'.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from ..results import to_jsonable


@dataclass(frozen=True, kw_only=True)
class BatchSizeFit:
    lambda_inf: float
    lambda_inf_stderr: float | None
    kappa: float
    kappa_stderr: float | None
    p: float
    p_stderr: float | None
    critical_batch_size: float | None
    n_points: int
    rms_relative_residual: float
    converged: bool
    message: str = ""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.lambda_inf + self.kappa * np.asarray(x, dtype=float) ** self.p

    def to_dict(self) -> dict:
        return to_jsonable(self)


def _model(x: np.ndarray, lambda_inf: float, kappa: float, p: float) -> np.ndarray:
    return lambda_inf + kappa * x**p


def fit_batch_size(x: np.ndarray, mean: np.ndarray, stderr: np.ndarray, n_samples: int) -> BatchSizeFit:
    """Weighted least squares of lambda'(B) = lambda_inf + kappa x^p with p in [1/2, 1]."""
    x, mean, stderr = (np.asarray(a, dtype=float) for a in (x, mean, stderr))
    if len(x) < 4:
        return BatchSizeFit(lambda_inf=math.nan, lambda_inf_stderr=None, kappa=math.nan, kappa_stderr=None, p=math.nan,
                            p_stderr=None, critical_batch_size=None, n_points=len(x), rms_relative_residual=math.nan,
                            converged=False, message=f"{len(x)} batch sizes below N: the fit of 3 parameters with "
                                                     "uncertainties needs at least 4")
    # a floor keeps a point whose few batches happen to agree from dominating the fit
    sigma = np.maximum(stderr, np.maximum(0.25 * np.median(stderr), 1e-3 * np.abs(mean)) + 1e-12)
    start = (float(mean.min()) * 0.5, float(max(mean.max() - mean.min(), 1e-12) / max(x.max() ** 0.75, 1e-12)), 0.75)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # a singular covariance shows as stderr None
            params, cov = curve_fit(_model, x, mean, p0=start, sigma=sigma, absolute_sigma=False,
                                    bounds=([-np.inf, 0.0, 0.5], [np.inf, np.inf, 1.0]), maxfev=20000)
        errors = np.sqrt(np.clip(np.diag(cov), 0, None))
        errors = [float(e) if np.isfinite(e) else None for e in errors]
        ok, message = True, ""
    except (RuntimeError, ValueError) as exc:
        return BatchSizeFit(lambda_inf=math.nan, lambda_inf_stderr=None, kappa=math.nan, kappa_stderr=None, p=math.nan,
                            p_stderr=None, critical_batch_size=None, n_points=len(x), rms_relative_residual=math.nan,
                            converged=False, message=f"fit failed: {exc}")
    lambda_inf, kappa, p = (float(v) for v in params)
    residual = float(np.sqrt(np.mean(((_model(x, *params) - mean) / mean) ** 2)))
    critical, notes = None, []
    if p in (0.5, 1.0) or abs(p - 0.5) < 1e-6 or abs(p - 1.0) < 1e-6:
        notes.append(f"p sits on its bound {p:g}: the data may want an exponent outside [1/2, 1]")
    significant = kappa > 0 and (errors[1] is None or kappa > 2 * errors[1])
    if lambda_inf > 0 and significant:
        x_c = (lambda_inf / kappa) ** (1.0 / p)
        critical = n_samples / (1.0 + x_c * (n_samples - 1))
        if not 1 <= critical <= n_samples:
            notes.append(f"the critical batch size {critical:.3g} lies outside 1..N")
            critical = None
    elif not significant:
        notes.append("kappa is not significantly above 0: no batch-size dependence resolved, no critical batch size")
    message = "; ".join(notes)
    return BatchSizeFit(lambda_inf=lambda_inf, lambda_inf_stderr=errors[0], kappa=kappa, kappa_stderr=errors[1], p=p,
                        p_stderr=errors[2], critical_batch_size=critical, n_points=len(x),
                        rms_relative_residual=residual, converged=ok, message=message)


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """What the thresholds depend on, and where each value came from ('checkpoint' or 'option')."""

    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    safety: float = 1.0
    sources: dict | None = None

    @classmethod
    def resolve(cls, given: dict, found: dict, safety: float = 1.0) -> Hyperparameters:
        """Each of momentum, nesterov, weight_decay, beta1, beta2, eps: the value ``given``
        explicitly, else the one ``found`` in the checkpoint (a zero momentum counts as absent),
        else the default; ``sources`` records which."""
        defaults = cls()
        values, sources = {}, {}
        for key in ("momentum", "nesterov", "weight_decay", "beta1", "beta2", "eps"):
            mine, saved = given.get(key), found.get(key)
            if mine is not None:
                values[key] = mine
                sources[key] = "option" + (f" (checkpoint had {saved})" if saved is not None else "")
            elif saved is not None and (key != "momentum" or saved > 0):
                values[key], sources[key] = saved, "checkpoint"
            else:
                values[key], sources[key] = getattr(defaults, key), "default"
        return cls(**values, safety=safety, sources=sources)


def sgd_threshold(sharpness: float, weight_decay: float = 0.0) -> float | None:
    """Plain SGD: 2 / (lambda' + wd)."""
    curvature = sharpness + weight_decay
    return 2.0 / curvature if curvature > 0 else None


def momentum_threshold(sharpness: float, momentum: float, weight_decay: float = 0.0) -> float | None:
    """Heavy ball (torch SGD momentum): 2 (1 + rho) / (lambda' + wd)."""
    curvature = sharpness + weight_decay
    return 2.0 * (1.0 + momentum) / curvature if curvature > 0 else None


def nesterov_threshold(sharpness: float, momentum: float, weight_decay: float = 0.0) -> float | None:
    """Nesterov: (2 + 2 rho) / ((1 + 2 rho)(lambda' + wd))."""
    curvature = sharpness + weight_decay
    return (2.0 + 2.0 * momentum) / ((1.0 + 2.0 * momentum) * curvature) if curvature > 0 else None


def adam_threshold(preconditioned_sharpness: float, beta1: float) -> float | None:
    """Adam with measured preconditioned sharpness s: (2 + 2 beta1) / ((1 - beta1) s)."""
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * preconditioned_sharpness) if preconditioned_sharpness > 0 else None


def adam_sqrt_model_threshold(sharpness: float, eps: float) -> float | None:
    """Adam without its state (square-root model): 2 (sqrt(lambda') + eps) / lambda'."""
    return 2.0 * (math.sqrt(sharpness) + eps) / sharpness if sharpness > 0 else None


def thresholds(sharpness: float, hp: Hyperparameters, adam_sharpness: float | None) -> dict[str, float | None]:
    """Every optimizer's maximal learning rate for one sharpness, times the safety factor."""
    values = {
        "sgd": sgd_threshold(sharpness, hp.weight_decay),
        "momentum": momentum_threshold(sharpness, hp.momentum, hp.weight_decay),
        "nesterov": nesterov_threshold(sharpness, hp.momentum, hp.weight_decay),
        "adam": adam_threshold(adam_sharpness, hp.beta1) if adam_sharpness is not None
        else adam_sqrt_model_threshold(sharpness, hp.eps),
    }
    return {k: (v * hp.safety if v is not None else None) for k, v in values.items()}


@dataclass(frozen=True, kw_only=True)
class LearningRateResult:
    """Per batch size: sharpness statistics and each optimizer's maximal learning rate; the fit;
    the full-sample values; which Adam model was used."""

    scan: object  # BatchScanResult
    fit: BatchSizeFit
    hyperparameters: Hyperparameters
    adam_model: str  # "preconditioned" or "sqrt"

    def rows(self) -> list[dict]:
        rows = []
        for summary in self.scan.by_size():
            row = summary.to_dict()
            row.update({f"lr_max_{k}": v for k, v in
                        thresholds(row["lambda_max_mean"], self.hyperparameters, row.get("adam_sharpness_mean")).items()})
            rows.append(row)
        full = self.scan.full
        full_row = dict(batch_size=self.scan.n_samples, x=0.0, n_batches=1, lambda_max_mean=full.lambda_max,
                        lambda_max_std=0.0, lambda_min_mean=full.lambda_min, lambda_min_std=0.0,
                        converged=bool(full.eigs.converged and full.adam_converged is not False))
        if full.adam_sharpness is not None:
            full_row.update(adam_sharpness_mean=full.adam_sharpness, adam_sharpness_std=0.0)
        full_row.update({f"lr_max_{k}": v for k, v in
                         thresholds(full.lambda_max, self.hyperparameters, full.adam_sharpness).items()})
        return rows + [to_jsonable(full_row)]

    def to_dict(self) -> dict:
        scan = self.scan
        rows = self.rows()
        warnings = []
        if not all(r["converged"] for r in rows):
            warnings.append("some batch eigenvalues did not converge to tol; see the per-batch residuals")
        if not self.fit.converged:
            warnings.append(f"batch-size fit unavailable: {self.fit.message}")
        else:
            if self.fit.message:
                warnings.append(f"batch-size fit: {self.fit.message}")
            gap = abs(self.fit.lambda_inf - scan.full.lambda_max)
            spread = 3 * (self.fit.lambda_inf_stderr or 0.0)
            if gap > max(spread, 0.1 * abs(scan.full.lambda_max)):
                warnings.append(f"the fit's lambda_inf {self.fit.lambda_inf:.4g} differs from the full-sample "
                                f"lambda_max {scan.full.lambda_max:.4g} by more than 3 stderr and 10%")
        return to_jsonable({
            "operator": scan.operator,
            "n_params": scan.n_params,
            "n_samples": scan.n_samples,
            "rows": rows,
            "fit": self.fit,
            "full_sample": {"lambda_max": scan.full.lambda_max, "lambda_min": scan.full.lambda_min,
                            "adam_sharpness": scan.full.adam_sharpness, "eigs": scan.full.eigs},
            "adam_model": self.adam_model,
            "hyperparameters": self.hyperparameters,
            "thresholds_are": "divergence thresholds of the quadratic model (not optimal rates), "
                              f"multiplied by the safety factor {self.hyperparameters.safety:g}",
            "batches": [{"batch_size": m.batch_size, "index": m.index, "lambda_max": m.lambda_max,
                         "lambda_min": m.lambda_min, "top_residual": m.eigs.top_residuals[0],
                         "bottom_residual": m.eigs.bottom_residuals[0], "converged": m.eigs.converged,
                         "adam_sharpness": m.adam_sharpness} for m in scan.measurements],
            "densities": [{"batch_size": m.batch_size, "index": m.index, "slq": m.density}
                          for m in (*scan.measurements, scan.full) if m.density is not None and m.index == 0],
            "settings": scan.settings,
            "wall_time_s": scan.wall_time_s,
            "warnings": warnings,
        })


def learning_rate_scan(scan, hp: Hyperparameters) -> LearningRateResult:
    """Fit the scan's mean top eigenvalues (B < N) and attach the thresholds."""
    rows = scan.by_size()
    x = np.array([r.x for r in rows])
    means = np.array([np.mean(r.lambda_max) for r in rows])
    stderr = np.array([np.std(r.lambda_max, ddof=1) / math.sqrt(len(r.lambda_max)) if len(r.lambda_max) > 1 else 0.0
                       for r in rows])
    fit = fit_batch_size(x, means, stderr, scan.n_samples)
    model = "preconditioned" if scan.full.adam_sharpness is not None else "sqrt"
    return LearningRateResult(scan=scan, fit=fit, hyperparameters=hp, adam_model=model)
