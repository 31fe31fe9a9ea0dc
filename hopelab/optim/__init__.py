"""Optimizers beyond torch's: M3 (the Nested Learning paper's Algorithm 1)."""

from hopelab.optim.m3 import M3, newton_schulz

__all__ = ["M3", "newton_schulz"]
