"""Hostile and careless inputs (issue 14): nothing deleted or replaced that hessian-probe did not
write, no mixed or silently wrong numbers, one clear line for every refusal.

Each case asserts the exit code, exactly one ``Error:`` line and no traceback, and that the
planted files are untouched."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hessian_probe.cli import main
from hessian_probe.files import OutputLock
from hessian_probe.journal import Journal

TRACE = ["trace", "--model", "mlp", "--data", "digits", "--samples", "60", "--products", "3", "--quiet"]


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, code: int, *words: str) -> str:
    """The run failed with ``code`` and one ``Error:`` line holding ``words``; that line."""
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


# --- own only what we wrote ------------------------------------------------------------------------

def test_a_second_run_in_a_locked_folder_is_refused(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    lock = OutputLock(out).acquire()  # another run holds the folder
    try:
        refused(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out), 2, "another hessian-probe run", "--out")
    finally:
        lock.release()
    ok(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out))  # free again
    assert not (out / ".hessian-probe.lock").exists()


def test_planted_files_survive_overwrite_and_resume(tmp_path, checkpoint):
    out = tmp_path / "out"
    ok(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out))
    (out / "partial").mkdir()
    (out / "partial" / "notes.tex").write_text("mine")
    (out / "partial" / "data.pt").write_bytes(b"not a piece")
    (out / "notes.txt").write_text("mine too")
    ok(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out, "--overwrite"))
    assert (out / "partial" / "notes.tex").read_text() == "mine"
    assert (out / "partial" / "data.pt").read_bytes() == b"not a piece"
    assert (out / "notes.txt").read_text() == "mine too"
    assert json.loads((out / "result.json").read_text())["trace"]


def test_a_namesake_we_did_not_write_is_never_replaced(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("the user's own")
    refused(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out, "--overwrite"), 2, "not written by hessian-probe")
    assert (out / "result.json").read_text() == "the user's own"


def test_outputs_replace_symbolic_links_instead_of_writing_through_them(tmp_path, checkpoint):
    out = tmp_path / "out"
    outside = tmp_path / "outside.json"
    outside.write_text("outside")
    ok(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out))
    (out / "result.json").unlink()
    (out / "result.json").symlink_to(outside)
    ok(invoke(*TRACE, "--checkpoint", checkpoint, "--out", out, "--overwrite"))
    assert outside.read_text() == "outside"
    assert not (out / "result.json").is_symlink() and json.loads((out / "result.json").read_text())["trace"]


def test_the_pdf_twin_of_a_plot_is_not_replaced_unless_we_wrote_it(tmp_path, checkpoint):
    out = tmp_path / "spec"
    ok(invoke("spectrum", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--samples", 60,
              "--steps", 8, "--probes", 2, "--top-k", 1, "--bottom-k", 0, "--trace-products", 3, "--quiet",
              "--out", out))
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 the user's report")
    result = ok(invoke("plot", out, "--out", tmp_path / "report.png"))
    assert (tmp_path / "report.pdf").read_bytes() == b"%PDF-1.4 the user's report"
    assert "kept" in result.output and (tmp_path / "report.png").stat().st_size > 0
    ok(invoke("plot", out, "--out", tmp_path / "other.png"))
    ok(invoke("plot", out, "--out", tmp_path / "other.png"))  # our own twin is replaced
    assert b"hessian-probe" in (tmp_path / "other.pdf").read_bytes()


def _journal(folder: Path, resume: bool) -> Journal:
    return Journal.start(folder, {"command": "test"}, resume=resume)


def test_a_damaged_or_foreign_piece_is_computed_again(tmp_path):
    journal = _journal(tmp_path, resume=False)
    journal.own("a", lambda: 1.0)
    journal.own("b", lambda: 2.0)
    pieces = tmp_path / "partial"
    flipped = bytearray((pieces / "a.pt").read_bytes())
    flipped[len(flipped) // 2] ^= 0x10  # one bit in the middle of the payload
    (pieces / "a.pt").write_bytes(bytes(flipped))
    (pieces / "c.pt").write_bytes((pieces / "b.pt").read_bytes())  # a piece copied over another name
    resumed = _journal(tmp_path, resume=True)
    assert resumed.own("a", lambda: 10.0) == 10.0
    assert resumed.own("b", lambda: 20.0) == 2.0
    assert resumed.own("c", lambda: 30.0) == 30.0
    assert resumed.rejected == 2 and resumed.resumed == 1
    other = tmp_path / "other"
    _journal(other, resume=False).own("b", lambda: 5.0)
    (pieces / "b.pt").write_bytes((other / "partial" / "b.pt").read_bytes())  # another run's piece
    assert _journal(tmp_path, resume=True).own("b", lambda: 20.0) == 20.0


SPECTRUM = ["spectrum", "--model", "mlp", "--data", "digits", "--samples", "60", "--probes", "4", "--probe-block", "2",
            "--steps", "10", "--top-k", "1", "--quiet"]


def test_the_record_counts_the_pieces_it_computed_again(tmp_path, checkpoint, monkeypatch):
    out = tmp_path / "out"
    args = [*SPECTRUM, "--checkpoint", checkpoint, "--out", out]
    with monkeypatch.context() as patch:
        patch.setattr(Journal, "finish", lambda self: None)  # as if killed after the last piece
        ok(invoke(*args))
    pieces = sorted((out / "partial").glob("*.pt"))
    assert len(pieces) >= 2
    damaged = bytearray(pieces[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    pieces[0].write_bytes(bytes(damaged))
    result = ok(invoke(*args, "--resume"))
    assert "1 damaged or foreign piece(s) in partial/ computed again" in result.output
    provenance = json.loads((out / "result.json").read_text())["provenance"]
    assert provenance["rejected_pieces"] == 1 and provenance["resumed_pieces"] == len(pieces) - 1


def test_a_second_ctrl_c_during_the_clean_stop_changes_nothing(tmp_path, checkpoint, monkeypatch):
    """Ctrl-C after two pieces, then a real second SIGINT while the stop counts them: still one line
    naming the saved pieces, exit 130, and --resume reads both back."""
    import signal

    from hessian_probe import journal

    save, count = journal.Journal._save, journal.saved_pieces

    def save_then_interrupt(self, key, value):
        save(self, key, value)
        if self.saved == 2:
            raise KeyboardInterrupt

    def count_while_pressed_again(folder):
        os.kill(os.getpid(), signal.SIGINT)
        return count(folder)

    out = tmp_path / "out"
    args = [*SPECTRUM, "--checkpoint", checkpoint, "--out", out]
    with monkeypatch.context() as patch:
        patch.setattr(journal.Journal, "_save", save_then_interrupt)
        patch.setattr(journal, "saved_pieces", count_while_pressed_again)
        refused(invoke(*args), 130, "interrupted (Ctrl-C): 2 finished piece(s) saved", "--resume")
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # until the process ends (conftest restores it)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ok(invoke(*args, "--resume"))
    assert json.loads((out / "result.json").read_text())["provenance"]["resumed_pieces"] == 2


def _interrupted(*_args, **_kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_outside_an_analysis_run_is_one_line_and_130(tmp_path, monkeypatch):
    monkeypatch.setattr("hessian_probe.io.saved.read_plottable", _interrupted)
    result = invoke("plot", tmp_path / "result.json")
    assert result.exit_code == 130 and result.stderr.strip().splitlines() == ["Error: interrupted (Ctrl-C)"]


def test_a_caller_that_goes_on_gets_its_ctrl_c_back(tmp_path, monkeypatch):
    """standalone_mode=False (a script, a notebook): the handlers are restored after the stop."""
    import signal

    import click

    monkeypatch.setattr("hessian_probe.io.saved.read_plottable", _interrupted)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(click.ClickException, match="interrupted"):
        main.main(["plot", str(tmp_path / "result.json")], standalone_mode=False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_resume_after_the_model_code_changed_is_refused(tmp_path, checkpoint, monkeypatch):
    code = tmp_path / "net.py"
    code.write_text("from hessian_probe.loading.builtin_models import mlp\n\ndef make():\n    return mlp()\n")
    out = tmp_path / "out"
    args = [*TRACE, "--checkpoint", checkpoint, "--model", f"{code}:make", "--out", out]
    monkeypatch.setattr(Journal, "finish", lambda self: None)  # as if killed after the last piece
    ok(invoke(*args))
    code.write_text(code.read_text() + "# edited\n")
    refused(invoke(*args, "--resume"), 2, "--resume", "code_sha256")


# --- numbers checked at the door --------------------------------------------------------------------

def test_non_finite_regression_targets_are_refused(tmp_path, checkpoint):
    x, y = torch.randn(40, 64), torch.randn(40, 10)
    y[3, 2] = float("nan")
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    refused(invoke(*TRACE[:3], "--data", f"tensors:{tmp_path / 'data.pt'}", "--loss", "mse", "--products", 3,
                   "--checkpoint", checkpoint, "--out", tmp_path / "o", "--quiet"), 1, "non-finite target")


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_stored_as_non_floats_are_refused(tmp_path, dtype):
    from hessian_probe.loading.builtin_models import mlp

    state = mlp().state_dict()
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].to(dtype) if dtype != torch.bool else state[key] > 0
    torch.save(state, tmp_path / "w.pt")
    refused(invoke(*TRACE, "--checkpoint", tmp_path / "w.pt", "--out", tmp_path / "o"), 1, key, "re-save")


@pytest.mark.parametrize("args", [
    ["spectrum", "--tol", "nan"],
    ["spectrum", "--tol", "inf"],
    ["lr", "--safety", "nan"],
    ["validate-lr", "--blowup", "inf"],
    ["validate-lr", "--precision", "nan"],
    ["lr", "--momentum", "nan"],
    ["lr", "--weight-decay", "inf"],
], ids=lambda a: " ".join(a))
def test_non_finite_option_values_are_refused(tmp_path, checkpoint, args):
    result = invoke(*args, "--model", "mlp", "--data", "digits", "--checkpoint", checkpoint, "--out", tmp_path / "o",
                    "--quiet")
    assert result.exit_code == 2 and "finite" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_a_huge_step_count_is_clamped_to_the_dimension(tmp_path, checkpoint):
    from hessian_probe.analysis.spectrum import spectrum
    from hessian_probe.operators import DenseOperator

    class Tiny(DenseOperator):
        name = "dense"
        problem = type("P", (), {"n_samples": 1})()

    op = Tiny(torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64)))
    result = spectrum(op, n_steps=10**12, n_probes=2, top_k=1, bottom_k=1, trace_products=3)
    assert result.settings["n_steps"] == 6 and result.settings["n_steps_requested"] == 10**12
    assert result.eigs.top_eigenvalues[0] == pytest.approx(6.0)


# --- user code that misbehaves ----------------------------------------------------------------------

NETS = '''
import sys
import torch
import torch.nn.functional as F
from torch import nn
from hessian_probe.loading.builtin_models import mlp


class ForcedDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return F.dropout(self.net(x), 0.3, training=True)


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x) * (1 + 0.1 * self.calls)


class BatchStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.norm = nn.BatchNorm1d(10, affine=False, track_running_stats=False)

    def forward(self, x):
        return self.norm(self.net(x))


class WithNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()
        self.norm = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.norm(self.net(x))


def forced_dropout():
    return ForcedDropout()


def with_norm():
    return WithNorm()


def counting():
    return Counting()


def batch_stats():
    return BatchStats()


def random_loss(outputs, targets):
    return F.cross_entropy(outputs, targets) * (1 + 0.1 * torch.rand(()))


def exits():
    sys.exit(3)


def on_meta():
    with torch.device("meta"):
        return mlp()
'''


@pytest.fixture
def nets(tmp_path, checkpoint):
    """A module of misbehaving factories and a checkpoint for each (the demo MLP's weights under net.)."""
    (tmp_path / "nets.py").write_text(NETS)
    weights = torch.load(checkpoint, weights_only=True)["model_state_dict"]
    torch.save({f"net.{k}": v for k, v in weights.items()}, tmp_path / "wrapped.pt")
    return tmp_path


@pytest.mark.parametrize("factory, cause", [
    ("forced_dropout", "not deterministic"),
    ("counting", "not deterministic"),
    ("batch_stats", "track_running_stats=False"),
], ids=["forced dropout", "stateful forward", "BatchNorm batch statistics"])
def test_a_model_that_is_not_a_fixed_matrix_is_refused(nets, factory, cause):
    args = ["trace", "--model", f"{nets / 'nets.py'}:{factory}", "--checkpoint", nets / "wrapped.pt",
            "--data", "digits", "--samples", 60,
            "--products", 3, "--quiet", "--out", nets / "o"]
    line = refused(invoke(*args), 1, cause, "--allow-nondeterministic")
    assert "Error:" in line
    if factory != "batch_stats":
        ok(invoke(*args, "--allow-nondeterministic", "--overwrite"))


def test_a_random_loss_is_refused(nets, checkpoint):
    refused(invoke(*TRACE, "--checkpoint", checkpoint, "--loss", f"{nets / 'nets.py'}:random_loss",
                   "--out", nets / "o"), 1, "not deterministic")


def test_the_determinism_guard_costs_two_products(checkpoint):
    from hessian_probe.loading import ProblemSpec, load_problem
    from hessian_probe.operators import curvature_operator
    from hessian_probe.operators.determinism import check_fixed_operator

    op = curvature_operator(load_problem(ProblemSpec(checkpoint=str(checkpoint), model="mlp", samples=60)).problem,
                            "hessian")
    counted = []
    op.observe(counted.append)
    assert check_fixed_operator(op) == 0.0
    assert sum(counted) == 2


def test_a_factory_that_exits_or_builds_on_meta_gets_one_line(nets, checkpoint):
    refused(invoke(*TRACE, "--checkpoint", checkpoint, "--model", f"{nets / 'nets.py'}:exits", "--out", nets / "o"), 1,
            "sys.exit(3)")
    refused(invoke(*TRACE, "--checkpoint", checkpoint, "--model", f"{nets / 'nets.py'}:on_meta", "--out", nets / "o"),
            1, "meta device")


def test_a_code_running_pickle_is_named_as_such(tmp_path):
    class Shell:
        def __reduce__(self):
            return (os.system, ("true",))

    with (tmp_path / "legacy.pt").open("wb") as fh:
        pickle.dump({"model_state_dict": Shell()}, fh)
    torch.save({"model_state_dict": Shell()}, tmp_path / "zipped.pt")
    for name in ("legacy.pt", "zipped.pt"):
        refused(invoke(*TRACE, "--checkpoint", tmp_path / name, "--out", tmp_path / "o"), 1, "system",
                "--trust-checkpoint")


def test_a_sum_reduced_loss_is_refused(nets, checkpoint):
    (nets / "losses.py").write_text("import torch.nn.functional as F\n\n"
                                    "def summed(outputs, targets):\n"
                                    "    return F.cross_entropy(outputs, targets, reduction='sum')\n")
    refused(invoke(*TRACE, "--checkpoint", checkpoint, "--loss", f"{nets / 'losses.py'}:summed", "--out", nets / "o"),
            1, "reduction='mean'")


@pytest.mark.parametrize("key, value", [("momentum", -0.5), ("weight_decay", -1e-3), ("betas", (0.9, 1.5))])
def test_optimizer_state_out_of_range_is_refused(tmp_path, key, value):
    from hessian_probe.loading.builtin_models import mlp

    model = mlp()
    optimizer = (torch.optim.Adam(model.parameters()) if key == "betas"
                 else torch.optim.SGD(model.parameters(), lr=0.1))
    state = optimizer.state_dict()
    state["param_groups"][0][key] = value
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": state}, tmp_path / "c.pt")
    refused(invoke("lr", "--model", "mlp", "--data", "digits", "--samples", 60, "--checkpoint", tmp_path / "c.pt",
                   "--out", tmp_path / "o", "--quiet"), 1, "optimizer state", "outside")


def test_eval_mode_is_said_where_it_changes_something(nets, checkpoint):
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_for_norm", nets / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.save(module.with_norm().state_dict(), nets / "norm.pt")
    args = ["trace", "--data", "digits", "--samples", 60, "--products", 3, "--quiet"]
    result = ok(invoke(*args, "--model", f"{nets / 'nets.py'}:with_norm", "--checkpoint", nets / "norm.pt",
                       "--out", nets / "a"))
    assert "note: evaluated in eval mode: 1 BatchNorm layer(s) use their running statistics" in result.output
    assert "BatchNorm" in json.loads((nets / "a" / "result.json").read_text())["provenance"]["evaluation_mode"]
    plain = ok(invoke(*args, "--model", "mlp", "--checkpoint", checkpoint, "--out", nets / "b"))
    assert "eval mode" not in plain.output


@pytest.mark.parametrize("slq, words", [
    ({"nodes": [[1.0, 2.0]], "weights": [[0.5, -0.5]]}, "negative"),
    ({"nodes": [[1e300, 2.0]], "weights": [[0.5, 0.5]]}, "beyond"),
    ({"nodes": [[float("nan")]], "weights": [[1.0]]}, "not finite"),
    ({"nodes": [[0.0] * 1001] * 1000, "weights": [[0.001] * 1001] * 1000}, "more than a plot reads"),
    ({"nodes": [[1.0, 2.0]], "weights": [[1.0]]}, "differ in shape"),
], ids=["negative weights", "extreme nodes", "nan", "huge", "ragged"])
def test_plot_refuses_quadratures_we_never_write(tmp_path, slq, words):
    (tmp_path / "result.json").write_text(json.dumps({"operator": "hessian", "slq": slq}))
    refused(invoke("plot", tmp_path, "--out", tmp_path / "p.png"), 1, words)
    assert not (tmp_path / "p.png").exists()


def test_the_ggn_record_says_where_it_was_split(tmp_path, checkpoint):
    ok(invoke(*TRACE, "--checkpoint", checkpoint, "--operator", "ggn", "--out", tmp_path / "g"))
    record = json.loads((tmp_path / "g" / "result.json").read_text())
    assert record["ggn_split"].startswith("at the model's outputs") and "'cross_entropy'" in record["ggn_split"]
    assert not any("final" in w for w in record.get("warnings", []))


def _figure_of(records, monkeypatch, tmp_path):
    from hessian_probe import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figures.append(fig))
    plots.plot_densities(records, [tmp_path / "d.png"])
    return figures[0]


