"""Precisions the curvature products and Krylov methods support (half precision is too coarse)."""

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)
