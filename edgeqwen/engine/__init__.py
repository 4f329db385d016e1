"""The engine: the only package that talks to llama.cpp (engine.py drives it; the other files serve it)."""

from .cells import common_prefix_length
from .engine import Engine, Evaluated, Generation, SamplingParams

__all__ = ["Engine", "Evaluated", "Generation", "SamplingParams", "common_prefix_length"]
