"""validate-lr's library call: the predictions of ``learning_rates`` (given, or computed here) beside
the thresholds short torch.optim runs measure (``validate_learning_rates``), as one typed result."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError, setting
from ..operators import ProductSettings
from ..problem import Problem
from ..protocols import COMPUTE_NOW, Pieces
from ..results import to_jsonable
from .lr import LearningRateResult, learning_rates
from .optimizer_state import optimizer_state_of, saved_adam_state
from .validate import CRITERIA, TrainingRecipe, validate_learning_rates


@dataclass(frozen=True)
class ValidationReport:
    """validate-lr's result: ``learning_rates`` (a LearningRateResult) whose ``validation`` holds the
    measured thresholds of the predictions it carries."""

    learning_rates: LearningRateResult

    @property
    def validation(self) -> Any:
        return self.learning_rates.validation

    def to_dict(self) -> dict[str, Any]:
        """validation.json's record: the measured rows, how they were measured, and lr.json's record."""
        validation, scan = self.validation, self.learning_rates.scan
        added = validation.record()
        return to_jsonable({"operator": scan.operator, "n_params": scan.n_params, "n_samples": scan.n_samples,
                            "validation": added["validation"],
                            "validation_no_progress": added["validation_no_progress"],
                            "definition": validation.definition,
                            "settings": dict(batch_sizes=validation.batch_sizes, optimizers=validation.optimizers,
                                             criteria=validation.criteria, seed=validation.seed,
                                             adam_state=validation.adam_source,
                                             **dataclasses.asdict(validation.recipe)),
                            "lr": self.learning_rates.to_dict(), "warnings": validation.warnings})


def check_learning_rates(problem: Problem, operator: str = "hessian", predictions: LearningRateResult | None = None,
                         recipe: TrainingRecipe | None = None, *,
                         optimizers: Sequence[str] = ("sgd", "momentum", "adam"),
                         batch_sizes: Sequence[int] | None = None, criteria: Sequence[str] = CRITERIA,
                         optimizer_state: Mapping[str, Any] | None = None, scan: Mapping[str, Any] | None = None,
                         seed: int = 0, settings: ProductSettings | None = None, progress: Any = None,
                         pieces: Pieces = COMPUTE_NOW) -> ValidationReport:
    """Measure the thresholds of ``predictions`` by training (validate_learning_rates), computing the
    predictions first when none are given: ``learning_rates(problem, operator, **scan)`` with the
    hyperparameters and Adam moments of ``optimizer_state`` (a torch optimizer.state_dict(), as
    learning_rates reads it). Adam's runs start from the state the prediction assumed, the saved
    moments coming from ``optimizer_state``."""
    n = problem.n_samples
    if batch_sizes and max(batch_sizes) > n:  # before any scan or run
        raise UsageError(f"{setting('batch_sizes')}: {max(batch_sizes)} is larger than the sample ({n} examples)")
    saved = None  # Adam's saved moments, read once for the scan (if it runs here) and the runs
    if optimizer_state is not None:
        saved = saved_adam_state(optimizer_state_of(optimizer_state, problem), problem)
    if predictions is None:
        predictions = learning_rates(problem, operator, **dict(scan or {}), optimizer_state=optimizer_state,
                                     saved_state=saved, seed=seed, settings=settings, progress=progress,
                                     pieces=pieces)
    if not batch_sizes and not predictions.default_validation_sizes():
        raise UsageError(f"no batch size below the sample ({n} examples) to train at: pass {setting('batch_sizes')}")
    validation = validate_learning_rates(problem, predictions, recipe, optimizers=optimizers, batch_sizes=batch_sizes,
                                         criteria=criteria, saved_state=saved, seed=seed, progress=progress,
                                         pieces=pieces)
    return ValidationReport(dataclasses.replace(predictions, validation=validation))
