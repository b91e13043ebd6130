"""The largest learning rate per batch size for SGD, heavy ball, Nesterov and Adam, and a rate to follow.

``learning_rates(problem)`` scans batch sizes (batch_scan), fits the sharpness law (fit), and
gives per B and optimizer the divergence threshold of each model (docs/theory.md):

- fixed Hessian (``lr_max_<opt>``, the quadratic model on the mean batch sharpness lambda'(B)):
  SGD 2/(lambda' + wd); heavy ball 2(1 + rho)/(lambda' + wd); Nesterov (2 + 2 rho)/((1 + 2 rho)
  (lambda' + wd)); Adam (2 + 2 beta1)/((1 - beta1) s) with s the mean top eigenvalue of
  D_B^-1/2 H_B D_B^-1/2 (adam.py: D from the saved or the estimated second moment);
- mean-square stability under batch noise (``lr_max_<opt>_mss``, stability.py) in the span of
  the full sample's top-k eigenvectors, the noise from noise.SubspaceNoise;
- batch sharpness (``lr_max_sgd_batch_sharpness``): 2/(BS(B) + wd) with BS(B) = E[g_B^T H_B g_B /
  |g_B|^2] (Andreyev & Beneventano 2024).

The headline ``lr_recommended_<opt>`` is conservative by construction: RECOMMENDED_FRACTION times
the smallest of the optimizer's models (times --safety). A calibration (a measured blow-up
threshold at one B0, validate.py) gives the factor f = measured / best model at B0 and, when the
measured threshold lies below the noiseless one, the noise scale c at which the mean-square
threshold at B0 matches it (the model's error attributed to the amplitude of the batch noise).
``lr_calibrated_<opt>`` is f x best model for B <= B0 (noise-dominated, where the threshold
scales like the noise and a factor carries) and the mean-square threshold with c for B > B0
(which tends to the noiseless threshold as B -> N, where a constant factor would not); f
everywhere when c is undefined. The recommended rate becomes CALIBRATED_FRACTION x min(calibrated,
best model): a calibration that finds the model optimistic lowers the rate, one that finds it
pessimistic does not raise it above the model (how far a network survives beyond linear
instability changes with B). The fractions and the B0 split come from the measured validity
table in docs/theory.md. These are divergence thresholds, not optimal rates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import UsageError, setting
from ..operators import ProductSettings, curvature_operator
from ..problem import Problem
from ..protocols import COMPUTE_NOW, Pieces
from ..results import saveable, to_jsonable
from ..seeds import derive
from .adam import AdamPreconditioning, SavedAdamState, choose_source, preconditioning
from .batch_scan import BatchScanResult, BatchSizeSummary, batch_scan, default_batch_sizes
from .fit import BatchSizeFit, fit_batch_size
from .hyperparameters import HYPERPARAMETER_KEYS, Hyperparameters
from .learner import LearnerSuggestion, suggest
from .noise import SubspaceNoise, effective_noise, gradient_moments
from .optimizer_state import OptimizerInfo, found_hyperparameters, optimizer_state_of, saved_adam_state
from .stability import adam_mean_square_threshold, mean_square_threshold, quadratic_threshold
from .validate import OPTIMIZERS, MeasuredThreshold, TrainingRecipe, ValidationResult, validate_learning_rates

__all__ = ["BatchSizeFit", "Calibration", "Hyperparameters", "LearningRateResult", "LearningRateRow", "fit_batch_size",
           "learning_rates", "momentum_threshold", "nesterov_threshold", "sgd_threshold"]

MODELS = {  # every threshold model of each optimizer; the first is the fixed-Hessian one (lr_max_<opt>)
    "sgd": ("sgd", "sgd_mss", "sgd_batch_sharpness"),
    "momentum": ("momentum", "momentum_mss"),
    "nesterov": ("nesterov", "nesterov_mss"),
    "adam": ("adam", "adam_mss"),
}
BEST_MODEL = {"sgd": "sgd_mss", "momentum": "momentum_mss", "nesterov": "nesterov_mss", "adam": "adam_mss"}
RECOMMENDED_FRACTION = 0.6  # of the smallest model threshold (docs/theory.md, validity table)
CALIBRATED_FRACTION = 0.7  # of min(calibrated, best model) (docs/theory.md)
LEARNER_STEPS = 20  # Lanczos steps of the learner's one-shot estimate (the seed authors' m)
LEARNER_RULE = ("the seed authors' curvature learner on the full sample's Ritz values (20 Lanczos steps, one probe): "
                "SGD lr 2/(lambda_max + mu), heavy ball lr 4/(sqrt(lambda_max) + sqrt(mu))^2 with momentum "
                "((sqrt(k) - 1)/(sqrt(k) + 1))^2, k = lambda_max/mu, mu the smallest |Ritz value| once the heavy node "
                "near zero is left out; optimal rates of a quadratic (times the safety factor), not divergence "
                "thresholds and not validated by training here")
FLAT = 1e-6  # directions with curvature below FLAT x lambda_1 are left out of the mean-square models


def sgd_threshold(sharpness: float, weight_decay: float = 0.0) -> float | None:
    """Plain SGD: 2 / (lambda' + wd)."""
    return quadratic_threshold("sgd", sharpness + weight_decay)


def momentum_threshold(sharpness: float, momentum: float, weight_decay: float = 0.0) -> float | None:
    """Heavy ball (torch SGD momentum): 2 (1 + rho) / (lambda' + wd)."""
    return quadratic_threshold("momentum", sharpness + weight_decay, momentum)


def nesterov_threshold(sharpness: float, momentum: float, weight_decay: float = 0.0) -> float | None:
    """Nesterov: (2 + 2 rho) / ((1 + 2 rho)(lambda' + wd))."""
    return quadratic_threshold("nesterov", sharpness + weight_decay, momentum)


def adam_threshold(preconditioned_sharpness: float | None, beta1: float) -> float | None:
    """Adam with preconditioned sharpness s: (2 + 2 beta1) / ((1 - beta1) s)."""
    if preconditioned_sharpness is None or not preconditioned_sharpness > 0:
        return None
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * preconditioned_sharpness)


