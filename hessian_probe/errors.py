"""Errors a user can fix: each carries one line naming the problem and the fix, and an exit code."""

from __future__ import annotations

import re
from typing import Any

# How the library names a setting in a message: `name`, the keyword of the library call; the
# command line shows it as its flag (--name, as_flags), so that library messages name no CLI flag.
SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def setting(name: str) -> str:
    """A setting named in a message: `name`, which the command line shows as --name."""
    return f"`{name}`"


FLAG_NAMES = {"hessian_mode": "hvp"}  # settings whose flag is not their name with dashes


def as_flags(text: str) -> str:
    """A library message as the command line says it: every `setting` becomes its --flag."""
    return SETTING.sub(lambda m: "--" + FLAG_NAMES.get(m.group(1), m.group(1)).replace("_", "-"), text)


def flags_in_notes(value: Any, key: str = "") -> Any:
    """``value`` with as_flags applied to the strings under 'warnings', 'notes' and 'note' keys, at any
    depth (a record's messages; nothing else in it is touched)."""
    if isinstance(value, dict):
        return {k: flags_in_notes(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [flags_in_notes(v, key) for v in value]
    return as_flags(value) if isinstance(value, str) and key in ("warnings", "notes", "note") else value


class InputError(ValueError):
    """Bad data, model, checkpoint or file (exit code 1). A ValueError, so library callers catch it as one."""

    exit_code = 1


class UsageError(InputError):
    """A bad option or config value (exit code 2, like click's own usage errors)."""

    exit_code = 2


class NonFiniteError(InputError):
    """A loss, gradient or curvature product that is not finite, with where it happened: ``where``
    (e.g. the batch), the ``rows`` concerned (vectors of a block, or Lanczos probes) and the step."""

    def __init__(self, what: str, where: str, rows: list[int] | None = None, *, row_name: str = "vector",
                 step: int | None = None) -> None:
        self.what, self.where, self.rows = what, where, rows or []
        which = f" for {row_name}(s) {self.rows}" if self.rows else ""
        when = f" at Lanczos step {step}" if step is not None else ""
        super().__init__(f"{what} is not finite {where}{which}{when}: check the weights and data there "
                         "(`dtype` float64 rules out float32 overflow)")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` — enough to recognise a foreign exception in one line
    (a DataLoader worker's: the original error, not torch's 'Caught ... in DataLoader worker')."""
    original = _worker_original(str(exc))
    if original is not None:
        return original
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def worker_error(message: str) -> str:
    """The message a DataLoader worker raised, from torch's re-raised text ('Caught X in
    DataLoader worker process n. Original Traceback ... X: message'); other text as it is."""
    original = _worker_original(message)
    return message if original is None else original.partition(": ")[2] or original


def _worker_original(text: str) -> str | None:
    """'Type: first line' of the exception in a DataLoader worker's re-raised text ('Caught Type in
    DataLoader worker process n.', then its traceback, chained causes first): the last line of
    the traceback that starts with that type (None: not such a text)."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("Caught ") or "DataLoader worker" not in lines[0]:
        return None
    kind = lines[0].removeprefix("Caught ").split(" ", 1)[0]
    for line in reversed(lines[1:]):
        name, sep, message = line.partition(":")
        if not line[:1].isspace() and (name == kind or name.endswith(f".{kind}")):
            return f"{kind}{sep}{message}".strip()
    return None


def one_line(message: str) -> str:
    """The first non-empty line of a message (the rule: every error is one line)."""
    return next((line.strip() for line in message.strip().splitlines() if line.strip()), message)
