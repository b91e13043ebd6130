"""Krylov kernels: pure functions of a CurvatureOperator returning frozen results."""

from .eigs import EigenResult, extremal_eigs, lanczos_eigs, power_eigs
from .lanczos import LanczosResult, lanczos
from .probes import random_probes
from .quadrature import SLQResult, SpectralDensity, gauss_quadrature, pool_probes, slq, smoothed_density
from .trace import TraceResult, hutchinson, hutchpp, trace

__all__ = [
    "EigenResult",
    "LanczosResult",
    "SLQResult",
    "SpectralDensity",
    "TraceResult",
    "extremal_eigs",
    "gauss_quadrature",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "lanczos_eigs",
    "pool_probes",
    "power_eigs",
    "random_probes",
    "slq",
    "smoothed_density",
    "trace",
]
