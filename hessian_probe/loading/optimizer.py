"""The checkpoint's optimizer state under its older name: ``hessian_probe.loading.optimizer`` is
:mod:`hessian_probe.analysis.optimizer_state` (the same module object, for scripts that import it)."""

import sys

from ..analysis import optimizer_state

sys.modules[__name__] = optimizer_state
