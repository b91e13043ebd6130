"""track (issue 16): checkpoints in training order, each row's lambda_max the `eigs --top-k 1`
of that file, Adam's preconditioned sharpness and the stability lines of each checkpoint's rate."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import adam_steps

from hessian_probe import curvature_operator, extremal_eigs, make_problem
from hessian_probe.analysis.adam import saved_diagonal
from hessian_probe.analysis.optimizer_state import optimizer_state_of, saved_adam_state
from hessian_probe.analysis.track import TrackPoint, in_training_order, stability_lines, track
from hessian_probe.cli import main
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.operators.preconditioned import PreconditionedOperator

OPTIONS = ["--model", "mlp", "--data", "digits", "--samples", "150", "--quiet"]


@pytest.fixture(scope="module")
def run_checkpoints(tmp_path_factory):
    """Four checkpoints of a short SGD run (lr 0.3, momentum 0.5), named so that name order is not
    training order: each carries its step."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    x, y = load_digits(None, seed=0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    names = {0: "c.pt", 20: "a.pt", 40: "d.pt", 60: "b.pt"}
    for step in range(61):
        if step in names:
            torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                        "step": step}, folder / names[step])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return folder, names


def test_track_orders_by_saved_step_and_each_lambda_max_is_that_files_eigs(run_checkpoints, tmp_path):
    folder, names = run_checkpoints
    out = tmp_path / "t"
    result = CliRunner().invoke(main, ["track", str(folder / "*.pt"), *OPTIONS, "--batch-size", "32",
                                       "--trace-products", "9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "track.json").read_text())
    assert record["order"] == "step" and [r["step"] for r in record["rows"]] == [0, 20, 40, 60]
    assert [r["name"].rsplit("/", 1)[-1] for r in record["rows"]] == [names[s] for s in (0, 20, 40, 60)]
    with (out / "track.csv").open() as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == ["0", "20", "40", "60"]
    for row in record["rows"][::3]:  # the first and last: a separate eigs on that file
        eigs = CliRunner().invoke(main, ["eigs", "--checkpoint", row["name"], *OPTIONS, "--top-k", "1", "--json",
                                         "--out", str(tmp_path / f"e{row['step']}")])
        assert eigs.exit_code == 0, eigs.output
        assert row["lambda_max"] == pytest.approx(json.loads(eigs.stdout)["top_eigenvalues"][0], rel=1e-10)
        assert row["lr"] == 0.3 and row["momentum"] == 0.5 and row["optimizer"] == "sgd"
        assert row["line_sgd"] == pytest.approx(2 / 0.3) and row["line_momentum"] == pytest.approx(2 * 1.5 / 0.3)
        assert row["batch_size"] == 32 and row["batch_lambda_max"] > 0 and row["trace_stderr"] is not None
    assert (out / "track.png").stat().st_size > 10_000
    redrawn = CliRunner().invoke(main, ["plot", str(out), "--out", str(tmp_path / "again.png")])  # issue 19, item 7
    assert redrawn.exit_code == 0 and (tmp_path / "again.png").stat().st_size > 10_000, redrawn.output
    given = CliRunner().invoke(main, ["track", str(folder / "d.pt"), str(folder / "c.pt"), *OPTIONS, "--lr", "0.1",
                                      "--trace-products", "0", "--json", "--out", str(tmp_path / "g")])
    rows = json.loads(given.stdout)["rows"]
    assert [r["step"] for r in rows] == [0, 40] and rows[0]["line_sgd"] == pytest.approx(20.0)
    assert rows[0]["sources"]["lr"] == "option" and rows[0]["trace"] is None


def test_training_order_falls_back_to_the_number_in_the_name_then_as_given():
    points = [TrackPoint(n) for n in ("run/epoch_10.pt", "run/epoch_9.pt", "run/epoch_100.pt")]
    ordered, order = in_training_order(points)
    assert order == "name" and [p.name for p in ordered] == ["run/epoch_9.pt", "run/epoch_10.pt", "run/epoch_100.pt"]
    mixed = [TrackPoint("last.pt"), TrackPoint("best.pt")]
    assert in_training_order(mixed) == (mixed, "given")
    assert in_training_order([TrackPoint("b", step=5), TrackPoint("a", step=2)])[0][0].name == "a"


def test_adam_checkpoints_get_the_preconditioned_sharpness_and_its_line():
    torch.manual_seed(0)
    x, y = load_digits(120, seed=0)
    model = mlp(hidden=8)
    adam = adam_steps(model, x, y, F.cross_entropy, 10)
    problem = make_problem(model, (x, y), "cross_entropy", dtype=torch.float64)
    state = adam.state_dict()
    result = track([TrackPoint("adam.pt", step=10, problem=problem, optimizer_state=state)], trace_products=0)
    row = result.rows[0]
    saved = saved_adam_state(optimizer_state_of(state, problem), problem)
    direct = extremal_eigs(PreconditionedOperator(curvature_operator(problem, "hessian"),
                                                  saved_diagonal(saved, 0.999, 1e-8)), 1, 0, tol=1e-6)
    assert row.optimizer == "adam" and row.adam_sharpness == pytest.approx(direct.top_eigenvalues[0], rel=1e-6)
    assert row.line_adam == pytest.approx(38 / 0.01) and row.line_sgd is None
    from hessian_probe.plots import plot_track

    assert len(plot_track(result).axes) == 2  # a typed result draws too: sharpness and Adam's panel
    assert stability_lines(None, 0.9, 0.9, "sgd") == {"line_sgd": None, "line_momentum": None, "line_adam": None}


def test_two_files_with_the_same_bytes_keep_their_own_rows_when_pieces_are_saved():
    """A journal that hands back saved pieces by key (as --resume does) must not give a copy of a
    checkpoint (Lightning's last.ckpt) the row of the file it copies."""
    class Saved:
        def __init__(self) -> None:
            self.pieces = {}

        def own(self, key, compute):
            return self.shared(key, compute)

        def shared(self, key, compute):
            if key not in self.pieces:
                self.pieces[key] = compute()
            return self.pieces[key]

    torch.manual_seed(0)
    x, y = load_digits(60, seed=0)
    problem = make_problem(mlp(hidden=4), (x, y), "cross_entropy", dtype=torch.float64)
    points = [TrackPoint(name, step, problem, digest="ab" * 32) for name, step in (("epoch_3.pt", 3), ("last.pt", 9))]
    result = track(points, trace_products=0, pieces=Saved())
    assert [(r.name, r.step) for r in result.rows] == [("epoch_3.pt", 3), ("last.pt", 9)]
    assert result.rows[0].lambda_max == result.rows[1].lambda_max
    tied = track([TrackPoint("run/a.pt", 5, problem), TrackPoint("run/b.pt", 5, problem)], trace_products=0)
    assert any("share a step" in w for w in tied.warnings)


def test_a_run_that_fails_before_saving_a_piece_leaves_nothing_to_overwrite(run_checkpoints, tmp_path):
    """Issue 17, item 7: the corrected rerun needs no --overwrite when the failed run saved nothing."""
    folder, _ = run_checkpoints
    out = tmp_path / "t"
    failed = CliRunner().invoke(main, ["track", str(folder / "c.pt"), *OPTIONS, "--batch-size", "500",
                                       "--trace-products", "0", "--out", str(out)])  # refused after the journal began
    assert failed.exit_code == 2 and "larger than the sample" in failed.stderr
    assert not (out / "partial").exists()
    rerun = CliRunner().invoke(main, ["track", str(folder / "c.pt"), *OPTIONS, "--trace-products", "0", "--out",
                                      str(out)])
    assert rerun.exit_code == 0, rerun.output
