"""track: the same curvature measurements on every checkpoint of a training run."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..io.names import TRACK_FILES
from ..runtime import torchrun as distributed
from .options import FiniteRange
from .running import analysis_command


@analysis_command("track", one_batch=False, many_checkpoints=True, outputs=TRACK_FILES)
@click.option("--batch-size", "train_batch_size", type=click.IntRange(min=1), default=None,
              help="The training batch size B: also measure lambda_max and the batch sharpness of one seeded batch "
                   "of B examples (the same batch on every checkpoint).")
@click.option("--tol", type=FiniteRange(min=0, max=1, min_open=True, max_open=True), default=1e-6,
              show_default=True, help="Relative Ritz residual for lambda_max.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Lanczos step budget for lambda_max.")
@click.option("--trace-products", type=click.IntRange(min=0), default=99, show_default=True,
              help="Operator products for each checkpoint's trace (0: no trace).")
@click.option("--trace-method", type=click.Choice(["hutchpp", "hutchinson"]), default="hutchpp", show_default=True)
@click.option("--lr", type=FiniteRange(min=0, min_open=True), default=None,
              help="Learning rate eta of the stability lines [default: each checkpoint's optimizer state's].")
@click.option("--momentum", type=FiniteRange(0, 1, max_open=True), default=None,
              help="Heavy-ball rho of the line 2(1 + rho)/eta [default: the checkpoint's].")
@click.option("--beta1", type=FiniteRange(0, 1, max_open=True), default=None,
              help="Adam beta1 of the line (2 + 2 beta1)/((1 - beta1) eta) [default: the checkpoint's].")
@click.option("--beta2", type=FiniteRange(0, 1, max_open=True), default=None,
              help="Adam beta2 of the bias correction of v [default: the checkpoint's].")
@click.option("--eps", type=FiniteRange(min=0), default=None, help="Adam eps [default: the checkpoint's].")
def track(op, *, seed, progress, out_dir, loaded, journal, checkpoints, train_batch_size, tol, max_steps,
          trace_products, trace_method, lr, momentum, beta1, beta2, eps):
    """Sharpness over a run's checkpoints: lambda_max, trace, batch sharpness and Adam's
    preconditioned sharpness of each, against its stability lines 2/eta, 2(1+rho)/eta, 38/eta.

    Checkpoints (files or quoted globs) are ordered by the step, global_step or epoch they carry,
    else by the last number in their names, else as given; every one is measured on the same
    sample with the same seeded probes, and is one resumable piece. Under torchrun the ranks
    measure each checkpoint together, each on its shard. Writes track.json, track.csv and track.png.

    \b
    Example:
      hessian-probe track 'runs/epoch_*.pt' --model mlp --data digits --batch-size 64
    """
    from ..analysis.track import track as track_checkpoints

    if trace_products in (1, 2):
        raise UsageError("--trace-products: at least 3 (or 0: no trace)")
    if train_batch_size is not None and train_batch_size > op.problem.n_samples:
        raise UsageError(f"--batch-size {train_batch_size} is larger than the sample ({op.problem.n_samples} "
                         "examples)")
    points = [_point(Path(path), loaded) for path in checkpoints]
    return track_checkpoints(points, op.name, batch_size=train_batch_size, tol=tol, max_steps=max_steps,
                             trace_products=trace_products, trace_method=trace_method,
                             hyperparameters=dict(lr=lr, momentum=momentum, beta1=beta1, beta2=beta2, eps=eps),
                             seed=seed, settings=op.settings, progress=progress, pieces=journal), []


def _point(path: Path, first: Any) -> Any:
    """A track point of ``path``: ``first`` (the problem the run loaded) for its own file, else
    loaded when measured, with the same model, data and options."""
    from ..analysis.track import TrackPoint
    from ..io.records import file_digest
    from ..loading import load_problem

    digest = file_digest(path) if path.is_file() else None
    if path == Path(first.spec.checkpoint):
        return TrackPoint(str(path), first.checkpoint.step, first.problem, first.checkpoint.optimizer_state,
                          digest=digest)

    def load() -> TrackPoint:
        spec = dataclasses.replace(first.spec, checkpoint=str(path))
        loaded = distributed.everywhere(lambda: load_problem(spec))  # a bad file stops every rank alike
        return TrackPoint(str(path), loaded.checkpoint.step, loaded.problem, loaded.checkpoint.optimizer_state,
                          digest=digest)

    return TrackPoint(str(path), load=load, digest=digest)
