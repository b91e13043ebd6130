"""The command line: it gives exactly the library's numbers, reads every checkpoint and data
format it promises, writes its outputs, runs configs, and turns every bad input into one line
and an exit code (2 usage, 1 data/model)."""

from __future__ import annotations

import contextlib
import csv
import json
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hessian_probe.analysis import spectrum
from hessian_probe.cli import main
from hessian_probe.linalg import extremal_eigs, trace
from hessian_probe.linalg.quadrature import pool_probes
from hessian_probe.loading import ProblemSpec, load_model
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits
from hessian_probe.operators import curvature_operator
from hessian_probe.problem import make_problem

CONFIGS = Path(__file__).parent.parent / "configs"
GOOD = ["--model", "mlp", "--data", "digits"]


@pytest.fixture(scope="module")
def trained(checkpoint) -> torch.nn.Module:
    model = mlp()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model_state_dict"])
    return model


def invoke(*args: object, cwd: Path | None = None):
    with contextlib.chdir(cwd or Path.cwd()):
        return CliRunner().invoke(main, [str(a) for a in args])


def ok(result) -> dict:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)


def library_problem(model: torch.nn.Module, samples: int | None = None):
    x, y = load_digits()
    return make_problem(model, (x, y), "cross_entropy", dtype=torch.float64, chunk_size=1024)


# --- the CLI is the library --------------------------------------------------------------------

def test_spectrum_prints_and_writes_the_library_numbers(tmp_path, checkpoint, trained):
    out = tmp_path / "spec"
    record = ok(invoke("spectrum", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--steps", 30,
                       "--probes", 4, "--top-k", 3, "--bottom-k", 2, "--seed", 3, "--out", out, "--json", "--quiet"))
    op = curvature_operator(library_problem(trained), "hessian")
    expected = spectrum(op, n_steps=30, n_probes=4, top_k=3, bottom_k=2, seed=3).to_dict()
    for key in ("operator", "n_params", "n_samples", "top_eigenvalues", "bottom_eigenvalues", "settings"):
        assert record[key] == expected[key], key
    assert record["trace"]["estimate"] == expected["trace"]["estimate"]
    assert record["trace"]["stderr"] == expected["trace"]["stderr"]
    assert record["slq"]["nodes"] == expected["slq"]["nodes"] and record["slq"]["weights"] == expected["slq"]["weights"]
    assert record["density"]["values"] == expected["density"]["values"]
    # the file is the printed record, and has the promised public keys and provenance
    saved = json.loads((out / "result.json").read_text())
    assert saved == record
    assert record["top_eigenvalues"] == sorted(record["top_eigenvalues"], reverse=True)
    assert record["bottom_eigenvalues"] == sorted(record["bottom_eigenvalues"])
    assert len(record["slq"]["nodes"]) == 4 and len(record["density"]["grid"]) == len(record["density"]["values"])
    prov = record["provenance"]
    assert prov["version"] and prov["device"] == "cpu" and prov["dtype"] == "float64" and prov["seed"] == 3
    assert prov["inputs"]["model"] == "mlp" and len(prov["inputs"]["checkpoint_sha256"]) == 64
    assert prov["inputs"]["optimizer_state"] is True and prov["timings"]["total_s"] > 0
    assert {"density.png", "density.pdf", "eigenvalues.csv"} <= {p.name for p in out.iterdir()}
    # the human summary shows the same top eigenvalue
    summary = invoke("spectrum", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--steps", 30,
                     "--probes", 4, "--top-k", 3, "--bottom-k", 2, "--seed", 3, "--out", tmp_path / "again", "--quiet")
    assert summary.exit_code == 0 and f"{expected['top_eigenvalues'][0]:.6g}" in summary.stdout


