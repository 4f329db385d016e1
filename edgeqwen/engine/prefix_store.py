"""Kept role prefixes on disk: a prefix's KV state saved by one process and loaded by the next.

A file is named after a key (llama.cpp version, model file identity, KV type, the prefix's tokens)
and ends in the hash of its own bytes, so a damaged or half-written file never matches and a file
from another model or build is never loaded. A store that cannot be written is skipped quietly.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import llama_cpp as llama
import numpy as np

from ..hashing import sha256_file

FILES_KEPT = 32  # the most recently used prefix files survive pruning


class PrefixStore:
    """Saves and loads the KV state of one sequence of a llama.cpp context."""

    def __init__(self, directory: Path, identity: Sequence[object]) -> None:
        self.directory = Path(directory)
        self._identity = repr([llama.__version__, *identity]).encode()

    def key(self, prefix: tuple[int, ...]) -> str:
        return hashlib.sha256(self._identity + np.asarray(prefix, dtype="<i4").tobytes()).hexdigest()[:32]

    def save(self, ctx: llama.llama_context_p, prefix: tuple[int, ...], seq: int) -> None:
        """Write sequence `seq`'s state (llama.cpp streams it layer by layer: no copy in memory)."""
        key = self.key(prefix)
        tokens = (llama.llama_token * len(prefix))(*prefix)
        temporary = self.directory / f".{key}.tmp{os.getpid()}"
        try:
            if any(self.directory.glob(f"{key}-*.kv")):
                return
            self.directory.mkdir(parents=True, exist_ok=True)
            if llama.llama_state_seq_save_file(ctx, str(temporary).encode(), seq, tokens, len(prefix)) == 0:
                raise OSError("llama.cpp could not write the state")
            os.replace(temporary, self.directory / f"{key}-{_file_digest(temporary)}.kv")
            self._prune()
        except OSError:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)

    def load(self, ctx: llama.llama_context_p, prefix: tuple[int, ...], seq: int) -> bool:
        """Load a saved prefix into the cleared sequence `seq`; False when there is none or it does not
        check out (the caller clears `seq` again then)."""
        key = self.key(prefix)
        try:
            # Only a file whose bytes match the hash in its name reaches llama.cpp.
            path = next(f for f in self.directory.glob(f"{key}-*.kv") if f.stem.split("-", 1)[1] == _file_digest(f))
        except (OSError, StopIteration):
            return False
        tokens = (llama.llama_token * len(prefix))()
        count = ctypes.c_size_t(0)
        loaded = llama.llama_state_seq_load_file(ctx, str(path).encode(), seq, tokens, len(prefix), ctypes.byref(count))
        if loaded == 0 or tuple(tokens[: count.value]) != prefix:
            return False
        with suppress(OSError):
            os.utime(path)  # recently used files survive pruning
        return True

    def has(self, prefix: tuple[int, ...]) -> bool:
        """Whether a file for `prefix` exists (not yet checked)."""
        try:
            return any(self.directory.glob(f"{self.key(prefix)}-*.kv"))
        except OSError:
            return False

    def _prune(self) -> None:
        files = sorted(self.directory.glob("*.kv"), key=lambda f: f.stat().st_mtime, reverse=True)
        for stale in files[FILES_KEPT:]:
            stale.unlink(missing_ok=True)


def _file_digest(path: Path) -> str:
    return sha256_file(path)[:16]  # enough to tell a damaged file from the one written