@saveable
@dataclass(frozen=True, kw_only=True)
class LearningRateRow:
    """One batch size: its sharpness statistics (the scan's summary; one batch for B = N), the noise
    along the top direction, and every model's divergence threshold (before --safety)."""

    sizes: BatchSizeSummary
    top_direction_std: float | None  # std of q1^T H_B q1 over batches (the pooled noise model)
    models: dict[str, float | None]  # model name -> divergence threshold

    @property
    def batch_size(self) -> int:
        return self.sizes.batch_size


@saveable
@dataclass(frozen=True, kw_only=True)
class Calibration:
    """A measured blow-up threshold per optimizer at one batch size B0; the factor f = measured /
    best-model prediction there, carried as a constant to B <= B0; and the noise scale c at which
    the mean-square threshold at B0 equals the measured one, used for B > B0 (None where the
    measured threshold is at or above the noiseless one: then f is carried everywhere)."""

    batch_size: int
    measured: tuple[MeasuredThreshold, ...]
    factors: dict[str, float | None]
    recipe: TrainingRecipe
    noise_scales: dict[str, float | None] | None = None


def _mean(values: Sequence[float] | None) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@saveable
@dataclass(frozen=True, kw_only=True)
class LearningRateResult:
    """Per batch size: sharpness statistics and each optimizer's thresholds; the fit; the full
    sample; the noise model; Adam's preconditioner; the calibration and validation if run."""

    scan: BatchScanResult
    fit: BatchSizeFit
    hyperparameters: Hyperparameters
    rows: tuple[LearningRateRow, ...]  # B < N in increasing order, then the full sample
    noise: SubspaceNoise | None
    adam: AdamPreconditioning | None
    optimizers: tuple[str, ...]
    warnings: tuple[str, ...]
    wall_time_s: float
    calibration: Calibration | None = None
    validation: ValidationResult | None = None
    moments_cost: int = 0  # per-example gradients computed for Adam's estimate
    checkpoint_optimizer: dict | None = None  # what the checkpoint's optimizer state said (kind, lr, notes)
    learner: LearnerSuggestion | None = None  # the seed authors' rules on the full sample's Ritz values

    def without_vectors(self) -> LearningRateResult:
        """The same result without the reference eigenvectors (k x P each), e.g. for saving."""
        def bare(eigs: Any) -> Any:
            return replace(eigs, top_eigenvectors=None, bottom_eigenvectors=None)

        scan = replace(self.scan, full=replace(self.scan.full, eigs=bare(self.scan.full.eigs)),
                       adam_subspaces=tuple(replace(s, eigs=bare(s.eigs)) for s in self.scan.adam_subspaces))
        return replace(self, scan=scan)

    @property
    def adam_model(self) -> str:
        """'preconditioned' (the value older records have: Adam's thresholds use D^-1/2 H_B D^-1/2;
        ``adam_state.source`` says which second moment), or 'none' without Adam."""
        return "preconditioned" if self.adam is not None else "none"

    def row(self, batch_size: int) -> LearningRateRow | None:
        return next((r for r in self.rows if r.batch_size == batch_size), None)

    @staticmethod
    def best_model(optimizer: str) -> str:
        return BEST_MODEL[optimizer]

    def predictions(self, optimizer: str, batch_size: int) -> dict[str, float | None]:
        """Every model's threshold for ``optimizer`` at B (unscaled): from the row when B was scanned,
        else what the fit and the pooled noise give (the SGD family; Adam needs a scanned B)."""
        row = self.row(batch_size)
        if row is not None:
            return {m: row.models.get(m) for m in MODELS[optimizer]}
        out: dict[str, float | None] = {m: None for m in MODELS[optimizer]}
        if optimizer == "adam":
            return out
        hp = self.hyperparameters
        n = self.scan.n_samples
        if self.fit.converged:
            sharp = float(self.fit.predict(effective_noise(batch_size, n)))
            out[optimizer] = quadratic_threshold(optimizer, sharp + hp.weight_decay, hp.momentum)
        out[f"{optimizer}_mss"] = self.mean_square(optimizer, batch_size)
        return out

    def mean_square(self, optimizer: str, batch_size: int, noise_scale: float = 1.0) -> float | None:
        """The mean-square threshold at B with the batch noise's covariance times ``noise_scale``
        (1: the measured noise, the ``<opt>_mss`` model; 0: the noiseless quadratic threshold in
        the subspace). Adam needs a scanned B."""
        return _mean_square(self.scan, self.noise, self.hyperparameters, optimizer, batch_size, noise_scale)

    def calibrated(self, optimizer: str, batch_size: int) -> float | None:
        """The calibrated threshold (None without a calibration): the best model times f at
        B <= B0; above B0 the mean-square threshold with the calibrated noise scale c, which
        tends to the noiseless threshold as B -> N (module docstring)."""
        calibration = self.calibration
        if calibration is None or calibration.factors.get(optimizer) is None:
            return None
        scale = (calibration.noise_scales or {}).get(optimizer)
        if scale is not None and batch_size > calibration.batch_size:
            value = self.mean_square(optimizer, batch_size, scale)
            if value is not None:
                return value
        best = self.predictions(optimizer, batch_size).get(BEST_MODEL[optimizer])
        return best * calibration.factors[optimizer] if best is not None else None

    def recommended(self, optimizer: str, batch_size: int) -> float | None:
        """The headline rate, conservative by construction (module docstring), times --safety."""
        calibrated = self.calibrated(optimizer, batch_size)
        predictions = self.predictions(optimizer, batch_size)
        best = predictions.get(BEST_MODEL[optimizer])
        if calibrated is not None and best is not None:
            return CALIBRATED_FRACTION * min(calibrated, best) * self.hyperparameters.safety
        values = [v for v in predictions.values() if v is not None]
        return RECOMMENDED_FRACTION * min(values) * self.hyperparameters.safety if values else None

    def default_validation_sizes(self) -> list[int]:
        """Up to four scanned sizes below N, spread over the grid (every other one)."""
        below = [r.batch_size for r in self.rows if r.batch_size < self.scan.n_samples]
        return below[::2][:4]

    # --- the JSON record (lr.json) ------------------------------------------------------------------

    def record_rows(self) -> list[dict[str, Any]]:
        """lr.json's rows: the statistics, lr_max_<model> (times --safety) and lr_recommended_<opt>."""
        safety = self.hyperparameters.safety
        rows = []
        for r in self.rows:
            s = r.sizes
            row: dict[str, Any] = dict(
                batch_size=s.batch_size, x=s.x, n_batches=s.n_batches, lambda_max_mean=_mean(s.lambda_max),
                lambda_max_std=_std(s.lambda_max), lambda_min_mean=_mean(s.lambda_min),
                lambda_min_std=_std(s.lambda_min), converged=s.converged,
                batch_sharpness_mean=_mean(s.batch_sharpness), batch_sharpness_std=_std(s.batch_sharpness or []),
                top_direction_std=r.top_direction_std)
            if s.batch_size < self.scan.n_samples:
                row.update(lambda_max=list(s.lambda_max), lambda_min=list(s.lambda_min),
                           batch_sharpness=list(s.batch_sharpness or []))
            if s.adam_sharpness is not None:
                row.update(adam_sharpness_mean=_mean(s.adam_sharpness), adam_sharpness_std=_std(s.adam_sharpness))
                if s.batch_size < self.scan.n_samples:
                    row["adam_sharpness"] = list(s.adam_sharpness)
            for name, value in r.models.items():
                row[f"lr_max_{name}"] = value * safety if value is not None else None
            calibrated = []
            for opt in self.optimizers:
                row[f"lr_recommended_{opt}"] = self.recommended(opt, r.batch_size)
                if self.calibration is not None:
                    value = self.calibrated(opt, r.batch_size)
                    row[f"lr_calibrated_{opt}"] = value * safety if value is not None else None
                    calibrated.append(value is not None)
            row["calibrated"] = bool(calibrated) and all(calibrated)
            rows.append(row)
        return to_jsonable(rows)

    def to_dict(self) -> dict:
        scan = self.scan
        record: dict[str, Any] = {
            "operator": scan.operator,
            "n_params": scan.n_params,
            "n_samples": scan.n_samples,
            "rows": self.record_rows(),
            "fit": self.fit,
            "full_sample": {"lambda_max": scan.full.lambda_max, "lambda_min": scan.full.lambda_min,
                            "adam_sharpness": _mean(self.rows[-1].sizes.adam_sharpness),
                            "batch_sharpness": scan.full.batch_sharpness, "eigs": scan.full.eigs},
            "adam_model": self.adam_model,
            "adam_state": self.adam,
            "hyperparameters": self.hyperparameters,
            "optimizers": list(self.optimizers),
            "best_models": {opt: BEST_MODEL[opt] for opt in self.optimizers},
            "thresholds_are": "divergence thresholds (not optimal rates) of each model: lr_max_<optimizer> the "
                              "fixed-Hessian (quadratic) model on lambda'(B), lr_max_<optimizer>_mss mean-square "
                              "stability under batch noise, lr_max_sgd_batch_sharpness 2/BS(B); each multiplied by "
                              f"the safety factor {self.hyperparameters.safety:g}",
            "recommended_is": (f"{CALIBRATED_FRACTION:g} x min(calibrated, best model), calibrated at "
                               f"B = {self.calibration.batch_size}" if self.calibration is not None
                               else f"{RECOMMENDED_FRACTION:g} x the smallest model threshold")
                              + f", times the safety factor {self.hyperparameters.safety:g}",
            "noise": None if self.noise is None else {
                "subspace": len(self.noise.mean), "top_eigenvalues": np.diag(self.noise.mean),
                "batches": self.noise.n_batches,
                "model": "Cov(Q H_B Q^T) = x(B) Sigma, Sigma pooled over every scanned batch (sampling without "
                         "replacement), Q the full sample's top eigenvectors"},
            "calibration": self.calibration,
            "cost": {"operator_products": scan.cost(), "per_example_gradients": self.moments_cost,
                     "learner_products": self.learner.n_products if self.learner is not None else 0},
            "batches": [{"batch_size": m.batch_size, "index": m.index, "lambda_max": m.lambda_max,
                         "lambda_min": m.lambda_min, "top_residual": m.eigs.top_residuals[0],
                         "bottom_residual": m.eigs.bottom_residuals[0], "converged": m.eigs.converged,
                         "adam_sharpness": m.adam_sharpness, "batch_sharpness": m.batch_sharpness}
                        for m in scan.measurements],
            "densities": [{"batch_size": m.batch_size, "index": m.index, "slq": m.density}
                          for m in (*scan.measurements, scan.full) if m.density is not None and m.index == 0],
            "settings": scan.settings,
            "wall_time_s": self.wall_time_s,
            "warnings": list(self.warnings),
        }
        if self.checkpoint_optimizer is not None:
            record["optimizer_in_checkpoint"] = self.checkpoint_optimizer
        if self.learner is not None:
            record["learner"] = {**to_jsonable(self.learner), "rule": LEARNER_RULE}
        if self.validation is not None:
            record.update(self.validation.record())
        return to_jsonable(record)