def test_spectrum_without_reorthogonalisation_keeps_density_trace_and_eigenvalues(tmp_path, checkpoint):
    """--reorth none keeps no basis: the SLQ trace and density stay (ghosts share their weight), the
    eigenvalues come from their own reorthogonalised run, and the record says so."""
    args = ("spectrum", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--samples", 300,
            "--steps", 60, "--probes", 4, "--top-k", 2, "--bottom-k", 1, "--json", "--quiet")
    full = ok(invoke(*args, "--out", tmp_path / "full"))
    plain = ok(invoke(*args, "--reorth", "none", "--basis", "host", "--out", tmp_path / "plain"))
    assert plain["slq"]["reorth"] == "none" and plain["slq"]["basis_memory"] is None
    assert full["slq"]["basis_memory"]["bytes"] > 0
    assert any("without reorthogonalisation" in w for w in plain["warnings"])
    assert not any("without reorthogonalisation" in w for w in full["warnings"])
    assert plain["top_eigenvalues"] == full["top_eigenvalues"]
    assert plain["slq"]["trace_estimate"] == pytest.approx(full["slq"]["trace_estimate"], rel=1e-6)
    top = full["top_eigenvalues"][0]

    def copies_of_top(record: dict) -> int:
        return max(int(np.sum(np.abs(np.asarray(t) - top) < 1e-8 * top)) for t in record["slq"]["nodes"])

    def moment(record: dict, j: int) -> float:
        nodes, weights = pool_probes(record["slq"]["nodes"], record["slq"]["weights"])
        return float(weights @ nodes**j)

    assert copies_of_top(full) == 1 and copies_of_top(plain) >= 2, "without reorthogonalisation: ghosts"
    for j in range(1, 6):  # ... which add nodes, not spectral mass: the measure's moments stay
        assert moment(plain, j) == pytest.approx(moment(full, j), rel=1e-6), j


def test_eigs_with_eigenvectors_and_csv(tmp_path, checkpoint, trained):
    out = tmp_path / "eigs"
    record = ok(invoke("eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--operator", "ggn",
                       "--params", "2", "--top-k", 4, "--eigenvectors", "--out", out, "--json", "--quiet"))
    problem = library_problem(trained).restricted("2")
    op = curvature_operator(problem, "ggn")
    expected = extremal_eigs(op, 4, 0, seed=0)
    assert record["top_eigenvalues"] == expected.top_eigenvalues.tolist() and record["converged"]
    assert record["n_params"] == 330
    saved = torch.load(out / "eigenvectors.pt", weights_only=True)
    assert saved["parameter_names"] == ["2.weight", "2.bias"] and saved["top_eigenvectors"].shape == (4, 330)
    V, theta = saved["top_eigenvectors"], saved["top_eigenvalues"]
    residuals = (op.matmat(V) - theta[:, None] * V).norm(dim=1)
    assert torch.allclose(residuals, torch.tensor(record["eigs"]["top_residuals"], dtype=V.dtype),
                          rtol=1e-3, atol=1e-12)
    with (out / "eigenvalues.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["eigenvalue"]) for r in rows] == record["top_eigenvalues"]
    assert all(r["converged"] == "True" and r["end"] == "top" for r in rows)


def test_the_fisher_of_cross_entropy_is_the_ggn_and_the_empirical_fisher_is_not(tmp_path, checkpoint):
    numbers = {kind: ok(invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--samples", "300", "--operator", kind,
                               "--top-k", 2, "--json", "--quiet", "--out", tmp_path / kind))["top_eigenvalues"]
               for kind in ("ggn", "fisher", "empirical-fisher")}
    assert numbers["fisher"] == numbers["ggn"]
    assert abs(numbers["empirical-fisher"][0] - numbers["ggn"][0]) > 1e-3 * numbers["ggn"][0]


def test_trace_equals_library(tmp_path, checkpoint, trained):
    record = ok(invoke("trace", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits",
                       "--method", "hutchinson", "--products", 20, "--seed", 5, "--out", tmp_path / "t",
                       "--json", "--quiet"))
    expected = trace(curvature_operator(library_problem(trained), "hessian"), 20, method="hutchinson", seed=5)
    assert record["trace"]["estimate"] == expected.estimate and record["trace"]["stderr"] == expected.stderr


