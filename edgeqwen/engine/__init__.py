"""The engine: the only package that talks to llama.cpp (engine.py drives it; the other files serve it)."""

from .cells import MAX_SLOTS, common_prefix_length
from .engine import Engine, Evaluated, Generation, SamplingParams
from .protocol import EngineLike, StreamsLike
from .reply import TokenLogprob
from .streams import Piece, Streams

__all__ = ["Engine", "EngineLike", "Evaluated", "Generation", "MAX_SLOTS", "Piece", "SamplingParams", "Streams",
           "StreamsLike", "TokenLogprob", "common_prefix_length"]
