"""The installed llama.cpp build: what it was compiled for, and whether this CPU can run it.

A library compiled for CPU features this CPU lacks (Raspberry Pi 5 flags, dotprod and fp16
arithmetic, on a Pi 4) imports, loads a model and creates a context, then dies with SIGILL at the
first evaluation (seen on an emulated Cortex-A72, docs/raspberry-pi.md). Its feature line is a
compile-time summary that runs no such code, so it is compared with the CPU's capabilities before
any model is loaded. `python -m edgeqwen.engine.llama_build` prints it: doctor reads it from that
child process, so doctor never loads llama.cpp itself and a build that crashes kills only the child.
"""

from __future__ import annotations

import llama_cpp

from ..board import build_features, build_mismatch
from ..errors import EngineError


def llama_cpp_build() -> str:
    """What the installed llama.cpp was compiled with (its own summary line)."""
    return llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()


def features() -> set[str]:
    """The build's compiled-in features by llama.cpp's names (NEON, DOTPROD, AVX2, REPACK, ...)."""
    return build_features(llama_cpp_build())


def check_cpu() -> None:
    """Raise a one-line EngineError naming the flags to rebuild with when this CPU cannot run the build."""
    mismatch = build_mismatch(llama_cpp_build())
    if mismatch:
        raise EngineError(mismatch)


if __name__ == "__main__":
    print(llama_cpp_build())
