"""The resume journal under its older name: ``hessian_probe.journal`` is
:mod:`hessian_probe.runtime.journal` (the same module object, for scripts that import it)."""

import sys

from .runtime import journal

sys.modules[__name__] = journal