def _rows(scan: BatchScanResult, hp: Hyperparameters, noise: SubspaceNoise | None, optimizers: Sequence[str]
          ) -> list[LearningRateRow]:
    n = scan.n_samples
    rows = []
    for s in [*scan.by_size(), scan.full_summary()]:
        b = s.batch_size
        reference = scan.adam_subspace(b) if "adam" in optimizers else None
        if reference is not None and b == n:
            s = replace(s, adam_sharpness=[reference.sharpness], converged=s.converged and reference.eigs.converged)
        sharp = [v for v in s.batch_sharpness or [] if v is not None]
        models: dict[str, float | None] = {}
        for opt in optimizers:
            if opt == "adam":
                models["adam"] = adam_threshold(_mean(s.adam_sharpness), hp.beta1)
                models["adam_mss"] = _mean_square(scan, noise, hp, "adam", b)
                continue
            models[opt] = quadratic_threshold(opt, float(np.mean(s.lambda_max)) + hp.weight_decay, hp.momentum)
            models[f"{opt}_mss"] = _mean_square(scan, noise, hp, opt, b)
            if opt == "sgd":
                models["sgd_batch_sharpness"] = (quadratic_threshold("sgd", _mean(sharp) + hp.weight_decay)
                                                 if sharp else None)
        rows.append(LearningRateRow(sizes=s, models=models,
                                    top_direction_std=float(noise.direction_std(b)[0]) if noise is not None else None))
    return rows


