"""The hostile-input suite (issue 14): a table of bad inputs across every command (files, data,
models, losses, options, configs, output folders, plots), each of which must end in exactly one
`Error:` line, the documented exit code (2 usage, 1 data/model, 130 Ctrl-C) and no traceback; and
property-based checks (hypothesis) that no config file and no option value, however malformed,
gets past parsing as anything but a clean run or one such line."""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hessian_probe.cli import main
from hessian_probe.config import command_line
from hessian_probe.errors import InputError
from hessian_probe.loading.builtin_models import mlp
from hessian_probe.loading.datasets import load_digits


@pytest.fixture(scope="module")
def trained(checkpoint) -> torch.nn.Module:
    model = mlp()
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model_state_dict"])
    return model


def _state(trained: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in trained.state_dict().items()}


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- the table ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, checkpoint, trained):
    d = tmp_path_factory.mktemp("bad")
    state = _state(trained)
    (d / "corrupt.pt").write_bytes(b"this is not a checkpoint" * 10)
    raw = checkpoint.read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    torch.save(trained, d / "pickled.pt")
    torch.save({k: v for k, v in state.items() if k != "2.bias"} | {"extra.weight": torch.ones(2)}, d / "keys.pt")
    nan_state = dict(state)
    nan_state["0.weight"] = nan_state["0.weight"].clone()
    nan_state["0.weight"][0, 0] = float("nan")
    torch.save(nan_state, d / "nan.pt")
    torch.save([1, 2, 3], d / "list.pt")
    torch.save(state, d / "bare.pt")
    torch.save({"epoch": 3, "note": "no weights"}, d / "noweights.pt")
    torch.save({"x": torch.zeros(0, 64), "y": torch.zeros(0, dtype=torch.long)}, d / "empty.pt")
    torch.save({"x": torch.rand(20, 64), "y": torch.full((20,), 12)}, d / "labels.pt")
    torch.save({"x": torch.rand(20, 64), "y": torch.zeros(19, dtype=torch.long)}, d / "lengths.pt")
    torch.save({"features": torch.rand(20, 64)}, d / "keys_data.pt")
    (d / "broken.py").write_text("def make():\n    raise RuntimeError('boom')\n")
    (d / "nodensity.json").write_text(json.dumps({"operator": "hessian", "slq": {"n_steps": 3}}))
    x, y = load_digits(30)
    torch.save({"x": x, "y": y.double()}, d / "floatlabels.pt")
    torch.save({"x": (x * 255).to(torch.uint8), "y": y}, d / "uint8.pt")
    torch.save({"x": x.numpy(), "y": y.numpy()}, d / "numpy.pt")
    (d / "user.py").write_text(
        "import torch\n"
        "class Bad(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 3\n"
        "    def __getitem__(self, i):\n        raise KeyError(i)\n"
        "def bad_dataset():\n    return Bad()\n"
        "class Tuple(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.body = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))\n"
        "    def forward(self, x):\n        return self.body(x), x\n"
        "    def load_state_dict(self, sd, strict=True):\n"
        "        return self.body.load_state_dict(sd, strict)\n"
        "    def state_dict(self, *a, **k):\n        return self.body.state_dict(*a, **k)\n"
        "def tuple_net():\n    return Tuple()\n"
        "def per_example_loss(out, y):\n    return torch.nn.functional.cross_entropy(out, y, reduction='none')\n"
        "def mean_loss(out, y):\n    return torch.nn.functional.cross_entropy(out, y) + 0 * out.mean()\n"
        "def two_lines():\n    raise RuntimeError('first line\\nsecond line')\n"
    )
    (d / "unknown.toml").write_text(f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\n'
                                    'topk = 3\ncolour = 1\n')
    (d / "syntax.toml").write_text('command = "eigs"\ncheckpoint = \n')
    (d / "nocommand.toml").write_text(f'checkpoint = "{checkpoint}"\n')
    (d / "badtype.toml").write_text(f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\n'
                                    'top_k = "many"\n')
    (d / "badflag.toml").write_text(f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\n'
                                    'quiet = "yes"\n')
    _more_bad_files(d, checkpoint, state)
    return d


