"""The private parts of llama-cpp-python edgeqwen relies on, in one place: its model, context, batch and
sampler wrappers (`_internals`), its log switch (`_logger`), its shared-library loader
(`_ctypes_extensions`) and where its high-level Llama reads llama.cpp's model defaults from. They are
not a stable API, so an upgrade of the pinned version is checked here.

The public low-level bindings (`import llama_cpp`: llama_decode, llama_memory_*, ...) are used
directly by the engine's modules; nothing outside edgeqwen/engine/ imports llama_cpp at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import llama_cpp.llama_cpp as llama_cpp_module  # the module llama_cpp.Llama looks its defaults up in
from llama_cpp._ctypes_extensions import load_shared_library
from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel, LlamaSampler
from llama_cpp._logger import set_verbose

__all__ = ["LlamaBatch", "LlamaContext", "LlamaModel", "LlamaSampler", "llama_model_defaults", "load_shared_library",
           "set_verbose"]


@contextmanager
def llama_model_defaults(**fields: object) -> Iterator[None]:
    """Inside, llama_cpp.Llama() starts its model parameters from llama.cpp's defaults with `fields` set.

    Llama's constructor has no keyword for some of llama_model_params (use_extra_bufts in 0.3.36): it
    fills self.model_params from llama_model_default_params(), looked up in llama_cpp.llama_cpp when
    called, and loads the model right away. So that lookup is wrapped for the constructor's duration.
    Process-wide while inside: for one constructor call, not for threads loading models meanwhile.
    """
    original = llama_cpp_module.llama_model_default_params

    def defaults() -> llama_cpp_module.llama_model_params:
        params = original()
        for name, value in fields.items():
            if not hasattr(params, name):  # a renamed field would otherwise be set on the struct silently
                raise AttributeError(f"llama_model_params has no field {name!r}")
            setattr(params, name, value)
        return params

    llama_cpp_module.llama_model_default_params = defaults
    try:
        yield
    finally:
        llama_cpp_module.llama_model_default_params = original