def _mean_square(scan: BatchScanResult, noise: SubspaceNoise | None, hp: Hyperparameters, optimizer: str,
                 batch_size: int, noise_scale: float = 1.0) -> float | None:
    """The ``<optimizer>_mss`` threshold at B with the batch noise's covariance times ``noise_scale``
    (Adam's from its preconditioned subspaces, which need a scanned B)."""
    if optimizer == "adam":
        return _adam_mss(scan, batch_size, hp.beta1, noise_scale)
    if noise is None:
        return None
    return mean_square_threshold(optimizer, noise.mean, noise_scale * noise.at(batch_size), momentum=hp.momentum,
                                 weight_decay=hp.weight_decay)


def _positive(eigenvalues: Sequence[float]) -> int:
    """How many leading (descending) eigenvalues are above FLAT x the largest: the directions the
    mean-square models use (a flat but noisy direction would give a threshold 2 h / sigma^2 -> 0)."""
    values = np.asarray(eigenvalues, dtype=float)
    if not len(values) or values[0] <= 0:
        return 0
    return int(np.sum(values > FLAT * values[0]))


def _adam_mss(scan: BatchScanResult, batch_size: int, beta1: float, noise_scale: float = 1.0) -> float | None:
    """Adam's mean-square threshold at B: the batches of every size, preconditioned with D_B and
    projected on the top eigenvectors of the full sample's D_B^-1/2 H D_B^-1/2, pool into one Sigma
    (noise.SubspaceNoise), times ``noise_scale``; noiseless at B = N."""
    reference = scan.adam_subspace(batch_size)
    if reference is None:  # an unscanned B
        return None
    k = min(scan.subspace, _positive(reference.eigs.top_eigenvalues))
    if not k or reference.projected is None:
        return None
    keep = slice(0, k)
    projected = [(m.batch_size, np.asarray(m.adam_projected[batch_size])[keep, keep]) for m in scan.measurements
                 if m.adam_projected and batch_size in m.adam_projected]
    if batch_size < scan.n_samples and not projected:
        return None
    noise = SubspaceNoise.from_batches(np.asarray(reference.projected)[keep, keep], projected, scan.n_samples)
    return adam_mean_square_threshold(noise.mean, noise_scale * noise.at(batch_size), beta1)