def _more_bad_files(d: Path, checkpoint: Path, state: dict) -> None:
    """The files behind the cases added for issue 14: each is one way a real file goes wrong."""
    x, y = load_digits(40)
    (d / "zero_bytes.pt").write_bytes(b"")
    (d / "folder.pt").mkdir()
    (d / "text.pt").write_text("hello")
    (d / "pickle_named.safetensors").write_bytes(checkpoint.read_bytes())
    (d / "bad_header.safetensors").write_bytes(b"\xff\xff\x00\x00\x00\x00\x00\x00{")
    (d / "zero_bytes.safetensors").write_bytes(b"")
    torch.save({"state_dict": [1, 2]}, d / "state_dict_list.pt")
    inf_state = dict(state)
    inf_state["2.bias"] = inf_state["2.bias"].clone()
    inf_state["2.bias"][0] = float("inf")
    torch.save(inf_state, d / "inf.pt")
    torch.save({k: v[None] for k, v in state.items()}, d / "extra_dim.pt")
    (d / "loop.pt").symlink_to(d / "loop.pt")
    for name, inputs, targets in [("nan_inputs", x.clone().index_fill_(0, torch.tensor([0]), float("nan")), y),
                                  ("inf_inputs", x.clone().index_fill_(0, torch.tensor([3]), float("inf")), y),
                                  ("negative_labels", x, y - 5), ("column_labels", x, y[:, None]),
                                  ("flat_inputs", x[:, 0], y), ("bool_labels", x, y.bool()),
                                  ("probabilities_not_summing", x, torch.rand(40, 10))]:
        torch.save({"x": inputs, "y": targets}, d / f"{name}.pt")
    (d / "garbage_data.pt").write_bytes(b"nonsense" * 5)
    np.savez(d / "arrays.npz", a=x.numpy())
    (d / "user2.py").write_text(
        "import torch\n"
        "class Empty(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 0\n"
        "    def __getitem__(self, i):\n        raise IndexError(i)\n"
        "def empty_dataset():\n    return Empty()\n"
        "class Strings(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 3\n"
        "    def __getitem__(self, i):\n        return 'a', 'b'\n"
        "def string_dataset():\n    return Strings()\n"
        "def no_data():\n    return None\n"
        "def triples():\n    return torch.zeros(3, 64), torch.zeros(3, dtype=torch.long), torch.zeros(3)\n"
        "def interrupted():\n    raise KeyboardInterrupt\n"
        "def not_a_module():\n    return 42\n"
        "def needs_width(width):\n    return torch.nn.Linear(64, 10)\n"
        "def no_parameters():\n    return torch.nn.Flatten()\n"
        "def recursion():\n    def f():\n        return f()\n    return f()\n"
        "def out_of_memory():\n    raise MemoryError\n"
        "def five_classes():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 5))\n"
        "class NanNet(torch.nn.Sequential):\n"
        "    def forward(self, x):\n        return super().forward(x) * float('nan')\n"
        "class FailingNet(torch.nn.Sequential):\n"
        "    def forward(self, x):\n        raise ValueError('forward broke')\n"
        "class InterruptedNet(torch.nn.Sequential):\n"
        "    def forward(self, x):\n        raise KeyboardInterrupt\n"
        "def _body(cls):\n"
        "    return cls(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))\n"
        "def nan_net():\n    return _body(NanNet)\n"
        "def failing_net():\n    return _body(FailingNet)\n"
        "def interrupted_net():\n    return _body(InterruptedNet)\n"
        "def loss_fails(out, y):\n    raise ValueError('loss broke')\n"
        "def loss_nan(out, y):\n    return out.sum() * float('nan')\n"
        "def loss_float(out, y):\n    return 1.0\n"
        "def loss_interrupted(out, y):\n    raise KeyboardInterrupt\n"
        "def loss_integer(out, y):\n    return torch.tensor(1)\n"
        "def loss_complex(out, y):\n    return out.mean() * 1j\n"
        "def loss_vector(out, y):\n    return out.mean(1)\n"
    )
    (d / "syntax.py").write_text("def make(:\n")
    (d / "nested.toml").write_text('command = "run"\n')
    (d / "unknown_command.toml").write_text('command = "fly"\n')
    (d / "binary.toml").write_bytes(b"\x00\xff\xfe garbage")
    (d / "folder.toml").mkdir()
    (d / "list_value.toml").write_text(f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\n'
                                       'data = "digits"\ntop_k = [1, 2]\n')
    (d / "no_checkpoint.toml").write_text('command = "eigs"\nmodel = "mlp"\ndata = "digits"\n')
    (d / "number_command.toml").write_text("command = 3\n")
    (d / "table.toml").write_text(f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\n'
                                  "[extra]\nx = 1\n")
    (d / "nan_tol.toml").write_text(f'command = "eigs"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\ndata = "digits"\n'
                                    "tol = nan\n")
    (d / "negative_steps.toml").write_text(f'command = "spectrum"\ncheckpoint = "{checkpoint}"\nmodel = "mlp"\n'
                                           'data = "digits"\nsteps = -3\n')
    (d / "bad.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "empty.json").write_text("")
    (d / "nan_density.json").write_text(json.dumps({"operator": "hessian", "slq": {
        "n_steps": 3, "nodes": [[float("nan")]], "weights": [[1.0]]}}))
    (d / "text_nodes.json").write_text(json.dumps({"operator": "hessian", "slq": {"n_steps": 3, "nodes": "abc",
                                                                                   "weights": "x"}}))
    (d / "folder.json").mkdir()
    (d / "a_file").write_text("x")


GOOD = ["--model", "mlp", "--data", "digits"]
ANALYSES = ("spectrum", "eigs", "trace", "lr", "validate-lr", "track")
BAD_INPUTS = [
    # (name, arguments after the command, exit code, words the message must contain)
    ("missing checkpoint", ["eigs", "--checkpoint", "{d}/nope.pt", *GOOD], 1, "checkpoint not found"),
    ("corrupt checkpoint", ["eigs", "--checkpoint", "{d}/corrupt.pt", *GOOD], 1, "corrupt"),
    ("truncated checkpoint", ["eigs", "--checkpoint", "{d}/truncated.pt", *GOOD], 1, "corrupt or truncated"),
    ("corrupt safetensors", ["eigs", "--checkpoint", "{d}/corrupt.safetensors", *GOOD], 1, "safetensors"),
    ("pickled module untrusted", ["eigs", "--checkpoint", "{d}/pickled.pt", *GOOD], 1, "--trust-checkpoint"),
    ("not a dict", ["eigs", "--checkpoint", "{d}/list.pt", *GOOD], 1, "not a state dict"),
    ("no weights in dict", ["eigs", "--checkpoint", "{d}/noweights.pt", *GOOD], 1, "no state dict"),
    ("missing and unexpected keys", ["eigs", "--checkpoint", "{d}/keys.pt", *GOOD], 1, "1 missing ('2.bias')"),
    ("shape mismatch", ["eigs", "--checkpoint", "{ckpt}", "--model", "mlp", "--data", "digits", "--model-arg",
                        "hidden=16"], 1, "shape mismatch for '0.weight'"),
    ("non-finite weights", ["eigs", "--checkpoint", "{d}/nan.pt", *GOOD], 1,
     "non-finite value(s) (NaN or inf) in '0.weight'"),
    ("model module not importable", ["eigs", "--checkpoint", "{ckpt}", "--model", "no_such_module_xyz:make",
                                     "--data", "digits"], 1, "no module named 'no_such_module_xyz'"),
    ("model attribute missing", ["eigs", "--checkpoint", "{ckpt}", "--model", "json:no_factory", "--data", "digits"], 1,
     "no attribute"),
    ("model factory fails", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/broken.py:make", "--data", "digits"], 1,
     "boom"),
    ("unknown model name", ["eigs", "--checkpoint", "{ckpt}", "--model", "resnet9000", "--data", "digits"], 1,
     "unknown model"),
    ("model arg rejected", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--model-arg", "depth=3"], 1, "does not accept"),
    ("model arg malformed", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--model-arg", "hidden"], 2, "key=value"),
    ("model missing", ["eigs", "--checkpoint", "{ckpt}", "--data", "digits"], 2, "--model is required"),
    ("data missing", ["eigs", "--checkpoint", "{ckpt}", "--model", "mlp"], 2, "Missing option '--data'"),
    ("empty dataset", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "tensors:{d}/empty.pt"], 1, "empty"),
    ("labels out of range", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/labels.pt"], 1,
     "labels must lie in [0, 9]"),
    ("inputs and targets differ in length", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/lengths.pt"], 1,
     "20 inputs but 19 targets"),
    ("data keys", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/keys_data.pt"], 1, "x/y or inputs/targets"),
    ("missing data file", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "tensors:{d}/none.pt"], 1,
     "data file not found"),
    ("unknown data spec", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "imagenet"], 2, "unknown data spec"),
    ("inputs of the wrong shape", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "digits:image"], 1,
     "cannot run on inputs of shape"),
    ("batch larger than sample", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--batch-size", "5000"], 2,
     "larger than the sample (1797"),
    ("samples larger than data", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--samples", "5000"], 2, "--samples 5000"),
    ("unknown loss", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "hinge"], 2, "unknown loss 'hinge'"),
    ("no eigenvalues asked", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--top-k", "0"], 2, "at least one eigenvalue"),
    ("parameter pattern", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--params", "fc9"], 2, "matches no parameter"),
    ("bad device", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--device", "tpu"], 2, "device"),
    ("bad dtype", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--dtype", "float16"], 2, "float16"),
    ("unknown config keys", ["run", "{d}/unknown.toml"], 2, "unknown key(s) for eigs: topk, colour"),
    ("config syntax", ["run", "{d}/syntax.toml"], 2, "not valid TOML"),
    ("config without command", ["run", "{d}/nocommand.toml"], 2, "set command ="),
    ("config value type", ["run", "{d}/badtype.toml"], 2, "'many' is not a valid integer"),
    ("config flag type", ["run", "{d}/badflag.toml"], 2, "quiet is a flag"),
    ("missing config", ["run", "{d}/none.toml"], 1, "config file not found"),
    ("missing result to plot", ["plot", "{d}/none.json"], 1, "result file not found"),
    ("result without a density", ["plot", "{d}/nodensity.json"], 1, "no spectral density"),
    ("plot file type", ["plot", "{d}/nodensity.json", "--out", "{d}/x.jpgg"], 2, "use a .png"),
    ("float class labels", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/floatlabels.pt"], 1,
     "save them as integers"),
    ("integer images", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/uint8.pt"], 1,
     "convert images to float"),
    ("numpy arrays in a .pt data file", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/numpy.pt"], 1,
     "torch.from_numpy"),
    ("dataset item fails", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user.py:bad_dataset"], 1,
     "reading item 0 of the dataset"),
    ("model returns a tuple", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user.py:tuple_net",
                               "--data", "digits"], 1, "returns a tuple, not a tensor"),
    ("loss not a scalar", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user.py:per_example_loss"], 1,
     "a scalar"),
    ("multi-line error from user code", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user.py:two_lines",
                                         "--data", "digits"], 1, "first line"),
    ("too many eigenvalues", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--params", "2.bias", "--top-k", "11"], 2,
     "exceeds the 10 parameters"),
    ("spectrum without eigenvalues", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--top-k", "0", "--bottom-k", "0",
                                      "--quiet", "--out", "{d}/o"], 2, "at least one eigenvalue"),
    ("seed out of range", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--seed", "100000000000000000000"], 2, "--seed"),
    ("cpu index", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--device", "cpu:1"], 2, "one CPU device"),
    ("output folder not creatable", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--out", "{d}/user.py/sub"], 2,
     "cannot create the output folder"),
    ("output folder not empty", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--out", "{d}"], 2,
     "is not empty (it holds"),
    ("output folder is a file", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--out", "{d}/user.py"], 2, "is a file"),
    ("resume a finished run", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--resume", "--out", "{d}"], 2,
     "no interrupted run"),
    ("resume and overwrite", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--resume", "--overwrite", "--out", "{d}/new"],
     2, "choose one"),
    ("probe block of zero", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--probe-block", "0"], 2, "--probe-block"),
    ("unknown basis place", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--basis", "gpu"], 2, "--basis"),
    ("unknown reorthogonalisation", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--reorth", "partial"], 2,
     "--reorth"),
    ("calibration at the full sample", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--samples", "100",
                                        "--calibrate-at", "100"], 2, "below the sample"),
    ("saved Adam state asked of a bare state dict", ["lr", "--checkpoint", "{d}/bare.pt", *GOOD,
                                                     "--adam-state", "saved"], 2, "carries no usable Adam moments"),
    ("unknown Adam state", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--adam-state", "fresh"], 2, "--adam-state"),
    ("subspace too large", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--subspace", "99"], 2, "--subspace"),
    ("unknown optimizer to validate", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--optimizers", "sgd,rmsprop"],
     2, "--optimizers takes"),
    ("unknown validation criterion", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--criteria", "loss"], 2,
     "--criteria takes"),
    ("no seeds", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--seeds", "0"], 2, "--seeds"),
    ("Adam eps of zero on a zero gradient", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--samples", "60", "--eps", "0",
                                             "--batch-sizes", "30,60", "--batches", "2", "--adam-state", "estimated"],
     1, "set eps > 0"),
    # --- checkpoints, again
    ("empty checkpoint file", ["eigs", "--checkpoint", "{d}/zero_bytes.pt", *GOOD], 1, "corrupt or truncated"),
    ("checkpoint is a folder", ["eigs", "--checkpoint", "{d}/folder.pt", *GOOD], 2, "is a directory"),
    ("checkpoint is text", ["eigs", "--checkpoint", "{d}/text.pt", *GOOD], 1, "not a PyTorch file"),
    ("pickle named .safetensors", ["eigs", "--checkpoint", "{d}/pickle_named.safetensors", *GOOD], 1,
     "as safetensors"),
    ("safetensors header length", ["eigs", "--checkpoint", "{d}/bad_header.safetensors", *GOOD], 1, "invalid header"),
    ("empty safetensors", ["eigs", "--checkpoint", "{d}/zero_bytes.safetensors", *GOOD], 1, "header too small"),
    ("state_dict holds a list", ["eigs", "--checkpoint", "{d}/state_dict_list.pt", *GOOD], 1, "has no state dict"),
    ("infinite weight", ["eigs", "--checkpoint", "{d}/inf.pt", *GOOD], 1,
     "non-finite value(s) (NaN or inf) in '2.bias'"),
    ("weights with an extra dimension", ["eigs", "--checkpoint", "{d}/extra_dim.pt", *GOOD], 1,
     "checkpoint (1, 32, 64), model (32, 64)"),
    ("checkpoint link to itself", ["eigs", "--checkpoint", "{d}/loop.pt", *GOOD], 1, "checkpoint not found"),
    ("empty checkpoint path", ["eigs", "--checkpoint", "", *GOOD], 1, "checkpoint not found"),
    ("checkpoint missing", ["eigs", *GOOD], 2, "Missing option '--checkpoint'"),
    # --- data, again
    ("NaN inputs", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/nan_inputs.pt"], 1, "non-finite inputs"),
    ("infinite inputs", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/inf_inputs.pt"], 1,
     "non-finite inputs"),
    ("negative labels", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/negative_labels.pt"], 1,
     "found range [-5, 4]"),
    ("labels as a column", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/column_labels.pt"], 1,
     "must have shape (40,), got (40, 1)"),
    ("inputs without features", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/flat_inputs.pt"], 1,
     "cannot run on inputs of shape (40,)"),
    ("boolean labels", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/bool_labels.pt"], 1,
     "class labels are booleans"),
    ("probabilities not summing to one", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data",
                                          "{d}/probabilities_not_summing.pt"], 1, "sum to 1"),
    ("data file of garbage", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/garbage_data.pt"], 1,
     "cannot load safely"),
    ("npz without x and y", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/arrays.npz"], 1, "x/y"),
    ("data file is a folder", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/folder.pt"], 1,
     "data file not found"),
    ("tensors: without a path", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "tensors:"], 1,
     "data file not found"),
    ("digits with an unknown view", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "digits:foo"], 1,
     "no module named 'digits'"),
    ("empty data spec", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", ""], 2, "unknown data spec ''"),
    ("empty user dataset", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user2.py:empty_dataset"], 1,
     "is empty"),
    ("dataset of strings", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user2.py:string_dataset"], 1,
     "not (input, target) pairs"),
    ("data factory returns None", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user2.py:no_data"], 1,
     "gave a NoneType"),
    ("data factory returns triples", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user2.py:triples"], 1,
     "not (input, target) pairs"),
    ("data factory missing", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user2.py:nope"], 1,
     "has no attribute 'nope'"),
    ("data module with a syntax error", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/syntax.py:make"], 1,
     "SyntaxError"),
    ("Ctrl-C in the data factory", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--data", "{d}/user2.py:interrupted"], 130,
     "interrupted (Ctrl-C)"),
    ("no samples", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--samples", "0"], 2, "--samples"),
    ("negative samples", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--samples", "-3"], 2, "--samples"),
    ("batch of zero", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--batch-size", "0"], 2, "--batch-size"),
    ("chunk of zero", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--chunk-size", "0"], 2, "--chunk-size"),
    # --- models, again
    ("factory returns a number", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:not_a_module",
                                  "--data", "digits"], 1, "returned a int, not a torch.nn.Module"),
    ("factory needs an argument", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:needs_width",
                                   "--data", "digits"], 1, "missing a required argument: 'width'"),
    ("model module with a syntax error", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/syntax.py:make",
                                          "--data", "digits"], 1, "cannot import model module"),
    ("model file missing", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/none.py:make", "--data", "digits"], 1,
     "file not found"),
    ("model file without a name", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:", "--data", "digits"], 1,
     "unknown model"),
    ("model without parameters", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:no_parameters",
                                  "--data", "digits"], 1, "has no parameters"),
    ("model returns NaN", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:nan_net", "--data", "digits"], 1,
     "not finite"),
    ("model of another width", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:five_classes",
                                "--data", "digits"], 1, "shape mismatch for '2.weight'"),
    ("Ctrl-C in the model factory", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:interrupted",
                                     "--data", "digits"], 130, "interrupted (Ctrl-C)"),
    ("endless recursion in the factory", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:recursion",
                                          "--data", "digits"], 1, "RecursionError"),
    ("MemoryError in the factory", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:out_of_memory",
                                    "--data", "digits"], 1, "MemoryError"),
    ("forward fails", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:failing_net", "--data", "digits"], 1,
     "forward broke"),
    ("Ctrl-C in forward", ["eigs", "--checkpoint", "{ckpt}", "--model", "{d}/user2.py:interrupted_net",
                           "--data", "digits"], 130, "interrupted (Ctrl-C)"),
    ("model arg of the wrong type", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--model-arg", "hidden=abc"], 1,
     "built-in model 'mlp' failed"),
    ("negative width", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--model-arg", "hidden=-1"], 1, "negative dimension"),
    ("model arg without a key", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--model-arg", "=3"], 2, "key=value"),
    ("unknown activation", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--model-arg", "activation=swish"], 1,
     "unknown activation 'swish'"),
    ("empty model spec", ["eigs", "--checkpoint", "{ckpt}", "--model", "", "--data", "digits"], 1, "unknown model ''"),
    ("model spec of a colon", ["eigs", "--checkpoint", "{ckpt}", "--model", ":", "--data", "digits"], 1,
     "unknown model ':'"),
    # --- losses, again
    ("mse on class labels", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "mse"], 1, "mse targets must have"),
    ("bce on class labels", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "bce"], 1, "bce targets must have"),
    ("bce_with_logits on class labels", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "bce_with_logits"], 1,
     "bce_with_logits targets"),
    ("loss fails", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_fails"], 1, "loss broke"),
    ("loss is NaN", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_nan"], 1,
     "the loss is not finite"),
    ("loss returns a float", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_float"], 1,
     "it returned float"),
    ("loss returns an integer tensor", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_integer"],
     1, "a torch.int64 tensor"),
    ("loss returns a complex tensor", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_complex"],
     1, "real floating-point scalar"),
    ("loss returns a vector", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_vector"], 1,
     "it returned (1024,)"),
    ("Ctrl-C in the loss", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", "{d}/user2.py:loss_interrupted"], 130,
     "interrupted (Ctrl-C)"),
    ("empty loss name", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--loss", ""], 2, "unknown loss ''"),
    ("Fisher of a loss without a distribution", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--operator", "fisher",
                                                 "--loss", "{d}/user.py:mean_loss"], 2, "use the empirical Fisher"),
    # --- options
    ("no Lanczos steps", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--steps", "0"], 2, "--steps"),
    ("negative steps", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--steps", "-1"], 2, "--steps"),
    ("steps not a number", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--steps", "abc"], 2, "not a valid integer"),
    ("no probes", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--probes", "0"], 2, "--probes"),
    ("tolerance of zero", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--tol", "0"], 2, "--tol"),
    ("negative tolerance", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--tol", "-1"], 2, "--tol"),
    ("NaN tolerance", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--tol", "nan"], 2, "not a finite number"),
    ("infinite tolerance", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--tol", "inf"], 2, "not a finite number"),
    ("tolerance of one or more", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--tol", "2"], 2, "0<x<1"),
    ("spectrum tolerance of one", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--tol", "1"], 2, "0<x<1"),
    ("lr tolerance of one", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--tol", "1"], 2, "0<x<1"),
    ("no Lanczos step budget", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--max-steps", "0"], 2, "--max-steps"),
    ("negative top-k", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--top-k", "-1"], 2, "--top-k"),
    ("negative bottom-k", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--bottom-k", "-1"], 2, "--bottom-k"),
    ("no trace products", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--products", "0"], 2, "--products"),
    ("too few trace products", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--products", "2"], 2, "x>=3"),
    ("unknown trace method", ["trace", "--checkpoint", "{ckpt}", *GOOD, "--method", "exact"], 2, "--method"),
    ("unknown operator", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--operator", "kfac"], 2, "'kfac' is not one of"),
    ("empty parameter pattern", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--params", ""], 2,
     "empty parameter pattern"),
    ("parameter pattern of a comma", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--params", ","], 2,
     "empty parameter pattern"),
    ("negative seed", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--seed", "-1"], 2, "--seed"),
    ("unknown eigensolver", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--method", "lanczo"], 2,
     "'lanczo' is not one of"),
    ("empty dtype", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--dtype", ""], 2, "--dtype"),
    ("empty device", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--device", ""], 2, "unknown device ''"),
    ("device index not a number", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--device", "cuda:x"], 2,
     "unknown device 'cuda:x'"),
    ("no spectrum trace products", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--trace-products", "0"], 2,
     "--trace-products"),
    ("unknown spectrum trace method", ["spectrum", "--checkpoint", "{ckpt}", *GOOD, "--trace-method", "exact"], 2,
     "--trace-method"),
    ("batch sizes not numbers", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batch-sizes", "a,b"], 2,
     "integers separated by commas"),
    ("batch size of zero", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batch-sizes", "0"], 2, "positive integers"),
    ("empty batch sizes", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batch-sizes", ""], 2, "positive integers"),
    ("batch size above the sample", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batch-sizes", "5000"], 2,
     "larger than the sample"),
    ("negative batch size", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batch-sizes", "-4"], 2, "positive integers"),
    ("momentum above one", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--momentum", "1.5"], 2, "--momentum"),
    ("negative momentum", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--momentum", "-0.1"], 2, "--momentum"),
    ("NaN momentum", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--momentum", "nan"], 2, "not a finite number"),
    ("beta1 of one", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--beta1", "1"], 2, "--beta1"),
    ("beta2 of two", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--beta2", "2"], 2, "--beta2"),
    ("negative eps", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--eps", "-1"], 2, "--eps"),
    ("infinite eps", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--eps", "inf"], 2, "not a finite number"),
    ("negative weight decay", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--weight-decay", "-1"], 2, "--weight-decay"),
    ("safety of zero", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--safety", "0"], 2, "--safety"),
    ("safety above one", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--safety", "5"], 2, "--safety"),
    ("no batches", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batches", "0"], 2, "--batches"),
    ("one batch", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--batches", "1"], 2, "x>=2"),
    ("calibration at zero", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--calibrate-at", "0"], 2, "--calibrate-at"),
    ("calibration not a number", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--calibrate-at", "abc"], 2, "--calibrate-at"),
    ("no calibration steps", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--calibration-steps", "0"], 2,
     "--calibration-steps"),
    ("no calibration seeds", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--calibration-seeds", "0"], 2,
     "--calibration-seeds"),
    ("calibration blow-up below one", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--calibration-blowup", "0.5"], 2,
     "--calibration-blowup"),
    ("calibration precision of zero", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--calibration-precision", "0"], 2,
     "--calibration-precision"),
    ("Adam horizon of zero", ["lr", "--checkpoint", "{ckpt}", *GOOD, "--adam-horizon", "0"], 2, "--adam-horizon"),
    ("infinite blow-up", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--blowup", "inf"], 2, "not a finite number"),
    ("blow-up below one", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--blowup", "0.5"], 2, "--blowup"),
    ("no training steps", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--steps", "0"], 2, "--steps"),
    ("bisection precision of zero", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--precision", "0"], 2,
     "--precision"),
    ("no optimizers", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--optimizers", ""], 2, "--optimizers takes"),
    ("no criteria", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--criteria", ""], 2, "--criteria takes"),
    ("validation batch of zero", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--batch-sizes", "0"], 2,
     "positive integers"),
    ("negative seeds", ["validate-lr", "--checkpoint", "{ckpt}", *GOOD, "--seeds", "-1"], 2, "--seeds"),
    ("unknown option", ["eigs", "--nosuchoption"], 2, "No such option '--nosuchoption'"),
    ("unknown command", ["nosuchcommand"], 2, "No such command 'nosuchcommand'"),
    ("demo seed not a number", ["demo", "--seed", "abc"], 2, "'abc' is not a valid integer"),
    # --- configs, again
    ("config that runs a config", ["run", "{d}/nested.toml"], 2, "(got 'run')"),
    ("config of an unknown command", ["run", "{d}/unknown_command.toml"], 2, "(got 'fly')"),
    ("binary config", ["run", "{d}/binary.toml"], 2, "is not a text file"),
    ("config is a folder", ["run", "{d}/folder.toml"], 2, "is a directory"),
    ("config list for a number", ["run", "{d}/list_value.toml"], 2, "top_k takes one value"),
    ("config without a checkpoint", ["run", "{d}/no_checkpoint.toml"], 2, "Missing option '--checkpoint'"),
    ("config command a number", ["run", "{d}/number_command.toml"], 2, "(got 3)"),
    ("config with a table", ["run", "{d}/table.toml"], 2, "unknown key(s) for eigs: extra"),
    ("config NaN tolerance", ["run", "{d}/nan_tol.toml"], 2, "not a finite number"),
    ("config negative steps", ["run", "{d}/negative_steps.toml"], 2, "--steps"),
    ("run without a config", ["run"], 2, "Missing argument 'CONFIG'"),
    ("a checkpoint given as a config", ["run", "{ckpt}"], 2, "is not a text file"),
    # --- output folders, again
    ("output folder under a file", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--out", "{d}/a_file/x"], 2,
     "cannot create the output folder"),
    ("empty output path", ["eigs", "--checkpoint", "{ckpt}", *GOOD, "--out", ""], 2, "is not empty"),
    ("demo into a file", ["demo", "--out", "{d}/a_file"], 2, "is a file"),
    # --- plots, again
    ("plot invalid JSON", ["plot", "{d}/bad.json"], 1, "is not valid JSON"),
    ("plot a JSON list", ["plot", "{d}/list.json"], 1, "no spectral density"),
    ("plot an empty file", ["plot", "{d}/empty.json"], 1, "is not valid JSON"),
    ("plot NaN nodes", ["plot", "{d}/nan_density.json", "--out", "{d}/o/nan.png"], 1, "not finite"),
    ("plot text nodes", ["plot", "{d}/text_nodes.json", "--out", "{d}/o/text.png"], 1, "cannot be plotted"),
    ("plot a folder without a result", ["plot", "{d}/folder.json"], 1, "result file not found"),
    ("plot nothing", ["plot"], 2, "Missing argument 'RESULTS...'"),
    ("plot into a folder", ["plot", "{d}/bad.json", "--out", "{d}/folder.pt"], 2, "is a directory"),
    ("plot a checkpoint", ["plot", "{ckpt}"], 1, "is not valid JSON"),
    ("more labels than results", ["plot", "{d}/nodensity.json", "--label", "a", "--label", "b"], 1,
     "no spectral density"),
    # track (issue 16)
    ("track a glob matching nothing", ["track", "{d}/nothing_*.pt", *GOOD], 2, "matches no file"),
    ("track no checkpoints", ["track", *GOOD], 2, "Missing argument 'CHECKPOINT...'"),
    ("track a missing second checkpoint", ["track", "{ckpt}", "{d}/nope.pt", *GOOD, "--samples", "50",
                                           "--trace-products", "0"], 1, "checkpoint not found"),
    ("track a checkpoint of another model", ["track", "{ckpt}", "{d}/keys.pt", *GOOD, "--samples", "50",
                                             "--trace-products", "0"], 1, "1 missing ('2.bias')"),
    ("track two trace products", ["track", "{ckpt}", *GOOD, "--trace-products", "2"], 2, "at least 3"),
    ("track a batch above the sample", ["track", "{ckpt}", *GOOD, "--samples", "100", "--batch-size", "500"], 2,
     "larger than the sample (100"),
    ("track a negative learning rate", ["track", "{ckpt}", *GOOD, "--lr", "-1"], 2, "--lr"),
    ("track a NaN learning rate", ["track", "{ckpt}", *GOOD, "--lr", "nan"], 2, "not a finite number"),
    ("track momentum of one", ["track", "{ckpt}", *GOOD, "--momentum", "1"], 2, "--momentum"),
]


@pytest.mark.parametrize("name,args,code,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gives_one_line_and_exit_code(tmp_path, bad_files, checkpoint, name, args, code, words):
    args = [a.format(d=bad_files, ckpt=checkpoint) for a in args]
    extra = ["--quiet", "--out", str(tmp_path / "out")] if args[0] in ANALYSES and "--out" not in args else []
    result = invoke(*args, *extra)
    assert result.exit_code == code, (result.output, result.exception)
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr


def test_the_table_is_large_and_spans_every_command():
    assert len(BAD_INPUTS) >= 150
    assert len({name for name, *_ in BAD_INPUTS}) == len(BAD_INPUTS)
    assert set(main.commands) <= {args[0] for _, args, _, _ in BAD_INPUTS}


# --- properties over configs and option values --------------------------------------------------

COMMANDS = {n: c for n, c in main.commands.items() if n != "run"}
OPTION_NAMES = sorted({p.name for c in COMMANDS.values() for p in c.params if isinstance(p, click.Option)} |
                      {"top-k", "batch-sizes", "steps", "probes"})
SCALARS = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.text(max_size=20), st.none())
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.dictionaries(st.text(max_size=5), SCALARS, max_size=2))
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def toml_value(value: object) -> str:
    """A TOML literal for ``value`` (None becomes an empty inline table, NaN and inf stay TOML's)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if math.isnan(value) else repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f'"{k.encode("unicode_escape").decode("ascii")}" = {toml_value(v)}'
                           for k, v in value.items()) + "}"


@HYPOTHESIS
@given(command=st.one_of(st.sampled_from(sorted(COMMANDS)), st.text(max_size=10)),
       entries=st.dictionaries(st.one_of(st.sampled_from(OPTION_NAMES), st.text(min_size=1, max_size=12)), VALUES,
                               max_size=5),
       garbage=st.one_of(st.just(""), st.text(max_size=30)))
def test_any_config_parses_to_a_command_line_or_one_usage_error(command, entries, garbage):
    lines = [f"command = {toml_value(command)}"]
    lines += [f'"{k.encode("unicode_escape").decode("ascii").replace(chr(34), "")}" = {toml_value(v)}'
              for k, v in entries.items()]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_text("\n".join(lines) + "\n" + garbage)
        try:
            name, argv, _ = command_line(path, COMMANDS)
        except InputError as exc:  # UsageError is one: a clean, one-line refusal
            assert "\n" not in str(exc).strip()
            return
        # what click refuses, the CLI reports in one line
        with contextlib.suppress(click.UsageError, click.BadParameter):
            COMMANDS[name].make_context(name, list(argv))


NUMERIC_OPTIONS = ["--steps", "--probes", "--top-k", "--bottom-k", "--tol", "--max-steps", "--trace-products",
                   "--seed", "--samples", "--chunk-size", "--batch-size", "--probe-block"]


@HYPOTHESIS
@given(choices=st.lists(st.tuples(st.sampled_from(NUMERIC_OPTIONS + ["--device", "--dtype", "--loss", "--operator",
                                                                     "--params", "--basis", "--reorth", "--data"]),
                                  st.one_of(st.text(max_size=12), st.integers(-10**6, 10**6).map(str),
                                            st.floats(allow_nan=True).map(str))),
                        min_size=1, max_size=4))
def test_any_option_values_end_in_one_error_line_or_a_run(choices):
    with tempfile.TemporaryDirectory() as folder:
        args = ["spectrum", "--checkpoint", str(Path(folder) / "missing.pt"), "--model", "mlp", "--quiet",
                "--out", str(Path(folder) / "out")]
        for option, value in choices:
            args += [option, value]
        result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2), (args, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), (args, result.stderr)
