"""Quantize a GGUF file through llama-cpp-python's llama_model_quantize (no external binary)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeqwen.errors import ConvertError
from edgeqwen.models import inspect_gguf

# The types `edgeqwen quantize` offers -> llama_ftype values (llama.h; checked against llama_cpp below).
QUANT_TYPES: dict[str, str] = {
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
}
DEFAULT_QUANT = "Q4_K_M"


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
    import llama_cpp
    from llama_cpp import _logger

    _logger.set_verbose(verbose)  # llama.cpp logs one line per tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[qtype])
    params.nthread = int(threads or 0)  # <= 0: all hardware threads
    started = time.perf_counter()
    try:
        with _captured_stderr(enabled=not verbose) as captured:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
        if status != 0 or not dest.is_file():
            last = next((ln.strip() for ln in reversed(captured) if ln.strip()), "no message")
            raise ConvertError(f"llama.cpp could not quantize {source} to {qtype} (status {status}: {last[:160]})")
        with open(dest, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return time.perf_counter() - started


@contextmanager
def _captured_stderr(enabled: bool) -> Iterator[list[str]]:
    """Collect what native code writes to fd 2 (llama.cpp's per-tensor fallback warnings) into a list."""
    lines: list[str] = []
    if not enabled:
        yield lines
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())