def test_eigs_and_trace_records_are_their_library_calls_typed_results(tmp_path, checkpoint, trained):
    """Each command is one library call: the record (less provenance) is the typed result's to_dict()."""
    from hessian_probe.analysis import EigenvalueReport, TraceReport, eigenvalues
    from hessian_probe.analysis.eigenvalues import trace as trace_report

    op = curvature_operator(library_problem(trained).restricted("2"), "hessian")
    for command, library in (
        (["eigs", "--top-k", 2, "--bottom-k", 1, "--seed", 4], eigenvalues(op, 2, 1, seed=4)),
        (["trace", "--products", 12, "--seed", 4], trace_report(op, 12, seed=4)),
    ):
        assert isinstance(library, EigenvalueReport | TraceReport)
        record = ok(invoke(*command, "--checkpoint", checkpoint, *GOOD, "--params", "2", "--json", "--quiet",
                           "--out", tmp_path / command[0]))
        wall_times = ("wall_time_s",)
        assert _without(record, ("provenance", *wall_times)) == _without(library.to_dict(), wall_times)
        keys = {"eigs": ["top_eigenvalues", "bottom_eigenvalues", "eigs", "converged"], "trace": ["trace"]}
        assert list(record) == ["operator", "n_params", "n_samples", *keys[command[0]], "warnings", "settings",
                                "provenance"]  # the public keys, in their order


def _without(record: object, keys: tuple[str, ...]) -> object:
    """``record`` less ``keys``, at any depth."""
    if isinstance(record, dict):
        return {k: _without(v, keys) for k, v in record.items() if k not in keys}
    return [_without(v, keys) for v in record] if isinstance(record, list) else record


def test_batch_size_analyses_one_seeded_batch(tmp_path, checkpoint):
    args = ["eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--batch-size", 64,
            "--top-k", 1, "--json", "--quiet"]
    first = ok(invoke(*args, "--seed", 1, "--out", tmp_path / "a"))
    again = ok(invoke(*args, "--seed", 1, "--out", tmp_path / "b"))
    other = ok(invoke(*args, "--seed", 2, "--out", tmp_path / "c"))
    full = ok(invoke("eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--top-k", 1,
                     "--json", "--quiet", "--out", tmp_path / "d"))
    assert first["n_samples"] == 64 and full["n_samples"] == 1797
    assert first["top_eigenvalues"] == again["top_eigenvalues"] != other["top_eigenvalues"]
    # small batches are sharper than the full sample (Granziol et al. 2022)
    assert first["top_eigenvalues"][0] > full["top_eigenvalues"][0]


def test_chunk_size_does_not_change_the_operator(tmp_path, checkpoint):
    args = ["eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--top-k", 2, "--json", "--quiet"]
    whole = ok(invoke(*args, "--out", tmp_path / "a"))
    chunked = ok(invoke(*args, "--chunk-size", 100, "--out", tmp_path / "b"))
    assert np.allclose(whole["top_eigenvalues"], chunked["top_eigenvalues"], rtol=1e-10)


# --- checkpoint and data formats -----------------------------------------------------------------

def _state(trained):
    return {k: v.clone() for k, v in trained.state_dict().items()}


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "lightning", "dataparallel", "safetensors", "bin"])
def test_checkpoint_layouts_load_the_same_weights(tmp_path, trained, layout):
    state = _state(trained)
    path = tmp_path / {"lightning": "last.ckpt", "safetensors": "w.safetensors",
                       "bin": "pytorch_model.bin"}.get(layout, "w.pt")
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        content = {
            "bare": state,
            "bin": state,
            "state_dict": {"state_dict": state, "epoch": 3},
            "model": {"model": state, "optimizer": {"state": {}, "param_groups": []}},
            "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 1,
                          "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}]},
            "dataparallel": {f"module.{k}": v for k, v in state.items()},
        }[layout]
        torch.save(content, path)
    model, checkpoint = load_model(ProblemSpec(checkpoint=str(path), model="mlp"))
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert (checkpoint.optimizer_state is not None) == (layout in ("model", "lightning"))


def test_pickled_module_needs_trust_and_then_needs_no_model(tmp_path, trained):
    path = tmp_path / "whole.pt"
    torch.save(trained, path)
    refused = invoke("eigs", "--checkpoint", path, "--data", "digits", "--top-k", 1, "--quiet", "--out", tmp_path / "a")
    assert refused.exit_code == 1 and "--trust-checkpoint" in refused.stderr
    trusted = ok(invoke("eigs", "--checkpoint", path, "--data", "digits", "--trust-checkpoint", "--top-k", 1,
                        "--json", "--quiet", "--out", tmp_path / "b"))
    reference = ok(invoke("eigs", "--checkpoint", path, "--trust-checkpoint", "--model", "mlp", "--data", "digits",
                          "--top-k", 1, "--json", "--quiet", "--out", tmp_path / "c"))
    assert trusted["top_eigenvalues"] == reference["top_eigenvalues"]


