"""The torchrun runtime under its older name: ``hessian_probe.distributed`` is
:mod:`hessian_probe.runtime.torchrun` (the same module object, for scripts that import it)."""

import sys

from .runtime import torchrun

sys.modules[__name__] = torchrun
