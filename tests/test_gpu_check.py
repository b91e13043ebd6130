"""benchmarks/gpu_check.sh cannot rot (issue 18): its syntax and every option it passes to the
benchmarks are checked in the default run; a slow test runs it whole at toy sizes on the CPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_the_gpu_check_parses_and_passes_only_options_the_benchmarks_have():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    text = SCRIPT.read_text().replace("\\\n", " ")
    for script in ("hvp_cost.py", "compare.py"):
        calls = [line for line in text.splitlines() if f"benchmarks/{script}" in line]
        assert calls, script
        known = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True,
                               text=True, cwd=ROOT).stdout
        for option in {o for call in calls for o in re.findall(r"\s(--[a-z0-9-]+)", call)}:
            assert option in known, f"{script} has no {option}"


@pytest.mark.slow  # about a minute on 2 cores
def test_the_gpu_check_runs_whole_at_toy_sizes_on_the_cpu(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--dry-run"], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=900)
    assert done.returncode == 0, done.stderr
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert len(steps) == 6 and all("exit 0" in s for s in steps), steps
    assert (tmp_path / "compare-net.md").is_file() and (tmp_path / "hvp-net.json").is_file()
