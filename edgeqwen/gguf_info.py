"""GGUF files checked and described without llama.cpp: header, metadata, tensor bounds, output layer.

Every check here runs before llama.cpp sees a file, because llama.cpp aborts the whole process on
some bad files. This module never imports llama_cpp; it reads through gguf-py's GGUFReader.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.constants import (
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFEndian,
    GGUFValueType,
    Keys,
    LlamaFileType,
    TokenType,
)
from gguf.quants import dequantize

from .errors import ModelFileError, ModelNotFoundError
from .model_paths import GET_MODEL_HINT
from .text import one_line

GGUF_MAGIC = b"GGUF"
GGUF_HEADER_SIZE = 24  # magic u32, version u32, tensor count u64, kv count u64
REBUILD_HINT = "delete it, then run `make model` for the stand-in or `make quantize` for Qwen1.5-0.5B-Chat"


@dataclass(frozen=True)
class Weight:
    """One tensor of the file: what the memory plan needs to know which llama.cpp repacks."""

    name: str
    type: str  # the ggml type's name: Q4_K, Q6_K, F32, ...
    shape: tuple[int, ...]  # ggml order: shape[0] is a row's length, shape[1] the number of rows
    n_bytes: int
    offset: int = 0  # where its data starts in the file


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
    weights: tuple[Weight, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary; the template text, the special token ids and the tensors are left out (long)."""
        d = asdict(self)
        for long_field in ("chat_template", "special_tokens", "weights"):
            del d[long_field]
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
        detail = one_line(f"{type(e).__name__}: {e}")
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
        weights=tuple(Weight(t.name, t.tensor_type.name, tuple(int(n) for n in t.shape), int(t.n_bytes),
                             int(t.data_offset))
                      for t in reader.tensors),
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
