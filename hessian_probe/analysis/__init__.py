"""Analyses built from kernels: the spectrum of one operator, batch-size scans, learning rates per
batch size (thresholds under batch noise, a recommended rate, calibration) and their validation by
training."""

from .eigenvalues import EigenvalueReport, TraceReport, eigenvalues
from .lr import Hyperparameters, LearningRateResult, calibrate, learning_rates
from .lr_check import ValidationReport, check_learning_rates
from .spectrum import SpectrumResult, spectrum
from .validate import MeasuredThreshold, TrainingRecipe, ValidationResult, validate_learning_rates

__all__ = ["EigenvalueReport", "Hyperparameters", "LearningRateResult", "MeasuredThreshold", "SpectrumResult",
           "TraceReport", "TrainingRecipe", "ValidationReport", "ValidationResult", "calibrate",
           "check_learning_rates", "eigenvalues", "learning_rates", "spectrum", "validate_learning_rates"]
