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
