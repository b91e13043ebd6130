"""The built-in demo through the CLI, and the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hessian_probe.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(main, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_results_and_plots(demo_run):
    out, output = demo_run
    assert {"result.json", "eigenvalues.csv", "density.png", "density.pdf", "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    assert "hessian" in output and "ggn" in output
    record = json.loads((out / "result.json").read_text())
    hessian, ggn = record["results"]
    for r in (hessian, ggn):
        assert {"operator", "n_params", "n_samples", "top_eigenvalues", "bottom_eigenvalues"} <= set(r)
        assert r["n_params"] == 2410 and r["n_samples"] == 1797
        assert r["top_eigenvalues"] == sorted(r["top_eigenvalues"], reverse=True)
        assert r["bottom_eigenvalues"] == sorted(r["bottom_eigenvalues"])
        assert r["trace"]["stderr"] > 0 and len(r["slq"]["nodes"]) == len(r["slq"]["weights"]) == 8
        assert len(r["density"]["grid"]) == len(r["density"]["values"]) == 10_000
        assert all(r["eigs"]["top_converged"])
    assert hessian["bottom_eigenvalues"][0] < 0 <= ggn["bottom_eigenvalues"][0] + 1e-9
    # the GGN's bottom end is a near-zero cluster that 300 steps cannot resolve: flagged, not hidden
    if not all(ggn["eigs"]["bottom_converged"]):
        assert ggn["warnings"]
    assert np.isclose(hessian["trace"]["estimate"], hessian["slq"]["trace_estimate"], rtol=0.05)


SCRIPT = Path(sys.executable).parent / "hessian-probe"
SCRIPT = str(SCRIPT) if SCRIPT.exists() else shutil.which("hessian-probe")


@pytest.mark.skipif(SCRIPT is None, reason="console script not installed")
def test_installed_console_script_runs():
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout
    done = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "hessian-probe" in done.stdout
