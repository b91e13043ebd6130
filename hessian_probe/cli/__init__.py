"""The hessian-probe command line: parse options, make one library call, write what it returns.

Every command loads a :class:`~hessian_probe.loading.ProblemSpec` into a Problem, builds the
curvature operator and calls exactly one analysis function, so the shell and the Python API
give the same numbers. Bad input ends with one ``Error:`` line and exit code 1 (data, model,
files) or 2 (usage); ``--debug`` shows the traceback instead.

app.py holds the group and its error handling, options.py the shared options, running.py how an
analysis command runs, and analyses.py, learning_rates.py, tracking.py and tools.py the commands.
"""

from . import analyses, learning_rates, tools, tracking  # noqa: F401  (each registers its commands on main)
from .app import CommandError, main

__all__ = ["CommandError", "main"]
