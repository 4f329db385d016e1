"""The private parts of llama-cpp-python edgeqwen relies on, in one place: its model, context, batch and
sampler wrappers (`_internals`), its log switch (`_logger`) and its shared-library loader
(`_ctypes_extensions`). They are not a stable API, so an upgrade of the pinned version is checked here.

The public low-level bindings (`import llama_cpp`: llama_decode, llama_memory_*, ...) are used
directly by the engine's modules; nothing outside edgeqwen/engine/ imports llama_cpp at all.
"""

from __future__ import annotations

from llama_cpp._ctypes_extensions import load_shared_library
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel, LlamaSampler
from llama_cpp._logger import set_verbose

__all__ = ["LlamaBatch", "LlamaContext", "LlamaModel", "LlamaSampler", "load_shared_library", "set_verbose"]
