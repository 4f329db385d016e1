"""A transformer block's output copied mid-decode through llama.cpp's eval callback (graph tensor "l_out-N")."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp as llama
import numpy as np
from llama_cpp._ctypes_extensions import load_shared_library


def _ggml_accessors() -> ctypes.CDLL:
    """ggml's tensor accessors from the library llama-cpp-python built (our own handle and signatures)."""
    lib = load_shared_library("ggml-base", Path(llama.__file__).parent / "lib")
    for name, restype, argtypes in (
        ("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_nrows", ctypes.c_int64, [ctypes.c_void_p]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class LayerTap:
    """Copies one transformer block's output while armed; installed as the context's eval callback.

    llama.cpp asks it about every graph node. Disarmed it answers no at once, so llama.cpp runs the
    graph in one piece at almost no cost. Armed, llama.cpp stops after the asked node and hands over
    its data: one row of n_embd floats per token of the batch (only the last block is cut down to the
    output rows, so any earlier block holds every token).
    """

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.ggml = _ggml_accessors()
        self.rows: list[np.ndarray] = []
        self.callback = llama.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the tap

    def arm(self, layer: int) -> None:
        self.name, self.rows = f"l_out-{layer}".encode(), []

    def disarm(self) -> None:
        self.name = None

    def _on_node(self, tensor: int, ask: bool, _user_data: int) -> bool:
        if self.name is None or self.ggml.ggml_get_name(tensor) != self.name:
            return False
        if ask:
            return True
        n_rows, size = self.ggml.ggml_nrows(tensor), self.ggml.ggml_nbytes(tensor)
        data = np.empty(size // 4, dtype=np.float32)  # l_out is float32
        self.ggml.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, size)
        self.rows.append(data.reshape(n_rows, -1))
        return True