def test_data_specs_and_user_model_file(tmp_path, trained):
    """tensors .pt and .npz, a Dataset factory and a pair factory from a user's file, a model factory
    from ./mynet.py (importable from the current directory) all see the same examples."""
    x, y = load_digits(200, seed=4)
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", inputs=x.numpy(), targets=y.numpy())
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    (tmp_path / "mynet.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def make_net(hidden=32):\n"
        "    return nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))\n"
        "def pairs():\n"
        "    d = torch.load('d.pt')\n"
        "    return d['x'], d['y']\n"
        "def dataset():\n"
        "    d = torch.load('d.pt')\n"
        "    return torch.utils.data.TensorDataset(d['x'], d['y'])\n"
    )
    values = []
    for model, data in [("mlp", "tensors:d.pt"), ("mynet:make_net", "d.npz"), ("mynet.py:make_net", "mynet:pairs"),
                        ("mynet:make_net", "mynet:dataset")]:
        result = invoke("eigs", "--checkpoint", tmp_path / "w.pt", "--model", model, "--model-arg", "hidden=32",
                        "--data", data, "--top-k", 1, "--json", "--quiet", "--out", tmp_path / "o", "--overwrite",
                        cwd=tmp_path)
        record = ok(result)
        assert record["n_samples"] == 200
        values.append(record["top_eigenvalues"][0])
    assert np.allclose(values, values[0], rtol=1e-9)


def test_samples_takes_a_seeded_subset(tmp_path, checkpoint):
    args = ["trace", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--samples", 300,
            "--json", "--quiet", "--products", 9]
    a = ok(invoke(*args, "--out", tmp_path / "a"))
    b = ok(invoke(*args, "--out", tmp_path / "b"))
    assert a["n_samples"] == 300 and a["trace"]["estimate"] == b["trace"]["estimate"]


# --- plot and run --------------------------------------------------------------------------------

def test_plot_overlays_saved_results_and_refuses_others(tmp_path, checkpoint):
    for kind in ("hessian", "ggn"):
        ok(invoke("spectrum", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--operator", kind,
                  "--steps", 20, "--probes", 2, "--top-k", 1, "--bottom-k", 0, "--trace-products", 9, "--samples", 200,
                  "--json", "--quiet", "--out", tmp_path / kind))
    drawn = invoke("plot", tmp_path / "hessian", tmp_path / "ggn" / "result.json",
                   "--out", tmp_path / "fig" / "both.png", "--label", "H", "--label", "G", "--title", "test")
    assert drawn.exit_code == 0, drawn.output
    assert (tmp_path / "fig" / "both.png").stat().st_size > 10_000 and (tmp_path / "fig" / "both.pdf").exists()
    ok(invoke("trace", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--products", 3,
              "--json", "--quiet", "--out", tmp_path / "tr"))
    refused = invoke("plot", tmp_path / "tr", "--out", tmp_path / "x.png")
    assert refused.exit_code == 1 and "no spectral density" in refused.stderr
    mismatch = invoke("plot", tmp_path / "hessian", "--label", "a", "--label", "b")
    assert mismatch.exit_code == 2


@pytest.mark.parametrize("name", ["spectrum", "eigs", "trace", "plot", "lr", "track",
                                  # 35 s; test_lr covers the command
                                  pytest.param("validate-lr", marks=pytest.mark.slow)])
def test_example_configs_run(tmp_path, checkpoint, name):
    """configs/*.toml run as written, next to a demo-like folder (the checkpoint and two results)."""
    demo = tmp_path / "hessian-probe-demo"
    demo.mkdir()
    (demo / "checkpoint.pt").write_bytes(checkpoint.read_bytes())
    if name == "plot":
        for kind in ("hessian", "ggn"):
            ok(invoke("spectrum", "--checkpoint", demo / "checkpoint.pt", "--model", "mlp", "--data", "digits",
                      "--operator", kind, "--steps", 10, "--probes", 2, "--top-k", 1, "--bottom-k", 0,
                      "--trace-products", 3, "--samples", 100, "--json", "--quiet", "--out", demo / kind))
    result = invoke("run", CONFIGS / f"{name}.toml", cwd=tmp_path)
    assert result.exit_code == 0, result.output + repr(result.exception)
    written = [p for p in tmp_path.rglob("*") if p.suffix in (".json", ".png") and "demo" not in str(p.parent.name)]
    assert written


