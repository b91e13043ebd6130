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

SKIPPED_KEYS = ("debug", "help", "config", "print_config")  # options that are not a run's settings


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
    options = {p.name: p for p in command.params if isinstance(p, click.Option) and p.name not in SKIPPED_KEYS}
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
        table = {"model_args": "model_args", "model_arg": "model_args", "data_args": "data_args",
                 "data_arg": "data_args"}.get(name)
        if table in options:
            pairs = [f"{k}={v!r}" for k, v in value.items()] if isinstance(value, dict) else _as_list(value, key)
            flag = "--model-arg" if table == "model_args" else "--data-arg"
            argv += [f"{flag}={p}" for p in pairs]
        elif name in by_flag:
            argv += _option_arguments(by_flag[name], value, key, path)
        elif any(a.name == name for a in arguments):
            positional += [str(v) for v in _as_list(value, key)]
        else:
            unknown.append(key)
    if unknown:
        valid = {flag.lstrip("-").replace("-", "_")
                 for p in options.values() for flag in p.opts if flag.startswith("--")}
        for single in ("model_arg", "data_arg"):
            if single in valid:
                valid = valid - {single} | {single + "s"}
        valid = sorted(valid | {a.name for a in arguments})
        raise UsageError(f"{path}: unknown key(s) for {command.name}: {', '.join(unknown)} "
                          f"(valid: {', '.join(valid)})")
    return argv + (["--", *positional] if positional else [])


def _option_arguments(option: click.Option, value: Any, key: str, path: Path | str) -> list[str]:
    flag = next(f for f in option.opts if f.startswith("--"))
    if option.is_flag:
        if not isinstance(value, bool):
            raise UsageError(f"{path}: {key} is a flag: set it to true or false, not {value!r}")
        off = next((f for f in option.secondary_opts if f.startswith("--")), None)  # --nesterov/--no-nesterov
        return [flag] if value else ([off] if off else [])
    if isinstance(value, list) and option.name == "safe_globals":  # a list of names, or one comma-separated string
        value = ",".join(map(str, value))
    if isinstance(value, (dict, list)) and not option.multiple:
        raise UsageError(f"{path}: {key} takes one value, not {value!r}")
    return [f"{flag}={v}" for v in (_as_list(value, key) if option.multiple else [value])]


def split_options(args: list[str]) -> tuple[list[str], list[str]]:
    """(the arguments before ``--``, the rest from ``--`` on): options live only in the first part."""
    return (args[: args.index("--")], args[args.index("--"):]) if "--" in args else (list(args), [])


def resolved_config(command: click.Command, name: str, args: list[str], parent: click.Context) -> str:
    """The config (TOML) ``command`` would run with, given ``args``: parsed and checked by the
    command itself, nothing run (--print-config)."""
    with command.make_context(name, list(args), parent=parent) as resolved:
        return to_toml(command, resolved.params)


def expand(args: list[str], command: click.Command, ctx: click.Context | None = None
           ) -> tuple[list[str], dict[str, Any] | None]:
    """``--config FILE`` among a command's arguments: the file's options first, then the command
    line's, which win (click takes the last value of an option given twice; a repeatable option
    the line gives replaces the config's list, except --model-arg and --data-arg, merged by key;
    the config's positional arguments count only when the line gives none). Also the
    config as read (path and content), for the provenance; (args, None) without --config."""
    head, tail = split_options(args)
    path, kept = None, []
    i = 0
    while i < len(head):
        arg = head[i]
        if arg == "--config":
            if i + 1 >= len(head):
                raise UsageError("--config needs a FILE.toml")
            path, i = head[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.removeprefix("--config=")
        else:
            kept.append(arg)
        i += 1
    if path is None:
        return args, None
    content = read_config(Path(path))
    named = content.get("command")
    if named is not None and named != command.name:
        raise UsageError(f"{path} is a config for the {named} command, not for {command.name}")
    options, positional = split_options(to_arguments(content, command, path))
    positional = positional[1:]  # after the "--"
    options = _without_replaced(options, kept, command)
    line = options + kept + tail
    given = _positional(command, kept + tail, ctx)
    if positional and not given:
        line += ([] if tail else ["--"]) + positional
    return line, {"path": str(path), "content": content}


MERGED_BY_KEY = ("model_args", "data_args")  # KEY=VALUE options: the line's keys win, the config's others stay


def _without_replaced(options: list[str], line: list[str], command: click.Command) -> list[str]:
    """The config's arguments less the repeatable options the command line gives again (its list
    replaces the config's; --model-arg and --data-arg merge by key instead, the line's winning)."""
    def given(flags: list[str], args: list[str]) -> bool:
        return any(a == f or a.startswith(f + "=") for a in args for f in flags)

    replaced = [p.opts for p in command.params if isinstance(p, click.Option) and p.multiple
                and p.name not in MERGED_BY_KEY and given(p.opts, line)]
    return [a for a in options if not any(given(flags, [a]) for flags in replaced)]


def _positional(command: click.Command, args: list[str], ctx: click.Context | None) -> list[str]:
    """The positional arguments among ``args``, as the command's own parser reads them."""
    with click.Context(command, parent=ctx, resilient_parsing=True) as sub:
        try:
            _, positional, _ = command.make_parser(sub).parse_args(list(args))
        except click.UsageError:
            return []
    return positional


def to_toml(command: click.Command, params: Mapping[str, Any]) -> str:
    """The options a command was resolved to, as a config that `run` (or --config) reads back."""
    lines = [f"command = {_toml_value(command.name)}"]
    for param in command.params:
        if param.name in SKIPPED_KEYS or param.name not in params or params[param.name] is None:
            continue
        value = params[param.name]
        if isinstance(param, click.Argument):
            key = param.name
        else:
            key = next(f for f in param.opts if f.startswith("--")).lstrip("-").replace("-", "_")
            if key in ("model_arg", "data_arg"):
                key += "s"
        if isinstance(value, tuple) and not getattr(param, "multiple", False) and \
                not isinstance(param, click.Argument):  # a comma-separated option parsed to a tuple
            if not value:
                continue
            value = ",".join(map(str, value))
        if isinstance(value, tuple):
            value = list(value)
        if value == [] and (getattr(param, "multiple", False) or isinstance(param, click.Argument)):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, dict):
        raise UsageError(f"{key} takes a value or a list, not a table")
    return list(value) if isinstance(value, list) else [value]