def _record(operator, nodes, weights):
    return {"operator": operator, "slq": {"nodes": [nodes], "weights": [weights]}, "density": {"variance": 1e-4},
            "top_eigenvalues": [max(nodes)], "bottom_eigenvalues": [min(nodes)]}


def test_a_psd_spectrum_is_never_drawn_below_zero(monkeypatch, tmp_path):
    """Issue 19, item 8: the GGN's curves start at 0 (no negative mass), in both panels."""
    nodes = list(np.linspace(0.0, 3.0, 40))
    weights = list(np.full(40, 1 / 40))
    figure = _figure_of([_record("ggn", nodes, weights)], monkeypatch, tmp_path)
    assert len(figure.axes) == 2
    for axis in figure.axes:
        curve = axis.lines[0].get_xdata()
        assert np.min(curve) >= 0


def test_a_bulk_that_is_one_spike_gets_no_bulk_panel(monkeypatch, tmp_path):
    """Almost all weight at zero: the bulk panel would draw only its kernel, so the figure has the
    whole-spectrum panel alone, which says why; the Hessian keeps its negative side."""
    nodes = [-1e-9, 0.0, 1e-9, 2.0, 5.0]
    weights = [0.3, 0.4, 0.298, 0.001, 0.001]
    figure = _figure_of([_record("hessian", nodes, weights), _record("ggn", nodes[1:], [0.998, 0.001, 0.001, 0.0])],
                        monkeypatch, tmp_path)
    assert len(figure.axes) == 1 and "no bulk panel" in figure.axes[0].get_title()
