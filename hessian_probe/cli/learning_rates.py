"""lr and validate-lr: the batch-size scan's learning rates, and their validation by training."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from ..errors import UsageError
from ..io.names import LR_FILES, VALIDATION_FILES
from ..runtime import torchrun as distributed
from .options import (
    DENSITY_STEPS_OPTION,
    HYPERPARAMETER_OPTIONS,
    FiniteRange,
    _batch_sizes,
    _names,
    scan_options,
    training_options,
    with_options,
)
from .running import analysis_command

# --- learning rate as a function of batch size --------------------------------------------------

@analysis_command("lr", one_batch=False, outputs=LR_FILES)
@click.option("--batch-sizes", default=None, metavar="B1,B2,...",
              help="Batch sizes to scan [default: powers of two from --smallest-batch, then the full sample].")
@with_options(scan_options())
@with_options(HYPERPARAMETER_OPTIONS)
@click.option("--safety", type=FiniteRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Multiply every threshold and the recommended rates by this factor.")
@DENSITY_STEPS_OPTION
@click.option("--subspace", type=click.IntRange(min=0, max=16), default=8, show_default=True,
              help="Top eigenvectors of the full-sample operator in which the batch noise and the mean-square "
                   "thresholds are measured (k products per batch; 0: no mean-square thresholds).")
@click.option("--adam-state", type=click.Choice(["auto", "saved", "estimated"]), default="auto", show_default=True,
              help="Adam's second moment: the checkpoint's (saved), the one training at each B settles to, from "
                   "per-example gradients (estimated), or saved when the checkpoint has it (auto).")
@click.option("--adam-horizon", type=click.IntRange(min=1), default=200, show_default=True,
              help="Steps a saved Adam state is carried forward at each B (its second moment moves toward the one "
                   "training at B settles to): the length of the run the Adam thresholds are for.")
@click.option("--calibrate-at", type=click.IntRange(min=1), default=None, metavar="B0",
              help="Measure each optimizer's blow-up threshold at B0 by short training runs and carry the factor "
                   "measured/predicted to every B (the rates are then marked calibrated).")
@with_options(training_options("calibration-"))
def lr(op, *, seed, progress, out_dir, loaded, journal, batch_sizes, smallest_batch, n_batches, tol, momentum, nesterov,
       weight_decay, beta1, beta2, eps, safety, density_steps, subspace, adam_state, adam_horizon, calibrate_at,
       calibration_steps, calibration_seeds, calibration_blowup, calibration_precision):
    """Largest stable learning rate per batch size for SGD, momentum, Nesterov and Adam, and a rate to follow.

    Scans batch sizes; per size measures random batch Hessians' extremal eigenvalues, batch
    sharpness and noise in the top eigen-directions; fits lambda'(B) = lambda_inf + kappa x^p; and
    gives each optimizer's divergence threshold from the fixed-Hessian model, mean-square stability
    under batch noise, and (SGD) batch sharpness, plus lr_recommended_<optimizer>, conservative by
    construction (--calibrate-at B0 calibrates it by training). Adam's second moment is the one
    training at B settles to (from per-example gradients), or the checkpoint's exp_avg_sq carried
    --adam-horizon steps forward at B.
    Writes lr.json, lr.csv, lr.png, lr_state.pt and spectra_by_batch.png.

    \b
    Example (the demo's checkpoint, which carries Adam's state):
      hessian-probe lr --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits
    """
    from ..analysis import TrainingRecipe, learning_rates

    recipe = TrainingRecipe(steps=calibration_steps, seeds=calibration_seeds, blowup=calibration_blowup,
                            precision=calibration_precision)
    given = dict(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, beta1=beta1, beta2=beta2, eps=eps,
                 safety=safety)
    return learning_rates(op.problem, op.name, batch_sizes=_batch_sizes(batch_sizes), smallest_batch=smallest_batch,
                          n_batches=n_batches, tol=tol, subspace=subspace, hyperparameters=given,
                          optimizer_state=_optimizer_state(loaded), adam_state=adam_state, adam_horizon=adam_horizon,
                          calibrate_at=calibrate_at, recipe=recipe, density_steps=density_steps, seed=seed,
                          progress=progress, pieces=journal, settings=_scan_settings(op)), []


def _optimizer_state(loaded: Any) -> dict[str, Any]:
    """The checkpoint's optimizer state ({} when it has none: the record then says so)."""
    return loaded.checkpoint.optimizer_state or {}


