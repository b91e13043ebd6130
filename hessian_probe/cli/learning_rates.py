"""lr and validate-lr: the batch-size scan's learning rates, and their validation by training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import torch

from ..errors import UsageError, first_line
from ..results import to_jsonable
from ..runtime import torchrun as distributed
from .analyses import _operator_header
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


def _checkpoint_optimizer(loaded: Any, problem: Any) -> tuple[Any, Any]:
    """The checkpoint's optimizer state: what it says (OptimizerInfo) and Adam's moments in the
    problem's flat layout (analysis.adam.SavedAdamState, or None)."""
    from ..loading.optimizer import read_optimizer_state, saved_adam_state

    info = read_optimizer_state(loaded.checkpoint.optimizer_state, [n for n, _ in loaded.model.named_parameters()])
    return info, saved_adam_state(info, problem)


def _learning_rates(op: Any, loaded: Any, seed: int, progress: Any, journal: Any, *, batch_sizes: list[int] | None,
                    smallest_batch: int = 16, n_batches: int = 5, tol: float = 1e-6, density_steps: int = 40,
                    safety: float = 1.0, given: dict[str, Any] | None = None, subspace: int = 8,
                    adam_state: str = "auto", adam_horizon: int = 200, calibrate_at: int | None = None,
                    recipe: Any = None) -> Any:
    """`lr`'s one library call: hyperparameters and Adam's moments from the checkpoint (options win)."""
    from ..analysis.batch_scan import default_batch_sizes
    from ..analysis.lr import Hyperparameters, learning_rates
    from ..loading.optimizer import found_hyperparameters

    problem = op.problem
    sizes = batch_sizes or default_batch_sizes(problem.n_samples, smallest_batch)
    if sizes[-1] > problem.n_samples:
        raise UsageError(f"--batch-sizes: {sizes[-1]} is larger than the sample ({problem.n_samples} examples)")
    if calibrate_at is not None and calibrate_at >= problem.n_samples:
        raise UsageError(f"--calibrate-at {calibrate_at}: calibrate at a batch size below the sample "
                         f"({problem.n_samples} examples)")
    info, saved = _checkpoint_optimizer(loaded, problem)
    if adam_state == "saved" and saved is None:
        raise UsageError("--adam-state saved: the checkpoint carries no usable Adam moments (exp_avg_sq with a step "
                         "count, one parameter group, matching shapes); use --adam-state estimated")
    hp = Hyperparameters.resolve(given or {}, found_hyperparameters(info), safety=safety)
    result = learning_rates(problem, op.name, batch_sizes=sizes, n_batches=n_batches, tol=tol, subspace=subspace,
                            hyperparameters=hp, adam_state=adam_state, saved_state=saved, adam_horizon=adam_horizon,
                            calibrate_at=calibrate_at,
                            recipe=recipe, density_steps=density_steps, seed=seed, progress=progress, pieces=journal,
                            settings=dataclasses.replace(op.settings, compile=False))
    return dataclasses.replace(result, checkpoint_optimizer={"kind": info.kind, "lr": info.lr,
                                                             "notes": list(info.notes)})


LR_STATE = "lr_state.pt"
LR_FILES = frozenset({"lr.json", "lr.csv", "lr.png", "spectra_by_batch.png", LR_STATE})


def _write_lr(record: dict[str, Any], out_dir: Path, result: Any) -> list[str]:
    """lr_state.pt (the typed result, tensors and plain values only, for validate-lr), lr.json with
    that file's digest, lr.csv, lr.png and spectra_by_batch.png."""
    from ..files import write_atomically
    from ..outputs import file_digest, write_json, write_rows_csv
    from ..plots import plot_batch_spectra, plot_learning_rates
    from ..results import to_state

    state = to_state(result.without_vectors())
    write_atomically(out_dir / LR_STATE, lambda temporary: torch.save(state, temporary))
    record["state_file"] = {"name": LR_STATE, "sha256": file_digest(out_dir / LR_STATE)}
    write_json(record, out_dir / "lr.json")
    write_rows_csv(record["rows"], out_dir / "lr.csv", LR_COLUMNS)
    plot_learning_rates(record, out_dir / "lr.png")
    files = ["lr.json", "lr.csv", "lr.png", LR_STATE]
    if record["densities"]:
        plot_batch_spectra(record, out_dir / "spectra_by_batch.png")
        files.append("spectra_by_batch.png")
    return files


LR_COLUMNS = ["batch_size", "x", "n_batches", "lambda_max_mean", "lambda_max_std", "lambda_min_mean", "lambda_min_std",
              "adam_sharpness_mean", "adam_sharpness_std", "lr_max_sgd", "lr_max_momentum", "lr_max_nesterov",
              "lr_max_adam", "converged", "batch_sharpness_mean", "batch_sharpness_std", "top_direction_std",
              "lr_max_sgd_mss", "lr_max_sgd_batch_sharpness", "lr_max_momentum_mss", "lr_max_nesterov_mss",
              "lr_max_adam_mss", "lr_recommended_sgd", "lr_recommended_momentum", "lr_recommended_nesterov",
              "lr_recommended_adam", "calibrated", "lr_calibrated_sgd", "lr_calibrated_momentum",
              "lr_calibrated_nesterov", "lr_calibrated_adam"]

