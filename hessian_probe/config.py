"""TOML config files: the same options as the command line, one file per run.

A config names its ``command`` and gives that command's options by their long names, with
dashes or underscores (``top_k = 5`` is ``--top-k 5``). ``model_args`` may be a table.
Flags are booleans; repeatable options take lists. Paths are relative to the current directory,
as on the command line. The config becomes an argument list that the command parses itself,
so a config and the equivalent shell line run identically, type checks included.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from .errors import InputError, UsageError


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a text file") from None


def command_line(path: Path, commands: Mapping[str, click.Command]) -> tuple[str, list[str], dict[str, Any]]:
    """(command name, argument list, parsed content) for the config at ``path``; ``commands`` are
    the commands a config may name."""
    content = read_config(path)
    name = content.get("command")
    if name not in commands:
        raise UsageError(f"{path}: set command = one of {', '.join(sorted(commands))} (got {name!r})")
    return name, to_arguments(content, commands[name], path), content


def to_arguments(content: Mapping[str, Any], command: click.Command, path: Path | str = "config") -> list[str]:
    """Config keys to ``--option value`` arguments for ``command``; unknown keys are named."""
    options = {p.name: p for p in command.params if isinstance(p, click.Option) and p.name not in ("debug", "help")}
    by_flag = {flag.lstrip("-").replace("-", "_"): p
               for p in options.values() for flag in p.opts if flag.startswith("--")}
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    positional: list[str] = []
    argv: list[str] = []
    unknown = []
    for key, value in content.items():
        if key == "command":
            continue
        name = key.replace("-", "_")
        if name in ("model_args", "model_arg") and "model_args" in options:
            pairs = [f"{k}={v!r}" for k, v in value.items()] if isinstance(value, dict) else _as_list(value, key)
            argv += [f"--model-arg={p}" for p in pairs]
        elif name in by_flag:
            argv += _option_arguments(by_flag[name], value, key, path)
        elif any(a.name == name for a in arguments):
            positional += [str(v) for v in _as_list(value, key)]
        else:
            unknown.append(key)
    if unknown:
        valid = {flag.lstrip("-").replace("-", "_")
                 for p in options.values() for flag in p.opts if flag.startswith("--")}
        if "model_arg" in valid:
            valid = valid - {"model_arg"} | {"model_args"}
        valid = sorted(valid | {a.name for a in arguments})
        raise UsageError(f"{path}: unknown key(s) for {command.name}: {', '.join(unknown)} "
                          f"(valid: {', '.join(valid)})")
    return argv + (["--", *positional] if positional else [])


def _option_arguments(option: click.Option, value: Any, key: str, path: Path | str) -> list[str]:
    flag = next(f for f in option.opts if f.startswith("--"))
    if option.is_flag:
        if not isinstance(value, bool):
            raise UsageError(f"{path}: {key} is a flag: set it to true or false, not {value!r}")
        return [flag] if value else []
    if isinstance(value, (dict, list)) and not option.multiple:
        raise UsageError(f"{path}: {key} takes one value, not {value!r}")
    return [f"{flag}={v}" for v in (_as_list(value, key) if option.multiple else [value])]


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, dict):
        raise UsageError(f"{key} takes a value or a list, not a table")
    return list(value) if isinstance(value, list) else [value]
