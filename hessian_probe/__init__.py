"""hessian-probe: matrix-free Hessian and Gauss-Newton spectra of PyTorch models.

Data flow: a :class:`Problem` (model, parameters, loss, examples) -> a curvature operator
(:func:`curvature_operator`) -> Krylov kernels (:mod:`hessian_probe.linalg`) -> frozen results.
"""

from .analysis import (
    Hyperparameters,
    LearningRateResult,
    SpectrumResult,
    TrainingRecipe,
    ValidationResult,
    learning_rates,
    spectrum,
    validate_learning_rates,
)
from .linalg import extremal_eigs, hutchinson, hutchpp, lanczos, slq, trace
from .loading.data import streamed
from .losses import get_loss
from .operators import (
    CurvatureOperator,
    DenseOperator,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    curvature_operator,
)
from .problem import Problem, make_problem
from .protocols import COMPUTE_NOW, SOLO, Group, Pieces

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator",
    "Hyperparameters",
    "LearningRateResult",
    "SpectrumResult",
    "TrainingRecipe",
    "ValidationResult",
    "learning_rates",
    "spectrum",
    "validate_learning_rates",
    "COMPUTE_NOW",
    "DenseOperator",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "Group",
    "Pieces",
    "SOLO",
    "HessianOperator",
    "Problem",
    "__version__",
    "curvature_operator",
    "extremal_eigs",
    "get_loss",
    "hutchinson",
    "hutchpp",
    "lanczos",
    "make_problem",
    "slq",
    "streamed",
    "trace",
]
