"""Build the API reference (HTML, from the docstrings) with pdoc: python docs/build_api.py OUT_DIR.

The public modules, in the order of the data flow: a Problem, its curvature operators, the Krylov
kernels, the analyses (spectrum, eigenvalues, learning rates), the training-loop helpers, loading
from files, results on disk, plots. pdoc imports them (no GPU needed) and writes one page each.
"""

from __future__ import annotations

import sys
from pathlib import Path

MODULES = ["hessian_probe", "hessian_probe.problem", "hessian_probe.losses", "hessian_probe.operators",
           "hessian_probe.linalg", "hessian_probe.analysis", "hessian_probe.training", "hessian_probe.loading",
           "hessian_probe.io", "hessian_probe.plots"]


def build(out: Path) -> list[Path]:
    import pdoc

    pdoc.render.configure(docformat="restructuredtext", footer_text="hessian-probe API")
    pdoc.pdoc(*MODULES, output_directory=out)
    return sorted(out.rglob("*.html"))


if __name__ == "__main__":
    pages = build(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api"))
    print(f"wrote {len(pages)} pages")
