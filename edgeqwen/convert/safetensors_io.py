"""Read (and, for tests and benchmarks, write) safetensors files with numpy alone, in bounded chunks.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
{dtype, shape, data_offsets: [begin, end]} (offsets relative to the end of the header), then the data.
Reading the bytes ourselves gives bf16 support (numpy has no bf16) and streaming: a tensor is read a
block of rows at a time with plain file reads (no memmap, so pages do not pile up in the RSS).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeqwen.errors import ConvertError

# safetensors dtype -> (numpy dtype of the raw little-endian storage, bytes per element)
DTYPES: dict[str, np.dtype] = {"BF16": np.dtype("<u2"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4")}
CHUNK_BYTES = 16 << 20  # rows are read in blocks of about this many bytes
MAX_HEADER = 100 << 20  # the reference implementation's own limit


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are: file, dtype, shape, absolute byte offset."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and validate one file's header; ConvertError (one line) if it is corrupt or unsupported."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(f"corrupt safetensors file (only {size} bytes): {path}")
            n = int.from_bytes(head, "little")
            if n <= 1 or n > MAX_HEADER or 8 + n > size:
                raise ConvertError(f"corrupt safetensors file (header length {n}, file has {size} bytes): {path}")
            raw = f.read(n)
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        detail = " ".join(str(e).split())[:120]
        raise ConvertError(f"corrupt safetensors file (header is not valid JSON: {detail}): {path}") from e
    base = 8 + n
    entries: dict[str, TensorEntry] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = spec["dtype"], tuple(int(d) for d in spec["shape"]), spec["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError) as e:
            raise ConvertError(f"corrupt safetensors file (bad entry for tensor {name!r}): {path}") from e
        if dtype not in DTYPES:
            raise ConvertError(
                f"tensor {name} has dtype {dtype}; edgeqwen converts BF16, F16 and F32 checkpoints: {path}"
            )
        expected = math.prod(shape) * DTYPES[dtype].itemsize
        if end - begin != expected or begin < 0 or any(d < 0 for d in shape):
            raise ConvertError(
                f"corrupt safetensors file (tensor {name} has {end - begin} bytes, its shape {list(shape)} needs "
                f"{expected}): {path}"
            )
        if base + end > size:
            raise ConvertError(
                f"safetensors file is truncated (tensor {name} ends at byte {base + end}, file has {size}): {path}"
            )
        entries[name] = TensorEntry(name, path, dtype, shape, base + begin, expected)
    return entries


def open_checkpoint(directory: Path) -> dict[str, TensorEntry]:
    """Every tensor of a (possibly sharded) checkpoint: model.safetensors or the index's shards."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ConvertError(f"corrupt shard index (no weight_map): {index}") from e
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        has_bin = any(directory.glob("*.bin")) or any(directory.glob("*.pt"))
        hint = " (only PyTorch .bin weights: edgeqwen reads safetensors, which needs no torch)" if has_bin else ""
        raise ConvertError(f"no .safetensors weights in {directory}{hint}")
    entries: dict[str, TensorEntry] = {}
    for name in files:
        shard = directory / name
        if not shard.is_file():
            raise ConvertError(f"missing checkpoint shard {name} (listed in {index.name}): {directory}")
        for tensor, entry in read_header(shard).items():
            if tensor in entries:
                raise ConvertError(f"tensor {tensor} appears in two shards ({entries[tensor].file.name}, {name}): "
                                   f"{directory}")
            entries[tensor] = entry
    return entries


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw storage (as read by read_chunks) to float32; bf16 is the top half of a float32."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounding to nearest even; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def read_chunks(entry: TensorEntry, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's raw storage as consecutive blocks of whole rows (1-D tensors: one block)."""
    dtype = DTYPES[entry.dtype]
    row = math.prod(entry.shape[1:]) if len(entry.shape) > 1 else max(1, entry.n_elements)
    n_rows = entry.n_elements // row if row else 0
    rows_per_chunk = max(1, chunk_bytes // max(1, row * dtype.itemsize))
    with open(entry.file, "rb") as f:
        f.seek(entry.offset)
        done = 0
        while done < n_rows:
            take = min(rows_per_chunk, n_rows - done)
            data = np.fromfile(f, dtype=dtype, count=take * row)
            if data.size != take * row:
                raise ConvertError(f"safetensors file is truncated while reading {entry.name}: {entry.file}")
            yield data.reshape((take, *entry.shape[1:])) if len(entry.shape) > 1 else data
            done += take


def read_tensor(entry: TensorEntry) -> np.ndarray:
    """A whole tensor as float32 (small tensors and tests only; conversion streams)."""
    parts = [to_float32(chunk, entry.dtype) for chunk in read_chunks(entry)]
    return np.concatenate(parts).reshape(entry.shape) if parts else np.zeros(entry.shape, np.float32)


TensorSource = np.ndarray | Callable[[], np.ndarray]


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], TensorSource]],
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file: name -> (dtype, shape, float array or a function returning one).

    Functions are called one at a time while writing, so a large checkpoint never sits in memory whole.
    """
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, _) in tensors.items():
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = Path(str(path) + ".part")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, (dtype, shape, source) in tensors.items():
            values = source() if callable(source) else source
            values = np.asarray(values)
            if tuple(values.shape) != tuple(shape):
                raise ValueError(f"{name}: shape {values.shape} != declared {shape}")
            _encode(values, dtype).tofile(f)
            del values
    os.replace(tmp, path)


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return values if values.dtype == np.uint16 else float32_to_bf16_bits(values.astype(np.float32, copy=False))
    return values.astype(DTYPES[dtype], copy=False)

