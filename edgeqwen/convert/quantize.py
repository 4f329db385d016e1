"""Quantize a GGUF file to one of the offered types, through llama.cpp's own quantizer (no external binary)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgeqwen import settings
from edgeqwen.engine.quantizer import quantize_file
from edgeqwen.errors import ConvertError
from edgeqwen.gguf_info import inspect_gguf

# The types `edgeqwen quantize` offers -> llama_ftype values (llama.h names; the engine's quantizer looks them
# up in llama_cpp).
QUANT_TYPES: dict[str, str] = {
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
}
DEFAULT_QUANT = settings.QUANT_TYPE


def normalize_type(qtype: str) -> str:
    key = qtype.strip().upper()
    if key not in QUANT_TYPES:
        raise ConvertError(f"unknown quantization type {qtype!r}; choose one of {', '.join(QUANT_TYPES)}")
    return key


def quantize_gguf(source: Path, dest: Path, qtype: str, *, threads: int | None = None, verbose: bool = False) -> float:
    """Write dest from source in qtype; returns seconds. dest is removed again if anything fails."""
    qtype = normalize_type(qtype)
    source, dest = Path(source), Path(dest)
    inspect_gguf(source)  # llama.cpp aborts the process on some bad files: check first
    started = time.perf_counter()
    try:
        status, messages = quantize_file(source, dest, QUANT_TYPES[qtype], threads=threads, verbose=verbose)
        if status != 0 or not dest.is_file():
            last = next((ln.strip() for ln in reversed(messages) if ln.strip()), "no message")
            raise ConvertError(f"llama.cpp could not quantize {source} to {qtype} (status {status}: {last[:160]})")
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return time.perf_counter() - started
