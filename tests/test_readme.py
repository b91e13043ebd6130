"""The README's worked example runs as written: its files and shell commands, in a fresh folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BIN = Path(sys.executable).parent


def examples() -> dict[str, str]:
    """Code blocks preceded by ``<!-- example: NAME -->``, by NAME."""
    pattern = re.compile(r"<!-- example: (\S+) -->\s*```\w*\n(.*?)```", re.S)
    return dict(pattern.findall(README.read_text()))


@pytest.mark.skipif(not (BIN / "hessian-probe").exists(), reason="console script not installed next to python")
def test_worked_example_runs(tmp_path):
    blocks = examples()
    assert {"mynet.py", "train.py", "shell"} <= set(blocks)
    for name in ("mynet.py", "train.py"):
        (tmp_path / name).write_text(blocks[name])
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks["shell"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    hessian = json.loads((tmp_path / "mynet-hessian" / "result.json").read_text())
    batch = json.loads((tmp_path / "mynet-batch128" / "result.json").read_text())
    layer = json.loads((tmp_path / "mynet-last-layer" / "result.json").read_text())
    assert hessian["n_params"] == 64 * 64 + 64 + 64 * 10 + 10 and hessian["n_samples"] == 1797
    assert batch["n_samples"] == 128 and layer["n_params"] == 650
    assert (tmp_path / "mynet-spectra.png").exists() and (tmp_path / "mynet-last-layer" / "eigenvectors.pt").exists()
    assert "top    eigenvalues" in done.stdout


def test_library_learning_rate_example_runs(tmp_path):
    """The README's Python learning-rate example runs as written and prints a rate and its check."""
    code = examples()["library-lr"]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = done.stdout.strip().splitlines()[-2:]
    assert float(first.split()[0]) > 0 and "momentum_mss" in first
    measured, ratio = (float(v) for v in second.split())
    assert measured > 0 and ratio > 0