def _warnings(result_rows: Sequence[LearningRateRow], fit: BatchSizeFit, scan: BatchScanResult,
              adam: AdamPreconditioning | None) -> list[str]:
    warnings = []
    if not all(r.sizes.converged for r in result_rows):
        warnings.append("some batch eigenvalues did not converge to tol; see the per-batch residuals")
    if not fit.converged:
        warnings.append(f"batch-size fit unavailable: {fit.message}")
    else:
        if fit.message:
            warnings.append(f"batch-size fit: {fit.message}")
        gap = abs(fit.lambda_inf - scan.full.lambda_max)
        spread = 3 * (fit.lambda_inf_stderr or 0.0)
        if gap > max(spread, 0.1 * abs(scan.full.lambda_max)):
            warnings.append(f"the fit's lambda_inf {fit.lambda_inf:.4g} differs from the full-sample "
                            f"lambda_max {scan.full.lambda_max:.4g} by more than 3 stderr and 10%")
    if not all(s.eigs.converged for s in scan.adam_subspaces):
        warnings.append("the top eigenvectors of Adam's preconditioned operator did not all converge to their "
                        "tolerance: Adam's mean-square threshold rests on an approximate subspace")
    kept = _positive(scan.full.eigs.top_eigenvalues[:scan.subspace])
    if scan.subspace and kept < scan.subspace:
        warnings.append(f"only {kept} of the full sample's top {scan.subspace} eigenvalues are above {FLAT:g} x the "
                        "largest: the mean-square thresholds use those directions only")
    flat_adam = [s.batch_size for s in scan.adam_subspaces
                 if _positive(s.eigs.top_eigenvalues[:scan.subspace]) < min(scan.subspace, len(s.eigs.top_eigenvalues))]
    if flat_adam:
        warnings.append(f"Adam's preconditioned operator has flat or negative top directions at B = "
                        f"{', '.join(map(str, flat_adam[:4]))}: its mean-square thresholds use fewer directions there")
    if adam is not None and adam.source == "saved" and adam.saved_to_batch_ratio:
        far = {b: r for b, r in adam.saved_to_batch_ratio.items() if not 0.25 <= r <= 4}
        if far:
            shown = ", ".join(f"B={b}: {r:.3g}" for b, r in sorted(far.items())[:4])
            warnings.append("the saved Adam second moment is far from the one training at these batch sizes would "
                            f"settle to (median v_B / v_saved {shown}): the Adam thresholds assume a resumed run of "
                            f"{adam.horizon} steps (v moves 1 - beta2^T of the way to v_B in T steps); a longer run "
                            "drifts further (`adam_horizon`)")
    return warnings


