"""The hessian-probe command line (commands are added by the CLI work; see README)."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hessian-probe")
def main() -> None:
    """Measure the curvature (Hessian, Gauss-Newton) of a PyTorch model's loss."""
