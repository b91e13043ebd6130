"""The layout shows the data flow (issue 15): imports run only downward, cli -> input/output ->
analysis -> linalg -> operators -> problem -> leaves; the maths never imports the runtime (ranks,
journal); no file of the command line is over 300 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "hessian_probe"

LAYERS = [  # lowest first; a module may import its own layer and the ones below
    ("leaves", ["protocols", "runtime", "losses", "parameters", "results", "files", "errors", "imports", "dtypes",
                "config", "batches", "streams", "placement", "seeds", "__version__"]),
    ("problem", ["problem"]),
    ("operators", ["operators"]),
    ("linalg", ["linalg"]),
    ("analysis", ["analysis"]),
    ("training", ["training"]),
    ("input and output", ["loading", "io", "outputs", "plots", "progress", "demo"]),
    ("command line", ["cli", "__main__", "distributed", "journal"]),  # distributed, journal: old names of runtime's
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top == "__init__":
        return len(LAYERS)  # the package's own re-exports sit above everything
    for rank, (_, names) in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"hessian_probe.{top} belongs to no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("hessian_probe",) + path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """The hessian_probe modules ``module`` imports (relative or absolute, anywhere in the file)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            if node.module:
                found.add(".".join(base + [node.module]))
            else:
                found.update(".".join(base + [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hessian_probe"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hessian_probe"))
    return found


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_only_downward(module):
    rank = layer_of(module)
    upward = sorted(m for m in imports(module, MODULES[module]) if m != "hessian_probe" and layer_of(m) > rank)
    assert not upward, f"{module} ({LAYERS[rank][0]}) imports from above: {upward}"


def test_the_maths_never_imports_the_runtime():
    for module, path in MODULES.items():
        if module.split(".")[1:2] in (["linalg"], ["analysis"], ["operators"]):
            runtime = [m for m in imports(module, path)
                       if m.split(".")[1] in ("runtime", "distributed", "journal", "cli")]
            assert not runtime, f"{module} imports {runtime}"
            assert "import click" not in path.read_text() and "torch.distributed" not in path.read_text(), module


def test_the_command_line_is_small_files():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    assert max(sizes.values()) <= 300, sizes


def test_an_upward_import_would_be_caught(tmp_path):
    fake = tmp_path / "lanczos.py"
    fake.write_text("import torch\nfrom ..cli.app import main\nfrom .. import runtime\n\ndef f():\n"
                    "    from ..analysis import lr\n")
    found = imports("hessian_probe.linalg.lanczos", fake)
    assert found == {"hessian_probe.cli.app", "hessian_probe.runtime", "hessian_probe.analysis"}
    assert layer_of("hessian_probe.cli.app") > layer_of("hessian_probe.analysis") > layer_of("hessian_probe.linalg.x")
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("hessian_probe.newthing")


class Recorder:
    """A protocols.Pieces that computes every piece and records its key and kind."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, str]] = []

    def own(self, key, compute):
        self.keys.append(("own", key))
        return compute()

    def shared(self, key, compute):
        self.keys.append(("shared", key))
        return compute()


def test_an_analysis_runs_its_pieces_through_the_protocol_it_is_given():
    import torch

    from hessian_probe import COMPUTE_NOW, curvature_operator, make_problem, spectrum

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    op = curvature_operator(make_problem(model, (x, y), "cross_entropy"), "hessian")
    recorder = Recorder()
    kwargs = dict(n_steps=10, n_probes=4, top_k=2, bottom_k=1, trace_products=9, probe_block=2, seed=3)
    recorded = spectrum(op, pieces=recorder, **kwargs)
    assert recorder.keys == [("shared", "slq-0"), ("shared", "slq-1"), ("shared", "eigs"), ("shared", "trace")]
    assert op.group.world_size == 1 and op.problem.group.rank == 0
    plain = spectrum(op, pieces=COMPUTE_NOW, **kwargs)
    assert list(recorded.eigs.top_eigenvalues) == list(plain.eigs.top_eigenvalues)
    assert recorded.trace.estimate == plain.trace.estimate


MATHS = ("problem", "losses", "parameters", "batches", "placement", "operators", "linalg", "analysis", "training")


def test_the_maths_names_no_cli_flag():
    """Library messages name a setting as `name` (errors.setting); the CLI shows it as --name."""
    flag = re.compile(r"(?<![\w-])--([a-z][a-z-]+|$)")  # $: an f-string part before "{name}", e.g. "pass --"
    for module, path in MODULES.items():
        if module.split(".")[1:2] not in [[name] for name in MATHS]:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        named = [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                 and isinstance(node.value, str) and id(node) not in docstrings and flag.search(node.value)]
        assert not named, f"{module} names CLI flags: {named}"


def test_the_command_line_shows_settings_as_flags():
    from hessian_probe.errors import as_flags, flags_in_notes, setting

    assert as_flags(f"rerun with {setting('adam_horizon')} 50") == "rerun with --adam-horizon 50"
    record = {"warnings": ["use `smallest_batch` 8"], "path": "`kept`", "fit": {"notes": ["`eps`"]}}
    assert flags_in_notes(record) == {"warnings": ["use --smallest-batch 8"], "path": "`kept`",
                                      "fit": {"notes": ["--eps"]}}


def test_the_command_line_names_every_operator_and_the_plots_know_which_are_psd():
    from hessian_probe.cli.options import OPERATOR_NAMES
    from hessian_probe.operators import OPERATORS
    from hessian_probe.plots import COLOURS, PSD_OPERATORS

    assert OPERATOR_NAMES == tuple(OPERATORS) and set(COLOURS) == set(OPERATORS)
    assert set(PSD_OPERATORS) == set(OPERATORS) - {"hessian"}  # J^T S J with S PSD; the Hessian is indefinite