def learning_rates(
    problem: Problem,
    operator: str = "hessian",
    *,
    hyperparameters: Hyperparameters | Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    batch_sizes: Sequence[int] | None = None,
    smallest_batch: int = 16,
    n_batches: int = 5,
    tol: float = 1e-6,
    subspace: int = 8,
    optimizers: Sequence[str] = OPTIMIZERS,
    adam_state: str = "auto",
    saved_state: SavedAdamState | None = None,
    adam_horizon: int = 200,
    calibrate_at: int | None = None,
    recipe: TrainingRecipe | None = None,
    density_steps: int = 0,
    density_probes: int = 4,
    seed: int = 0,
    settings: ProductSettings | None = None,
    progress: Any = None,
    pieces: Pieces = COMPUTE_NOW,
) -> LearningRateResult:
    """Divergence thresholds per batch size and optimizer, and the rate to follow (module docstring).

    ``batch_sizes``: default powers of two from ``smallest_batch`` below N, then N. ``subspace``:
    k, the number of the full sample's top eigenvectors the mean-square thresholds use (their cost
    is k products per batch and a (2k)^2 eigenproblem per B). ``optimizer_state``: a torch
    ``optimizer.state_dict()`` over ``problem.module.parameters()`` (a checkpoint's): it supplies
    the hyperparameters not given and, unless ``saved_state`` is, Adam's saved moments; the result
    records what it held (``checkpoint_optimizer``). ``hyperparameters``: a Hyperparameters, used
    as it is, or a mapping of the values given (None: not given; ``safety`` among them), the rest
    read from ``optimizer_state`` or defaulted (Hyperparameters.resolve). ``adam_state``: 'saved'
    (the saved moments), 'estimated' (v_B from per-example gradients) or 'auto' (saved when there
    are some); a saved state is carried ``adam_horizon`` steps forward at each B (adam.py).
    ``calibrate_at``: measure each optimizer's blow-up threshold at this B by training
    (``recipe``) and carry the factor to every B. The other options are batch_scan's.
    """
    import time

    t0 = time.perf_counter()
    unknown = set(optimizers) - set(OPTIMIZERS)
    if unknown or not optimizers:
        raise ValueError(f"optimizers must be among {', '.join(OPTIMIZERS)}")
    n = problem.n_samples
    given = sorted(set(batch_sizes or default_batch_sizes(n, smallest_batch)))
    if given[0] < 1:
        raise UsageError(f"{setting('batch_sizes')} must be positive integers, got {given[0]}")
    if given[-1] > n:
        raise UsageError(f"{setting('batch_sizes')}: {given[-1]} is larger than the sample ({n} examples)")
    if calibrate_at is not None and not 1 <= calibrate_at < n:
        raise UsageError(f"{setting('calibrate_at')} {calibrate_at}: calibrate at a batch size below the sample "
                         f"({n} examples)")
    sizes = sorted(set(given) | ({calibrate_at} if calibrate_at else set()))
    hp, saved_state, found = _from_optimizer_state(problem, hyperparameters, optimizer_state, saved_state, adam_state)
    adam = moments = preconditioner = None
    if "adam" in optimizers:
        source = choose_source(adam_state, saved_state)
        moments = pieces.shared("gradient-moments", lambda: gradient_moments(problem))
        preconditioner, adam = preconditioning(source, moments, saved_state, hp.beta2, hp.eps, sizes, adam_horizon)
    scan = batch_scan(problem, operator, batch_sizes=sizes, n_batches=n_batches, tol=tol, seed=seed,
                      subspace=subspace, preconditioner=preconditioner, density_steps=density_steps,
                      density_probes=density_probes, chunk_size=problem.chunk_size, progress=progress,
                      settings=settings, pieces=pieces)
    summaries = scan.by_size()
    x = np.array([r.x for r in summaries])
    means = np.array([np.mean(r.lambda_max) for r in summaries])
    stderr = np.array([np.std(r.lambda_max, ddof=1) / math.sqrt(len(r.lambda_max)) if len(r.lambda_max) > 1 else 0.0
                       for r in summaries])
    fit = fit_batch_size(x, means, stderr, n)
    noise = None
    kept = _positive(scan.full.eigs.top_eigenvalues[:scan.subspace]) if scan.subspace else 0
    if kept:
        keep = slice(0, kept)
        noise = SubspaceNoise.from_batches(np.asarray(scan.full.projected)[keep, keep],
                                           [(m.batch_size, np.asarray(m.projected)[keep, keep])
                                            for m in scan.measurements], n)
    rows = _rows(scan, hp, noise, optimizers)
    learner = pieces.shared("learner", lambda: suggest(curvature_operator(problem, operator, settings=settings),
                                                       lanczos_steps=LEARNER_STEPS, safety=hp.safety,
                                                       seed=derive(seed, "learner")))
    result = LearningRateResult(scan=scan, fit=fit, hyperparameters=hp, rows=tuple(rows), noise=noise, adam=adam,
                                optimizers=tuple(optimizers), warnings=tuple(_warnings(rows, fit, scan, adam)),
                                wall_time_s=time.perf_counter() - t0, moments_cost=n if moments is not None else 0,
                                learner=learner)
    if found is not None:
        result = replace(result, checkpoint_optimizer={"kind": found.kind, "lr": found.lr, "notes": list(found.notes)})
    if calibrate_at is not None:
        result = calibrate(problem, result, calibrate_at, recipe or TrainingRecipe(), saved_state=saved_state,
                           moments=moments, seed=seed, progress=progress, pieces=pieces)
        result = replace(result, wall_time_s=time.perf_counter() - t0)
    return result


