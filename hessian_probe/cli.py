"""The hessian-probe command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hessian-probe")
def main() -> None:
    """Measure the curvature (Hessian, Gauss-Newton) of a PyTorch model's loss."""


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("hessian-probe-demo"),
              show_default=True, help="Folder for the checkpoint, results and plots.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON instead of the summary.")
def demo(out_dir: Path, seed: int, as_json: bool) -> None:
    """Train a small MLP on the bundled digits data and measure its Hessian and GGN spectra.

    \b
    Example:
      hessian-probe demo --out hessian-probe-demo
    """
    from .demo import run_demo, summary

    record = run_demo(out_dir, seed=seed)
    click.echo(json.dumps(record) if as_json else summary(record, out_dir))
