"""Nothing lost: a run killed (SIGKILL), interrupted (SIGINT) or terminated (SIGTERM) mid-way
resumes with --resume and gives exactly the numbers of an uninterrupted run; the output folder is
never overwritten by accident, and a resume with other inputs or settings is refused.

Every test drives a real ``python -m hessian_probe`` process and signals it while it works.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPECTRUM = ["spectrum", "--model", "mlp", "--data", "digits", "--probes", "12", "--probe-block", "2", "--steps", "40",
            "--top-k", "2", "--bottom-k", "1", "--quiet"]
LR = ["lr", "--model", "mlp", "--data", "digits", "--samples", "600", "--batch-sizes", "16,32,64,128", "--batches", "3",
      "--density-steps", "0", "--quiet"]


def numbers(record: object) -> object:
    """A record without what may differ between runs: provenance, timings, and the digest of lr_state.pt
    (which holds the timings too)."""
    if isinstance(record, dict):
        return {k: numbers(v) for k, v in record.items()
                if k not in ("provenance", "state_file") and "time" not in k and not k.endswith("_s")}
    if isinstance(record, list):
        return [numbers(v) for v in record]
    return record


def command(args: list[str], checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hessian_probe", *args, "--checkpoint", str(checkpoint), "--out", str(out), *extra]


def run(args: list[str], checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, checkpoint, out, *extra), capture_output=True, text=True, timeout=600)


def interrupt(args: list[str], checkpoint: Path, out: Path, how: signal.Signals,
              pieces: int = 2) -> subprocess.CompletedProcess:
    """Start a run, wait until ``pieces`` pieces are saved, then send it ``how``; what it returned."""
    process = subprocess.Popen(command(args, checkpoint, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               # even if ours is ignored
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while len(list((out / "partial").glob("*.pt"))) < pieces:
        assert process.poll() is None, f"the run ended before it could be interrupted: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no pieces saved in 300 s"
        time.sleep(0.05)
    for _ in range(10 if how == signal.SIGINT else 1):  # Ctrl-C pressed again and again while it stops
        process.send_signal(how)
        time.sleep(0.02)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, checkpoint) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("whole")
    records = {}
    for name, args, result in (("spectrum", SPECTRUM, "result.json"), ("lr", LR, "lr.json")):
        done = run(args, checkpoint, out / name)
        assert done.returncode == 0, done.stderr
        records[name] = json.loads((out / name / result).read_text())
        assert not (out / name / "partial").exists(), "a finished run leaves no pieces behind"
    return records


@pytest.mark.parametrize("how", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM],
                         ids=["SIGKILL", "SIGINT", "SIGTERM"])  # SIGINT and SIGTERM take the same clean-stop path
def test_an_interrupted_spectrum_resumes_to_the_same_numbers(tmp_path, checkpoint, uninterrupted, how):
    out = tmp_path / "out"
    stopped = interrupt(SPECTRUM, checkpoint, out, how)
    if how == signal.SIGKILL:
        assert stopped.returncode == -signal.SIGKILL
    else:  # a clean stop: one line saying how to go on
        assert stopped.returncode == (130 if how == signal.SIGINT else 143), stopped.stderr
        assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
        assert len(stopped.stderr.strip().splitlines()) == 1, stopped.stderr
    saved = len(list((out / "partial").glob("*.pt")))
    assert saved >= 2 and not (out / "result.json").exists()
    resumed = run(SPECTRUM, checkpoint, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "result.json").read_text())
    assert record["provenance"]["resumed_pieces"] >= 2
    assert numbers(record) == numbers(uninterrupted["spectrum"])
    assert not (out / "partial").exists()


def test_an_interrupted_batch_size_scan_resumes_to_the_same_numbers(tmp_path, checkpoint, uninterrupted):
    out = tmp_path / "out"
    interrupt(LR, checkpoint, out, signal.SIGKILL, pieces=3)
    resumed = run(LR, checkpoint, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "lr.json").read_text())
    assert record["provenance"]["resumed_pieces"] >= 3
    assert numbers(record) == numbers(uninterrupted["lr"])


def test_a_resume_with_other_settings_is_refused(tmp_path, checkpoint):
    out = tmp_path / "out"
    interrupt(SPECTRUM, checkpoint, out, signal.SIGKILL)
    other = [*SPECTRUM[:-1], "--seed", "5", "--quiet"]
    refused = run(other, checkpoint, out, "--resume")
    assert refused.returncode == 2
    assert "other inputs or settings" in refused.stderr and "seed" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_the_output_folder_is_never_overwritten_by_accident(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["trace", "--model", "mlp", "--data", "digits", "--samples", "100", "--products", "6", "--quiet"]
    refused = run(args, checkpoint, out)
    assert refused.returncode == 2 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert (out / "notes.txt").read_text() == "mine" and not (out / "result.json").exists()
    assert run(args, checkpoint, out, "--overwrite").returncode == 0 and (out / "result.json").exists()
    finished = run(args, checkpoint, out, "--resume")
    assert finished.returncode == 2 and "no interrupted run" in finished.stderr
    both = run(args, checkpoint, out, "--resume", "--overwrite")
    assert both.returncode == 2 and "choose one" in both.stderr


@pytest.mark.slow  # 25-45 s; the resume path is the spectrum's and the scan's, tested above
def test_an_interrupted_validation_resumes_to_the_same_thresholds(tmp_path, checkpoint):
    validate = ["validate-lr", "--model", "mlp", "--data", "digits", "--samples", "400", "--batch-sizes", "16,64",
                "--optimizers", "sgd,adam", "--steps", "30", "--seeds", "1", "--precision", "0.1", "--quiet"]
    scan = ["lr", "--model", "mlp", "--data", "digits", "--samples", "400", "--batch-sizes", "16,64", "--batches", "2",
            "--density-steps", "0", "--quiet"]
    for folder in ("whole", "cut"):  # validate-lr continues in lr's folder
        assert run(scan, checkpoint, tmp_path / folder).returncode == 0
    whole = run(validate, checkpoint, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    interrupt(validate, checkpoint, tmp_path / "cut", signal.SIGKILL, pieces=1)
    resumed = run(validate, checkpoint, tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    records = [json.loads((tmp_path / folder / "validation.json").read_text()) for folder in ("whole", "cut")]
    assert records[1]["provenance"]["resumed_pieces"] >= 1
    for key in ("validation", "validation_no_progress"):
        assert numbers(records[1][key]) == numbers(records[0][key])
        assert len(records[0][key]) == 4  # 2 sizes x 2 optimizers


@pytest.mark.slow  # 30 s; the journal's resume is the spectrum's and the scan's, tested above
def test_an_interrupted_track_resumes_to_the_same_rows(tmp_path, checkpoint):
    """Issue 16: track resumes per checkpoint -- the finished checkpoints are read back, not measured
    again, and the rows equal an uninterrupted run's."""
    from hessian_probe.demo import train_digits_mlp

    files = []
    for steps in (5, 10, 15, 20):
        files.append(tmp_path / f"epoch_{steps}.pt")
        train_digits_mlp(files[-1], seed=0, steps=steps)

    def launch(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "hessian_probe", "track", *map(str, files), "--model", "mlp", "--data",
                "digits", "--samples", "300", "--batch-size", "32", "--trace-products", "0", "--quiet", "--out",
                str(out), *extra]

    done = subprocess.run(launch(tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    process = subprocess.Popen(launch(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / "partial").glob("*.pt"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "no pieces saved"
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=60)
    resumed = subprocess.run(launch(out, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "track.json").read_text())
    assert record["provenance"]["resumed_pieces"] >= 2
    assert numbers(record) == numbers(json.loads((tmp_path / "whole" / "track.json").read_text()))
