"""Nothing trusted blindly: hostile pickles run no code, numbers are reproducible, and a number
that is not finite is reported with where it came from, never returned."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hessian_probe.cli import main
from hessian_probe.errors import NonFiniteError
from hessian_probe.journal import Journal
from hessian_probe.linalg import lanczos, slq
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.operators import DenseOperator, curvature_operator
from hessian_probe.problem import make_problem
from hessian_probe.results import from_state, to_state


class WritesAFile:
    """Unpickling this runs ``open(path, 'w').write('pwned')``: what a hostile checkpoint does."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- hostile pickles ------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["checkpoint", "data"])
def test_a_malicious_pickle_is_refused_and_runs_no_code(tmp_path, checkpoint, where):
    marker = tmp_path / "pwned.txt"
    hostile = tmp_path / "hostile.pt"
    payload = {"model_state_dict": mlp().state_dict(), "extra": WritesAFile(marker)} if where == "checkpoint" else \
        {"x": torch.rand(10, 64), "y": WritesAFile(marker)}
    torch.save(payload, hostile)
    args = ["--checkpoint", hostile, "--data", "digits"] if where == "checkpoint" else \
        ["--checkpoint", checkpoint, "--data", f"tensors:{hostile}"]
    result = invoke("trace", *args, "--model", "mlp", "--samples", 50, "--out", tmp_path / "out", "--quiet")
    assert not marker.exists(), "unpickling ran the file's code"
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "exec)" in lines[0], result.output
    assert "--safe-globals" not in lines[0]  # never suggested for a function that runs code


def test_safe_globals_allow_one_class_without_trusting_the_file(tmp_path):
    import argparse

    torch.manual_seed(0)
    weights = mlp().state_dict()
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1), "epoch": 3}, tmp_path / "timm.pth")
    common = ["eigs", "--checkpoint", tmp_path / "timm.pth", "--model", "mlp", "--data", "digits", "--samples", "64"]
    refused = invoke(*common, "--out", tmp_path / "a")
    assert refused.exit_code == 1 and "--safe-globals argparse.Namespace" in refused.output
    allowed = invoke(*common, "--safe-globals", "argparse.Namespace", "--out", tmp_path / "b")
    assert allowed.exit_code == 0, allowed.output
    # the allowance is for that class alone: a hostile object beside it is still refused and runs nothing
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1), "evil": WritesAFile(tmp_path / "pwned")},
               tmp_path / "both.pth")
    both = invoke("eigs", "--checkpoint", tmp_path / "both.pth", "--model", "mlp", "--data", "digits",
                  "--safe-globals", "argparse.Namespace", "--out", tmp_path / "c")
    assert both.exit_code == 1 and "builtins.exec" in both.output and not (tmp_path / "pwned").exists()
    bad = invoke(*common, "--safe-globals", "argparse", "--out", tmp_path / "d")
    assert bad.exit_code == 2 and "module.Name" in bad.output


def test_a_tampered_resume_piece_runs_no_code_and_is_recomputed(tmp_path):
    marker = tmp_path / "pwned.txt"
    journal = Journal.start(tmp_path, {"run": 1}, resume=False)
    torch.save(WritesAFile(marker), tmp_path / "partial" / "piece.pt")
    assert journal.own("piece", lambda: 42) == 42
    assert not marker.exists()
    assert Journal.start(tmp_path, {"run": 1}, resume=True).own("piece", lambda: 0) == 42  # saved safely


def test_saved_results_come_back_bit_for_bit():
    op = DenseOperator(torch.diag(torch.linspace(0.1, 3.0, 40, dtype=torch.float64)))
    result = slq(op, 12, 3, seed=1)
    back = from_state(torch.load(_roundtrip(to_state(result)), weights_only=True))
    assert back.trace_estimate == result.trace_estimate and back.n_steps == result.n_steps
    assert all(np.array_equal(a, b) for a, b in zip(back.nodes, result.nodes))
    with pytest.raises(ValueError, match="unknown result type"):
        from_state({"__result__": "Problem", "fields": {}})


def _roundtrip(state) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "state.pt"
    torch.save(state, path)
    return path


# --- determinism ----------------------------------------------------------------------------------

def test_the_same_inputs_and_seed_give_identical_json_numbers(tmp_path, checkpoint):
    records = []
    for run in range(2):
        result = invoke("spectrum", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--samples", 400,
                        "--steps", 25, "--probes", 4, "--top-k", 2, "--bottom-k", 1, "--seed", 7, "--json", "--quiet",
                        "--out", tmp_path / f"run{run}")
        assert result.exit_code == 0, result.output
        records.append(json.loads(result.stdout))
    for record in records:
        record.pop("provenance")
        for part in ("eigs", "trace", "slq"):
            record[part].pop("wall_time_s")
    assert records[0] == records[1]


# --- numerical guards -----------------------------------------------------------------------------

def _problem_with_a_poisoned_example(example: int, chunk: int = 25):
    x, y = load_digits(100, seed=0)
    x = x.double()
    torch.manual_seed(0)
    problem = make_problem(mlp(), (x, y), "cross_entropy", dtype=torch.float64, chunk_size=chunk)
    poisoned = [(bx.clone(), by) for bx, by in problem.batches]
    batch, row = divmod(example, chunk)
    poisoned[batch][0][row, 0] = math.nan  # one bad input value in one batch
    return _unvalidated(problem, poisoned)


def _unvalidated(problem, batches):
    """The problem with ``batches`` as they are (with_batches would refuse a non-finite loss at once)."""
    from dataclasses import replace

    return replace(problem, batches=tuple(batches))


def test_a_non_finite_product_names_its_batch_and_probe():
    op = curvature_operator(_problem_with_a_poisoned_example(60))
    with pytest.raises(NonFiniteError, match=r"product is not finite on batch 2 \(25 examples\) for probe\(s\) "
                                             r"\[0, 1, 2\] at Lanczos step 1"):
        slq(op, 5, 3)
    with pytest.raises(NonFiniteError, match=r"on batch 2 \(25 examples\) for vector\(s\) \[0\]"):
        op.matvec(torch.ones(op.size, dtype=torch.float64))
    with pytest.raises(NonFiniteError, match=r"the loss is not finite on batch 2"):
        op.problem.loss_value()
    with pytest.raises(NonFiniteError, match=r"the gradient is not finite on batch 2"):
        op.problem.gradient()


def test_lanczos_reports_breakdown_and_lost_orthogonality():
    small = DenseOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    run = lanczos(small, 10, n_probes=1)
    assert run.broke_down[0] and any("broke down at step 3" in w for w in run.warnings)
    # float32 with full reorthogonalisation and a large outlier: the basis stays orthogonal, no warning
    values = torch.cat([torch.tensor([1000.0]), torch.linspace(0, 1, 300)]).float()
    spiked = DenseOperator(torch.diag(values))
    assert not any("orthogonality" in w for w in lanczos(spiked, 120, n_probes=2).warnings)
    from hessian_probe.linalg.lanczos import LanczosProcess

    process = LanczosProcess(spiked, torch.ones(1, 301), capacity=8)
    for _ in range(6):
        process.step()
    process.basis[3] += 1e-2 * process.basis[1]  # corrupt the stored basis: the check must see it
    assert any("lost orthogonality" in w for w in process.health_warnings())
