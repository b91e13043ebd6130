"""Errors a user can fix: each carries one line naming the problem and the fix, and an exit code."""

from __future__ import annotations


class InputError(ValueError):
    """Bad data, model, checkpoint or file (exit code 1). A ValueError, so library callers catch it as one."""

    exit_code = 1


class ConfigError(InputError):
    """A usage error: bad option or config value (exit code 2, like click's usage errors)."""

    exit_code = 2