def _scan_settings(op: Any) -> Any:
    return dataclasses.replace(op.settings, compile=False)  # many small batch operators: compiling does not pay


@analysis_command("validate-lr", one_batch=False, may_hold=LR_FILES, outputs=VALIDATION_FILES)
@click.option("--batch-sizes", "--train-batch-sizes", "batch_sizes", default=None, metavar="B1,B2,...",
              help="Batch sizes to train at, a subset of lr's scanned ones (--train-batch-sizes is the same option) "
                   "[default: every other batch size of the lr scan below N, at most 4].")
@click.option("--optimizers", default="sgd,momentum,adam", show_default=True,
              help="Comma-separated: sgd, momentum, nesterov, adam.")
@click.option("--criteria", default="blowup,no_progress", show_default=True,
              help="Comma-separated: blowup (non-finite, or loss above --blowup x its start), no_progress (loss "
                   "after --steps above its start).")
@with_options(training_options())
@with_options(scan_options(" Used when --out holds no lr outputs and the scan runs here."))
@DENSITY_STEPS_OPTION
def validate_lr(op, *, seed, progress, out_dir, loaded, journal, batch_sizes, optimizers, criteria, steps, seeds,
                blowup, precision, smallest_batch, n_batches, tol, density_steps):
    """Measure the divergence threshold by short training runs and compare it with `lr`'s predictions.

    Reads lr.json and lr_state.pt from --out (run `hessian-probe lr` with the same --out first; if
    they are missing the scan runs here with its defaults). For each batch size and optimizer,
    bisects the largest learning rate at which most of --seeds runs of --steps steps from the
    checkpoint (fresh seeded batches; Adam from the state its prediction assumed) pass each
    criterion. Writes validation.json, validation.csv (blow-up thresholds), validation_no_progress.csv,
    and adds the measured points to lr.json and lr.png.

    \b
    Example:
      hessian-probe lr --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits --out lr-demo
      hessian-probe validate-lr --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits --out lr-demo
    """
    from ..analysis import TrainingRecipe, check_learning_rates
    from ..analysis.validate import CRITERIA, OPTIMIZERS
    from ..io.saved import saved_learning_rates

    names = _names(optimizers, OPTIMIZERS, "--optimizers")
    kinds = _names(criteria, CRITERIA, "--criteria")
    sizes, n = _batch_sizes(batch_sizes), op.problem.n_samples
    if sizes and sizes[-1] > n:  # before lr.json is read
        raise UsageError(f"--batch-sizes: {sizes[-1]} is larger than the sample ({n} examples)")
    header = {"operator": op.name, "n_params": op.size, "n_samples": n}
    earlier = distributed.on_main(lambda: saved_learning_rates(out_dir, header, loaded.checkpoint.path,
                                                               list(op.problem.params)))
    recipe = TrainingRecipe(steps=steps, seeds=seeds, blowup=blowup, precision=precision)
    return check_learning_rates(op.problem, op.name, earlier, recipe, optimizers=names,
                                batch_sizes=sizes, criteria=kinds,
                                optimizer_state=_optimizer_state(loaded),
                                scan=dict(smallest_batch=smallest_batch, n_batches=n_batches, tol=tol,
                                          density_steps=density_steps),
                                seed=seed, settings=_scan_settings(op), progress=progress, pieces=journal), []
