"""File hashes: sha256 read in blocks, and a stamp beside a file that saves hashing it again."""

from __future__ import annotations

import hashlib
import json
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


def recorded_sha256(path: Path) -> str | None:
    """The sha256 a stamp beside `path` records, if the file is unchanged since (no hashing)."""
    try:
        stamp = json.loads(stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or (stamp.get("size"), stamp.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return None
    return stamp.get("sha256") if isinstance(stamp.get("sha256"), str) else None


def stamped_sha256(path: Path) -> str:
    """sha256 of a file: the one its stamp records while the file is unchanged, else computed and stamped."""
    digest = recorded_sha256(path)
    if digest is None:
        digest = sha256_file(path)
        write_stamp(path, digest)
    return digest