def _from_optimizer_state(problem: Problem, hyperparameters: Hyperparameters | Mapping[str, Any] | None,
                          optimizer_state: Mapping[str, Any] | None, saved_state: SavedAdamState | None,
                          adam_state: str) -> tuple[Hyperparameters, SavedAdamState | None, OptimizerInfo | None]:
    """The hyperparameters (given values win over the optimizer state's), Adam's saved moments (given,
    else the optimizer state's) and what the optimizer state held (None when there was none)."""
    found = None
    if optimizer_state is not None:
        found = optimizer_state_of(optimizer_state, problem)
        saved_state = saved_state if saved_state is not None else saved_adam_state(found, problem)
        if adam_state == "saved" and saved_state is None:
            raise UsageError(f"{setting('adam_state')} saved: the checkpoint carries no usable Adam moments "
                             "(exp_avg_sq with a step count, one parameter group, matching shapes); use "
                             f"{setting('adam_state')} estimated")
    if isinstance(hyperparameters, Hyperparameters):
        return hyperparameters, saved_state, found
    if hyperparameters is None and found is None:
        return Hyperparameters(), saved_state, None
    given = dict(hyperparameters or {})
    unknown = set(given) - {*HYPERPARAMETER_KEYS, "safety"}
    if unknown:
        raise ValueError(f"unknown hyperparameters {sorted(unknown)}: use {', '.join(HYPERPARAMETER_KEYS)}, safety")
    safety = given.pop("safety", None)
    hp = Hyperparameters.resolve(given, found_hyperparameters(found) if found is not None else {},
                                 safety=1.0 if safety is None else safety)
    return hp, saved_state, found


