"""File hashes: sha256 read in blocks, and a stamp beside a file that saves hashing it again."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks so large models do not fill memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    stamp = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        stamp_path(path).write_text(json.dumps(stamp) + "\n")
    except OSError:
        pass  # the stamp only saves a rehash next time; a read-only dir is fine


def stamp_matches(path: Path, digest: str, st: os.stat_result) -> bool:
    try:
        stamp = json.loads(stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    expected = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stamp == expected
