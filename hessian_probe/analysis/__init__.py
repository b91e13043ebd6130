"""Analyses built from kernels: the spectrum of one operator (and, later, batch-size scans)."""

from .spectrum import SpectrumResult, spectrum

__all__ = ["SpectrumResult", "spectrum"]