def calibrate(problem: Problem, result: LearningRateResult, batch_size: int, recipe: TrainingRecipe, *,
              saved_state: SavedAdamState | None = None, moments: Any = None, seed: int = 0, progress: Any = None,
              pieces: Pieces = COMPUTE_NOW) -> LearningRateResult:
    """``result`` with a Calibration: each optimizer's blow-up threshold measured at ``batch_size``
    (validate_learning_rates: the prediction's hyperparameters and Adam state), and measured / best
    model as its factor."""
    validation = validate_learning_rates(problem, result, recipe, optimizers=result.optimizers,
                                         batch_sizes=[batch_size],
                                         criteria=("blowup",), saved_state=saved_state, moments=moments, seed=seed,
                                         progress=progress, pieces=pieces)
    measured = validation.thresholds  # one per optimizer, in result.optimizers' order
    factors = {t.optimizer: t.measured_lr / t.best_prediction if t.measured_lr is not None and t.best_prediction
               else None for t in measured}
    scales = {t.optimizer: fit_noise_scale(result, t.optimizer, batch_size, t.measured_lr)
              if factors[t.optimizer] is not None else None for t in measured}
    missing = [name for name, f in factors.items() if f is None]
    warnings = list(result.warnings) + validation.warnings
    if missing:
        warnings.append(f"no calibration for {', '.join(missing)}: its bisection at B = {batch_size} found no "
                        "threshold (see calibration.measured); those rates stay uncalibrated")
    return replace(result, calibration=Calibration(batch_size=batch_size, measured=tuple(measured), factors=factors,
                                                   recipe=validation.recipe, noise_scales=scales),
                   warnings=tuple(warnings))


NOISE_SCALES = (1e-3, 1e3)  # the range searched for the calibrated noise scale


def fit_noise_scale(result: LearningRateResult, optimizer: str, batch_size: int, measured: float,
                    rtol: float = 1e-3) -> float | None:
    """The c at which the mean-square threshold at B with the noise covariance times c equals the
    measured threshold (it falls as c grows). None when the measured threshold is at or above the
    noiseless one (the gain is not a noise effect: the constant factor is carried instead) or c
    would leave NOISE_SCALES."""
    noiseless = result.mean_square(optimizer, batch_size, 0.0)
    if noiseless is None or not measured < noiseless:
        return None

    def above(scale: float) -> bool:  # the model at this noise scale still allows more than measured
        value = result.mean_square(optimizer, batch_size, scale)
        return value is not None and value > measured

    lo, hi = NOISE_SCALES
    if above(hi) or not above(lo):
        return None
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if above(mid) else (lo, mid)
    return math.sqrt(lo * hi)
