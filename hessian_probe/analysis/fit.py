"""The batch-size law of the sharpness: lambda'(B) = lambda_inf + kappa x^p, x = (N - B)/(B (N - 1)).

Weighted least squares with p in [1/2, 1] (docs/theory.md section 2: the Wigner edge moves like
1/sqrt(B), a spiked-covariance GGN edge like 1/B) on the per-B mean top eigenvalues (B < N). The
critical batch size is where the noise term equals lambda_inf: x_c = (lambda_inf/kappa)^(1/p),
B_crit = N / (1 + x_c (N - 1)) (= kappa/lambda_inf for p = 1 and B << N).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from ..results import saveable, to_jsonable


@saveable
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
                                                     "uncertainties needs at least 4 (`smallest_batch` 8, or "
                                                     "`batch_sizes` with 4 sizes below N)")
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
