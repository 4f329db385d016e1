"""A transformer block's output copied mid-decode through llama.cpp's eval callback (graph tensor "l_out-N")."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from pathlib import Path

import llama_cpp as llama
import numpy as np

from .bindings import load_shared_library


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
    """Copies transformer blocks' outputs while armed; installed as the context's eval callback.

    llama.cpp asks it about every graph node. Disarmed it answers no at once, so llama.cpp runs the
    graph in one piece at almost no cost. Armed, llama.cpp pauses after each asked node and hands over
    its data: one row of n_embd floats per token of the batch (only the last block is cut down to the
    output rows, so any earlier block holds every token). Armed with `stop`, the answer after the
    highest asked block's data is no, and llama.cpp computes nothing after it: the blocks above it and
    the output layer are skipped.
    """

    def __init__(self) -> None:
        self.names: dict[bytes, int] = {}
        self.last: bytes | None = None
        self.stop = False
        self.ggml = _ggml_accessors()
        self.rows: dict[int, list[np.ndarray]] = {}
        self.callback = llama.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the tap

    def arm(self, layers: Iterable[int], stop: bool = False) -> None:
        layers = sorted(set(layers))
        self.names = {f"l_out-{layer}".encode(): layer for layer in layers}
        self.last = f"l_out-{layers[-1]}".encode()
        self.rows = {layer: [] for layer in layers}
        self.stop = stop

    def disarm(self) -> None:
        self.names, self.last, self.stop = {}, None, False

    def states(self, layer: int) -> np.ndarray:
        """The rows copied for `layer` since arm(), one per token, in batch order."""
        return np.concatenate(self.rows[layer])

    def _on_node(self, tensor: int, ask: bool, _user_data: int) -> bool:
        if not self.names:
            return False
        name = self.ggml.ggml_get_name(tensor)
        if name not in self.names:
            return False
        if ask:
            return True
        n_rows, size = self.ggml.ggml_nrows(tensor), self.ggml.ggml_nbytes(tensor)
        data = np.empty(size // 4, dtype=np.float32)  # l_out is float32
        self.ggml.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, size)
        self.rows[self.names[name]].append(data.reshape(n_rows, -1))
        return not (self.stop and name == self.last)  # no: llama.cpp ends the graph here