def test_demo_config_is_the_demo_command():
    from hessian_probe.config import command_line

    name, argv, _ = command_line(CONFIGS / "demo.toml", main.commands)
    assert name == "demo" and argv == ["--out=hessian-probe-demo", "--seed=0"]


def test_config_equals_command_line(tmp_path, checkpoint):
    (tmp_path / "c.toml").write_text(
        f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\n'
        'top-k = 2\nbottom_k = 1\nquiet = true\n'
        f'json = true\nout = "{tmp_path / "a"}"\n[model_args]\nhidden = 32\nactivation = "tanh"\n'
    )
    from_config = ok(invoke("run", tmp_path / "c.toml"))
    from_shell = ok(invoke("eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits",
                           "--model-arg", "hidden=32", "--model-arg", "activation=tanh", "--top-k", 2, "--bottom-k", 1,
                           "--json", "--quiet", "--out", tmp_path / "b"))
    assert from_config["top_eigenvalues"] == from_shell["top_eigenvalues"]
    assert from_config["bottom_eigenvalues"] == from_shell["bottom_eigenvalues"]
    assert from_config["provenance"]["config"]["content"]["model_args"] == {"hidden": 32, "activation": "tanh"}


def test_every_command_takes_a_config_the_command_line_overrides_and_prints_it_back(tmp_path, checkpoint):
    (tmp_path / "c.toml").write_text(
        f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\nsamples = 300\n'
        'top_k = 3\nquiet = true\njson = true\n[model_args]\nhidden = 32\n')
    overridden = ok(invoke("eigs", "--config", tmp_path / "c.toml", "--top-k", 2, "--out", tmp_path / "a"))
    assert len(overridden["top_eigenvalues"]) == 2  # the command line wins over the file
    assert overridden["provenance"]["config"]["path"] == str(tmp_path / "c.toml")
    shell = ok(invoke("eigs", "--checkpoint", checkpoint, "--model", "mlp", "--model-arg", "hidden=32", "--data",
                      "digits", "--samples", 300, "--top-k", 2, "--json", "--quiet", "--out", tmp_path / "b"))
    assert overridden["top_eigenvalues"] == shell["top_eigenvalues"]
    printed = invoke("eigs", "--config", tmp_path / "c.toml", "--top-k", 2, "--seed", 4, "--print-config")
    assert printed.exit_code == 0 and "top_k = 2\n" in printed.output and "seed = 4\n" in printed.output
    assert not (tmp_path / "hessian-probe-eigs").exists()  # printing runs nothing
    (tmp_path / "printed.toml").write_text(printed.output.replace("seed = 4", "seed = 0"))
    again = ok(invoke("run", tmp_path / "printed.toml", "--out", tmp_path / "c"))  # run takes overrides too
    assert again["top_eigenvalues"] == shell["top_eigenvalues"]
    through_run = invoke("run", tmp_path / "c.toml", "--top-k", 4, "--print-config")
    assert through_run.exit_code == 0 and "top_k = 4\n" in through_run.output and not (tmp_path / "d").exists()
    wrong = invoke("trace", "--config", tmp_path / "c.toml")
    assert wrong.exit_code == 2 and "a config for the eigs command, not for trace" in wrong.stderr
    from hessian_probe.cli.tools import plot
    from hessian_probe.config import expand

    (tmp_path / "p.toml").write_text('command = "plot"\nlabel = ["a", "b"]\n')
    line, _ = expand(["--config", str(tmp_path / "p.toml"), "--label", "c"], plot)
    assert [a for a in line if "label" in a or a == "c"] == ["--label", "c"]  # the line's list replaces the file's
    (tmp_path / "m.toml").write_text('command = "eigs"\n[model_args]\nhidden = 32\nwidth = 3\n')
    line, _ = expand(["--config", str(tmp_path / "m.toml"), "--model-arg", "hidden=16"], main.commands["eigs"])
    assert line == ["--model-arg=hidden=32", "--model-arg=width=3", "--model-arg", "hidden=16"]  # merged by key
    loud = invoke("eigs", "--config", tmp_path / "c.toml", "--no-json", "--out", tmp_path / "e")  # a flag turned off
    assert loud.exit_code == 0 and "top    eigenvalues" in loud.stdout and not loud.stdout.lstrip().startswith("{")