@analysis_command("lr", one_batch=False, writer=_write_lr, outputs=LR_FILES)
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
    from ..analysis.validate import TrainingRecipe

    recipe = TrainingRecipe(steps=calibration_steps, seeds=calibration_seeds, blowup=calibration_blowup,
                            precision=calibration_precision)
    return _learning_rates(op, loaded, seed, progress, journal, batch_sizes=_batch_sizes(batch_sizes),
                           smallest_batch=smallest_batch, n_batches=n_batches, tol=tol, density_steps=density_steps,
                           safety=safety, subspace=subspace, adam_state=adam_state, adam_horizon=adam_horizon,
                           calibrate_at=calibrate_at, recipe=recipe,
                           given=dict(momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      beta1=beta1, beta2=beta2, eps=eps)), []


def _write_validation(record: dict[str, Any], out_dir: Path, result: Any) -> list[str]:
    from ..outputs import write_json, write_rows_csv

    record["lr"].setdefault("provenance", record["provenance"])  # a scan run here has this run's inputs
    files = _write_lr(record["lr"], out_dir, result.learning_rates)
    write_json(record, out_dir / "validation.json")
    write_rows_csv(record["validation"], out_dir / "validation.csv", VALIDATION_COLUMNS)
    written = ["validation.json", "validation.csv"]
    if record["validation_no_progress"]:
        write_rows_csv(record["validation_no_progress"], out_dir / "validation_no_progress.csv", VALIDATION_COLUMNS)
        written.append("validation_no_progress.csv")
    return written + files


VALIDATION_COLUMNS = ["optimizer", "batch_size", "predicted_lr", "measured_lr", "ratio", "diverging_lr", "runs", "note",
                      "criterion", "seeds", "recommended_lr", "ratio_to_recommended", "best_model", "best_prediction",
                      "ratio_to_best"]


@analysis_command("validate-lr", one_batch=False, writer=_write_validation, may_hold=LR_FILES,
                  outputs=LR_FILES | {"validation.json", "validation.csv", "validation_no_progress.csv"})
@click.option("--batch-sizes", default=None, metavar="B1,B2,...",
              help="Batch sizes to train at [default: every other batch size of the lr scan below N, at most 4].")
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
    from ..analysis.validate import CRITERIA, OPTIMIZERS, TrainingRecipe, validate_learning_rates

    names = _names(optimizers, OPTIMIZERS, "--optimizers")
    kinds = _names(criteria, CRITERIA, "--criteria")
    sizes = _batch_sizes(batch_sizes)
    n = op.problem.n_samples
    if sizes and sizes[-1] > n:
        raise UsageError(f"--batch-sizes: {sizes[-1]} is larger than the sample ({n} examples)")
    lr_result = distributed.on_main(lambda: _matching_lr_result(out_dir, op, loaded))
    if lr_result is None:
        lr_result = _learning_rates(op, loaded, seed, progress, journal, batch_sizes=None,
                                    smallest_batch=smallest_batch,
                                    n_batches=n_batches, tol=tol, density_steps=density_steps)
    if not sizes and not lr_result.default_validation_sizes():
        raise UsageError(f"no batch size below the sample ({n} examples) to train at: pass --batch-sizes")
    _, saved = _checkpoint_optimizer(loaded, op.problem)
    recipe = TrainingRecipe(steps=steps, seeds=seeds, blowup=blowup, precision=precision)
    validation = validate_learning_rates(op.problem, lr_result, recipe, optimizers=names, batch_sizes=sizes,
                                         criteria=kinds, saved_state=saved, seed=seed, progress=progress,
                                         pieces=journal)
    return ValidationReport(header=_operator_header(op), learning_rates=dataclasses.replace(
        lr_result, validation=validation)), []


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """validate-lr's outputs: the validation beside the predictions it tested."""

    header: dict[str, Any]
    learning_rates: Any

    def to_dict(self) -> dict[str, Any]:
        validation = self.learning_rates.validation
        added = validation.record()
        return to_jsonable({**self.header, "validation": added["validation"],
                            "validation_no_progress": added["validation_no_progress"],
                            "definition": validation.definition,
                            "settings": dict(batch_sizes=validation.batch_sizes, optimizers=validation.optimizers,
                                             criteria=validation.criteria, seed=validation.seed,
                                             adam_state=validation.adam_source,
                                             **dataclasses.asdict(validation.recipe)),
                            "lr": self.learning_rates.to_dict(), "warnings": validation.warnings})


def _matching_lr_result(out_dir: Path, op: Any, loaded: Any) -> Any:
    """The typed result of an earlier `lr` run in ``out_dir`` on the same checkpoint, data, parameters
    and operator (None when there is none)."""
    from ..outputs import file_digest, read_json
    from ..results import from_state

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
    now = _operator_header(op)
    then = {k: record.get(k) for k in now}
    same_checkpoint = inputs.get("checkpoint_sha256") == file_digest(loaded.checkpoint.path)
    if then != now or not same_checkpoint or record["provenance"].get("parameters") != list(op.problem.params):
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
