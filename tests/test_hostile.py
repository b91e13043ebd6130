"""Property-based checks (hypothesis) that no config file and no option value, however malformed,
gets past parsing as anything but a clean run or one `Error:` line with exit code 1 or 2."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import click
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hessian_probe.cli import main
from hessian_probe.config import command_line
from hessian_probe.errors import InputError

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
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
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
        with contextlib.suppress(click.UsageError, click.BadParameter):  # what click refuses, the CLI reports in one line
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