def test_quiet_silences_a_third_party_progress_bar_too(tmp_path, checkpoint, monkeypatch):
    (tmp_path / "barred.py").write_text(
        "from tqdm import tqdm\nfrom hessian_probe.loading.datasets import load_digits\n\n\n"
        "def make():\n    for _ in tqdm(range(3), desc='third-party'):\n        pass\n    return load_digits(100)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "barred:make", "--top-k", 1]
    loud = invoke(*common, "--out", tmp_path / "a")
    quiet = invoke(*common, "--quiet", "--out", tmp_path / "b")
    assert loud.exit_code == quiet.exit_code == 0
    assert "third-party" in loud.stderr and "third-party" not in quiet.stderr


def test_cuda_requested_without_cuda(tmp_path, checkpoint):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--device", "cuda", "--out", tmp_path)
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr


def test_debug_shows_the_real_exception(tmp_path):
    result = invoke("eigs", "--checkpoint", tmp_path / "nope.pt", *GOOD, "--debug")
    assert result.exit_code == 1 and type(result.exception).__name__ == "InputError"


def test_progress_counts_products_per_stage(capsys):
    from hessian_probe.operators import DenseOperator
    from hessian_probe.progress import ProductProgress

    op = DenseOperator(torch.eye(6, dtype=torch.float64))
    with ProductProgress(delay=0, label="test ").attach(op) as progress:
        progress.stage("first", 10)
        op.matmat(torch.ones(3, 6, dtype=torch.float64))
        op.matvec(torch.ones(6, dtype=torch.float64))
        assert progress.bar.n == 4
        progress.stage("second", None)
        op.matvec(torch.ones(6, dtype=torch.float64))
        assert progress.bar.n == 1
    assert "test first" in capsys.readouterr().err
    with ProductProgress(quiet=True, delay=0).attach(op) as progress:
        progress.stage("silent", 5)
        op.matvec(torch.ones(6, dtype=torch.float64))
    assert capsys.readouterr().err == ""


def test_torchvision_names_and_datasets_through_a_stand_in(tmp_path, monkeypatch, request):
    """torchvision is optional and absent in CI: a minimal stand-in package checks that models are
    built without pretrained weights and datasets are opened with download=False, then stacked."""
    import sys

    before = {m for m in sys.modules if m.startswith("torchvision")}
    request.addfinalizer(lambda: [sys.modules.pop(m) for m in list(sys.modules)  # the stand-in leaves with the test
                                  if m.startswith("torchvision") and m not in before])
    package = tmp_path / "torchvision"
    (package / "transforms").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import models, datasets\n")
    (package / "transforms" / "__init__.py").write_text("")
    (package / "transforms" / "functional.py").write_text("def pil_to_tensor(img):\n    return img\n")
    (package / "models.py").write_text(
        "import torch\n"
        "def list_models():\n    return ['tiny']\n"
        "def get_model(name, weights, **kw):\n"
        "    assert weights is None\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, kw.get('num_classes', 10)))\n"
    )
    (package / "datasets.py").write_text(
        "import torch\n"
        "class Digitsish:\n"
        "    def __init__(self, root, download=True, transform=None):\n"
        "        assert download is False\n"
        "        g = torch.Generator().manual_seed(0)\n"
        "        self.x = torch.randint(0, 256, (50, 1, 8, 8), generator=g).float()\n"
        "        self.y = torch.arange(50) % 10\n"
        "        self.transform = transform\n"
        "    def __len__(self):\n        return 50\n"
        "    def __getitem__(self, i):\n        return self.transform(self.x[i]), int(self.y[i])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in list(__import__("sys").modules) if m.startswith("torchvision")]:
        monkeypatch.delitem(__import__("sys").modules, name)
    from hessian_probe.loading.data import load_data
    from hessian_probe.loading.models import build_model

    model = build_model("tiny", {"num_classes": 10})
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    x, y = load_data(f"torchvision:Digitsish:{tmp_path}", samples=20, seed=0)
    assert x.shape == (20, 1, 8, 8) and float(x.max()) <= 1.0 and y.dtype == torch.int64
    record = ok(invoke("eigs", "--checkpoint", tmp_path / "tiny.pt", "--model", "torchvision:tiny", "--data",
                       f"torchvision:Digitsish:{tmp_path}", "--top-k", 1, "--json", "--quiet", "--out", tmp_path / "o"))
    assert record["n_samples"] == 50 and record["n_params"] == 650


def test_data_that_requires_grad_and_trusted_local_classes(tmp_path, trained):
    """Tensors saved with requires_grad are data like any other; a trusted pickled model whose class
    lives in the user's folder loads when run from that folder."""
    x, y = load_digits(40)
    torch.save({"x": x.requires_grad_(), "y": y}, tmp_path / "rg.pt")
    (tmp_path / "localnet.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, 10)\n"
        "    def forward(self, x):\n        return self.fc(x)\n"
    )
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        net = importlib.import_module("localnet").Net()
        torch.save(net, tmp_path / "whole.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("localnet", None)
    record = ok(invoke("eigs", "--checkpoint", "whole.pt", "--trust-checkpoint", "--data", "rg.pt", "--top-k", 1,
                       "--json", "--quiet", "--out", "o", cwd=tmp_path))
    assert record["n_params"] == 650 and record["n_samples"] == 40


def test_every_help_example_parses_as_written():
    """Issue 17: each command's --help example has every required option and only real ones (it is
    parsed by click exactly as a shell would pass it)."""
    import shlex

    runner = CliRunner()
    examples = []
    for name, command in main.commands.items():
        text = runner.invoke(main, [name, "--help"]).stdout
        lines = [line.strip() for line in text.splitlines()]
        for i, line in enumerate(lines):
            if line.startswith("hessian-probe "):
                while line.endswith("\\"):
                    i += 1
                    line = line[:-1] + " " + lines[i]
                examples.append((command, shlex.split(line)[2:]))
    assert {c.name for c, _ in examples} == set(main.commands)  # every command shows one
    for command, args in examples:
        with command.make_context(command.name, list(args)) as ctx:  # raises on a missing or unknown option
            assert ctx.params


def test_progress_on_a_non_terminal_is_plain_lines(capsys):
    """Issue 17, item 7: a log file gets one line per long stage, no carriage-return bar."""
    from hessian_probe.progress import ProductProgress

    progress = ProductProgress(delay=0.0, label="hessian ")
    progress.stage("SLQ", 40)
    progress.advance(40)
    progress.close()
    quiet = ProductProgress(quiet=True, delay=0.0)
    quiet.stage("trace", 9)
    quiet.advance(9)
    quiet.close()
    err = capsys.readouterr().err
    assert err.splitlines() == [line for line in err.splitlines() if line]
    assert "\r" not in err and err.strip().splitlines() == [err.strip().splitlines()[0]]
    assert err.startswith("hessian SLQ: 40/40 products") and err.rstrip().endswith("(done)")


def test_validate_lr_names_its_training_options_apart_from_the_lanczos_ones():
    command = main.commands["validate-lr"]
    options = {p.name: p.opts for p in command.params if isinstance(p, click.Option)}
    assert {"--steps", "--train-steps"} <= set(options["steps"])  # the old name stays: a public contract
    assert {"--batch-sizes", "--train-batch-sizes"} <= set(options["batch_sizes"])


def test_a_long_float64_run_notes_the_measured_float32_speedup(tmp_path, checkpoint, monkeypatch):
    import hessian_probe.operators.precision as precision

    monkeypatch.setattr(precision, "LONG_RUN_S", 0.0)  # every run is "long"
    monkeypatch.setattr(precision, "float32_speedup", lambda op: 4.2)
    record = ok(invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--top-k", 1, "--json", "--out", tmp_path / "a"))
    assert record["notes"] == [n for n in record["notes"] if "4.2x faster" in n] and len(record["notes"]) == 1
    quick = ok(invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--top-k", 1, "--dtype", "float32", "--json",
                      "--out", tmp_path / "b"))
    assert "notes" not in quick  # float32 already


def test_the_float32_speedup_is_measured_on_the_operators_own_model():
    from hessian_probe.operators.precision import float32_speedup

    x, y = load_digits(64, image=True)
    from hessian_probe.loading.builtin_models import small_cnn

    op = curvature_operator(make_problem(small_cnn(), (x, y), "cross_entropy", dtype=torch.float64), "hessian")
    ratio = float32_speedup(op)
    assert ratio is not None and ratio > 0
    assert float32_speedup(curvature_operator(make_problem(small_cnn(), (x, y), "cross_entropy"), "hessian")) is None


def test_finite_difference_hessian_products_match_the_exact_ones_and_say_they_are_not(checkpoint, tmp_path):
    common = ["eigs", "--checkpoint", checkpoint, "--model", "mlp", "--data", "digits", "--samples", "200",
              "--top-k", "2", "--json", "--quiet"]
    exact = ok(invoke(*common, "--out", tmp_path / "exact"))
    approx = ok(invoke(*common, "--hvp", "finite-difference", "--out", tmp_path / "fd"))
    assert approx["top_eigenvalues"] == pytest.approx(exact["top_eigenvalues"], rel=1e-8)
    assert approx["top_eigenvalues"] != exact["top_eigenvalues"]  # differences of gradients, not exact
    assert any("not exact" in n for n in approx["notes"]) and not any("not exact" in n for n in exact.get("notes", []))
    refused = invoke(*common, "--operator", "ggn", "--hvp", "finite-difference", "--out", tmp_path / "ggn")
    assert refused.exit_code == 2 and "--hvp finite-difference takes Hessian products" in refused.stderr


def test_mixed_precision_runs_float32_products_in_float64_lanczos_and_says_so(tmp_path, checkpoint):
    """--dtype mixed: the problem is float32, the vectors float64; its eigenvalues agree with
    float64 to the products' rounding (1e-5 relative), its residuals are measured (never 0.0)."""
    exact = ok(invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--top-k", 3, "--json", "--quiet",
                      "--out", tmp_path / "f64"))
    mixed = ok(invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--top-k", 3, "--dtype", "mixed", "--json",
                      "--quiet", "--out", tmp_path / "mixed"))
    assert mixed["provenance"]["dtype"] == "float32" and any("--dtype mixed" in n for n in mixed["notes"])
    top, reference = np.array(mixed["top_eigenvalues"]), np.array(exact["top_eigenvalues"])
    assert np.allclose(top, reference, rtol=1e-5, atol=0) and not np.allclose(top, reference, rtol=1e-12, atol=0)
    assert all(r > 0 for r in mixed["eigs"]["top_residuals"]) and mixed["converged"]
    assert "notes" not in exact


def test_a_mixed_precision_operator_takes_and_returns_float64_and_sums_batches_in_float64():
    torch.manual_seed(0)
    from hessian_probe.loading.builtin_models import mlp

    model, (x, y) = mlp(), load_digits(120)
    problem = make_problem(model, (x, y), "cross_entropy", chunk_size=40, dtype=torch.float32)
    mixed = curvature_operator(problem, "hessian", vector_dtype=torch.float64)
    exact = curvature_operator(make_problem(model, (x, y), "cross_entropy", dtype=torch.float64), "hessian")
    assert mixed.dtype == torch.float64 and mixed.product_dtype == torch.float32
    v = torch.randn(3, mixed.size, dtype=torch.float64)
    product = mixed.matmat(v)
    assert product.dtype == torch.float64
    assert torch.allclose(product, exact.matmat(v), rtol=0, atol=1e-5 * float(exact.matmat(v).abs().max()))
    single = curvature_operator(problem, "hessian").matmat(v.float())  # the float32 products, summed in float32
    assert torch.allclose(product.float(), single, rtol=1e-5, atol=1e-6)


def test_a_slow_first_float64_product_names_mixed_precision_at_once(tmp_path, checkpoint, monkeypatch):
    import hessian_probe.cli.running as running

    monkeypatch.setattr(running, "SLOW_PRODUCT_S", -1.0)  # every product is "slow"
    slow = invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--top-k", 1, "--out", tmp_path / "a")
    assert slow.exit_code == 0 and slow.stderr.count("--dtype mixed runs them") == 1
    for quick in (("--dtype", "float32"), ("--dtype", "mixed"), ("--quiet",)):
        other = invoke("eigs", "--checkpoint", checkpoint, *GOOD, "--top-k", 1, *quick, "--out", tmp_path / quick[-1])
        assert other.exit_code == 0 and "--dtype mixed runs them" not in other.stderr
