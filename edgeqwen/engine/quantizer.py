"""llama.cpp's quantizer (llama_model_quantize), for the converter: one GGUF file to another type."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import llama_cpp

from .bindings import set_verbose


def quantize_file(source: Path, dest: Path, ftype: str, *, threads: int | None = None,
                  verbose: bool = False) -> tuple[int, list[str]]:
    """Quantize `source` into `dest` as llama.cpp's `ftype` (e.g. "LLAMA_FTYPE_MOSTLY_Q4_K_M").

    Returns llama.cpp's status (0: done) and what it wrote to stderr (kept quiet unless `verbose`).
    """
    set_verbose(verbose)  # llama.cpp logs one line per tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = int(threads or 0)  # <= 0: all hardware threads
    with _captured_stderr(enabled=not verbose) as captured:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
    return status, captured


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
