"""Curvature inside the user's own training loop: a sharpness monitor (lambda_max every few steps,
warm-started, logged to CSV, TensorBoard or Weights & Biases) and the seed authors' curvature
learner (learning rate and momentum set from Ritz values as training runs)."""

from .learner import CurvatureLearner
from .monitor import SharpnessMonitor, SharpnessRow

__all__ = ["CurvatureLearner", "SharpnessMonitor", "SharpnessRow"]
