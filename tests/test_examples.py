"""The examples run (issue 16: examples/ is run by a test), at toy length."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_curvature_over_training_example_trains_monitors_and_tracks(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "curvature_over_training.py"), "--out", str(tmp_path),
                           "--steps", "100", "--checkpoints", "3", "--track-samples", "100"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "track" / "track.json").read_text())
    assert [r["step"] for r in record["rows"]] == [0, 50, 100] and all(r["lr"] for r in record["rows"])
    with (tmp_path / "sharpness.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [0, 50, 100]
    assert (tmp_path / "monitor.png").stat().st_size > 10_000 and (tmp_path / "track" / "track.png").is_file()


def test_the_notebook_example_runs_cell_by_cell_and_draws_on_its_own_axes(tmp_path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "notebook.py"), str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "converged True" in done.stdout and (tmp_path / "density.png").stat().st_size > 10_000


def test_the_api_reference_builds_from_the_docstrings(tmp_path):
    import pytest

    pytest.importorskip("pdoc")
    sys.path.insert(0, str(EXAMPLES.parent / "docs"))
    try:
        from build_api import build
    finally:
        sys.path.pop(0)
    pages = {p.relative_to(tmp_path).as_posix() for p in build(tmp_path)}
    assert {"hessian_probe.html", "hessian_probe/analysis.html", "hessian_probe/training.html",
            "hessian_probe/plots.html", "hessian_probe/operators.html"} <= pages
    training = (tmp_path / "hessian_probe" / "training.html").read_text()
    assert "SharpnessMonitor" in training and "CurvatureLearner" in training
    assert "learning_rates" in (tmp_path / "hessian_probe" / "analysis.html").read_text()
