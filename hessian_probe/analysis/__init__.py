"""Analyses built from kernels: the spectrum of one operator, batch-size scans, learning-rate thresholds."""

from .spectrum import SpectrumResult, spectrum

__all__ = ["SpectrumResult", "spectrum"]
