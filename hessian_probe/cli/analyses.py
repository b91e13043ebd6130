"""spectrum, eigs, trace: each parses its options and makes one library call."""

from __future__ import annotations

import click

from ..runtime import torchrun as distributed
from .options import BASIS_OPTION, eigenvalue_options, with_options
from .running import analysis_command

# --- analysis commands ------------------------------------------------------------------------

@analysis_command("spectrum")
@click.option("--steps", type=click.IntRange(min=2), default=80, show_default=True, help="Lanczos steps per SLQ probe.")
@click.option("--probes", type=click.IntRange(min=1), default=8, show_default=True,
              help="SLQ probes (run in lockstep).")
@with_options(eigenvalue_options(bottom_k=3, tol_help="Relative Ritz residual for extremal eigenvalues.",
                                 max_steps_help="Lanczos step budget for eigenvalues."))
@click.option("--trace-products", type=click.IntRange(min=3), default=99, show_default=True,
              help="Operator products for the trace estimate.")
@click.option("--trace-method", type=click.Choice(["hutchpp", "hutchinson"]), default="hutchpp", show_default=True,
              help="Hutch++ (lower variance for PSD operators) or plain Hutchinson.")
@click.option("--reorth", type=click.Choice(["full", "none"]), default="full", show_default=True,
              help="SLQ reorthogonalisation. none keeps no Lanczos basis (memory 2 x probes x P): the density and "
                   "trace stay right (ghost copies of outliers share their weight); eigenvalues still come from "
                   "their own reorthogonalised run.")
@BASIS_OPTION
@click.option("--probe-block", type=click.IntRange(min=1), default=None,
              help="Run the SLQ probes in blocks of this many [default: all at once]: less memory, and each "
                   "finished block is saved for --resume.")
def spectrum(op, *, seed, progress, out_dir, loaded, journal, steps, probes, top_k, bottom_k, tol, max_steps,
             trace_products, trace_method, reorth, basis, probe_block):
    """Spectral density (SLQ), extremal eigenvalues and trace.

    Writes result.json, eigenvalues.csv, density.png and density.pdf.

    \b
    Example (the demo's checkpoint):
      hessian-probe spectrum --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits
    """
    from ..analysis import spectrum as run_spectrum

    return run_spectrum(op, n_steps=steps, n_probes=probes, top_k=top_k, bottom_k=bottom_k, tol=tol,
                          max_steps=max_steps, trace_products=trace_products, trace_method=trace_method,
                          seed=seed, progress=progress, reorth=reorth, basis=basis, probe_block=probe_block,
                          pieces=journal), []


@analysis_command("eigs")
@with_options(eigenvalue_options(bottom_k=0, tol_help="Relative Ritz residual |A v - theta v| <= tol |theta|.",
                                 max_steps_help="Lanczos steps (or power iterations per eigenvalue) before giving up."))
@click.option("--method", type=click.Choice(["lanczos", "power"]), default="lanczos", show_default=True)
@click.option("--eigenvectors/--no-eigenvectors", "save_vectors", is_flag=True,
              help="Also save the eigenvectors (rows, per-parameter layout in the file) to eigenvectors.pt.")
@BASIS_OPTION
def eigs(op, *, seed, progress, out_dir, loaded, journal, top_k, bottom_k, tol, max_steps, method, save_vectors, basis):
    """Extremal eigenvalues with Ritz residuals and converged flags.

    Writes result.json and eigenvalues.csv (and eigenvectors.pt with --eigenvectors).

    \b
    Example: the 5 largest and 3 smallest Hessian eigenvalues of the last layer
      hessian-probe eigs --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits \\
        --top-k 5 --bottom-k 3 --params 2
    """
    from ..analysis.eigenvalues import eigenvalues

    report = eigenvalues(op, top_k, bottom_k, tol=tol, max_steps=max_steps, method=method, seed=seed, basis=basis,
                         return_eigenvectors=save_vectors, progress=progress, pieces=journal)
    if not save_vectors or not distributed.is_main():
        return report, []
    out_dir.mkdir(parents=True, exist_ok=True)
    from ..io.saved import save_eigenvectors

    save_eigenvectors(report.eigs, op.space, out_dir / "eigenvectors.pt")
    return report, ["eigenvectors.pt"]


@analysis_command("trace")
@click.option("--products", type=click.IntRange(min=3), default=99, show_default=True,
              help="Operator products to spend (Hutch++ splits them in three).")
@click.option("--method", type=click.Choice(["hutchpp", "hutchinson"]), default="hutchpp", show_default=True,
              help="Hutch++ (lower variance for PSD operators) or plain Hutchinson.")
def trace(op, *, seed, progress, out_dir, loaded, journal, products, method):
    """Trace by Hutch++ or Hutchinson, with its standard error.

    \b
    Example:
      hessian-probe trace --checkpoint hessian-probe-demo/checkpoint.pt --model mlp --data digits --operator ggn
    """
    from ..analysis.eigenvalues import trace as estimate_trace

    return estimate_trace(op, products, method=method, seed=seed, progress=progress, pieces=journal), []
