"""The engine: the only package that talks to llama.cpp (engine.py drives it; the other files serve it)."""

from .engine import Engine, Generation, SamplingParams, common_prefix_length

__all__ = ["Engine", "Generation", "SamplingParams", "common_prefix_length"]
