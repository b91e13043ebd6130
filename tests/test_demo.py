"""The built-in demo through the CLI, and the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hessian_probe.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    started = time.perf_counter()
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--quiet"])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    return out, result.stdout, elapsed


def test_demo_writes_results_and_plots_in_under_a_minute(demo_run):
    out, output, elapsed = demo_run
    assert elapsed < 60  # the bar on the CI machine (about 15 s there)
    assert {"checkpoint.pt", "density.png", "density.pdf", "hessian", "ggn"} <= {p.name for p in out.iterdir()}
    assert "hessian" in output and "ggn" in output and "wrote" in output
    records = {}
    for kind in ("hessian", "ggn"):
        assert ({"result.json", "eigenvalues.csv", "density.png", "density.pdf"}
                <= {p.name for p in (out / kind).iterdir()})
        r = records[kind] = json.loads((out / kind / "result.json").read_text())
        assert r["operator"] == kind and r["provenance"]["command"] == "spectrum"
        assert r["n_params"] == 2410 and r["n_samples"] == 1797
        assert r["top_eigenvalues"] == sorted(r["top_eigenvalues"], reverse=True)
        assert r["bottom_eigenvalues"] == sorted(r["bottom_eigenvalues"])
        assert r["trace"]["stderr"] > 0 and len(r["slq"]["nodes"]) == len(r["slq"]["weights"]) == 8
        assert len(r["density"]["grid"]) == len(r["density"]["values"]) == 10_000
        assert all(r["eigs"]["top_converged"])
    hessian, ggn = records["hessian"], records["ggn"]
    assert hessian["bottom_eigenvalues"][0] < 0 <= ggn["bottom_eigenvalues"][0] + 1e-9
    # the GGN's bottom end is a near-zero cluster that 300 steps cannot resolve: flagged, not hidden
    if not all(ggn["eigs"]["bottom_converged"]):
        assert ggn["warnings"] and "*" in output
    assert np.isclose(hessian["trace"]["estimate"], hessian["slq"]["trace_estimate"], rtol=0.05)


def test_demo_checkpoint_is_a_user_checkpoint(demo_run, tmp_path):
    """The demo's own result is what `spectrum` gives on the saved checkpoint, Adam state included."""
    out, _, _ = demo_run
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model_state_dict", "optimizer_state_dict"} <= set(saved)
    assert all("exp_avg_sq" in s for s in saved["optimizer_state_dict"]["state"].values())
    again = CliRunner().invoke(main, ["spectrum", "--checkpoint", str(out / "checkpoint.pt"), "--model", "mlp",
                                      "--data", "digits", "--out", str(tmp_path), "--json", "--quiet"])
    assert again.exit_code == 0
    record = json.loads(again.stdout)
    demo_record = json.loads((out / "hessian" / "result.json").read_text())
    assert record["top_eigenvalues"] == demo_record["top_eigenvalues"]
    assert record["trace"]["estimate"] == demo_record["trace"]["estimate"]


SCRIPT = Path(sys.executable).parent / "hessian-probe"
SCRIPT = str(SCRIPT) if SCRIPT.exists() else shutil.which("hessian-probe")


@pytest.mark.skipif(SCRIPT is None, reason="console script not installed")
def test_installed_console_script_runs():
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout
    done = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "hessian-probe" in done.stdout


@pytest.mark.skipif(SCRIPT is None, reason="console script not installed")
def test_installed_console_script_analyses_and_refuses(demo_run, tmp_path):
    """A real process: the JSON it prints parses, and a bad input gives exit 1 and one stderr line."""
    out, _, _ = demo_run
    done = subprocess.run([SCRIPT, "trace", "--checkpoint", str(out / "checkpoint.pt"), "--model", "mlp",
                           "--data", "digits", "--products", "9", "--json", "--out", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["trace"]["n_probes"] == 3
    done = subprocess.run([SCRIPT, "spectrum", "--checkpoint", str(tmp_path / "missing.pt"), "--model", "mlp",
                           "--data", "digits"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip() == f"Error: checkpoint not found: {tmp_path / 'missing.pt'}"
