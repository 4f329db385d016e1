"""Where llama.cpp keeps a model's weights, and the memory that costs: the mapped file, repacked copies.

llama.cpp's CPU backend can repack weight matrices into interleaved layouts that its ARM (dotprod,
i8mm) and x86 (AVX2) kernels read faster (ggml-cpu/repack.cpp). A repacked matrix lives in
anonymous memory. With the file memory-mapped, llama.cpp reads all of it in and then unmaps only
what lies outside the span of the tensors it computes from in place, so a repacked matrix inside
that span is held twice (repacking every matrix of a mapped Qwen1.5 file holds nearly all of it
twice). Without mapping, each weight is read into anonymous memory once, and each repacked one
passes through a read buffer of its own size on the way: the largest of them is a peak while
loading. A model whose output layer is the token embedding (tied) holds that tensor twice when the
output copy is repacked (the plain one is kept for row lookups). Measurements: docs/raspberry-pi.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .gguf_info import GGUFInfo, Weight

# For each ggml type llama.cpp repacks: the build features (names from llama_print_system_info) that
# one of its layouts needs, and the multiple of rows that layout takes. A matrix is repacked when
# one of them fits (ggml_repack_get_optimal_repack_type, llama.cpp as vendored by llama-cpp-python 0.3.36).
REPACK_LAYOUTS: dict[str, tuple[tuple[tuple[str, ...], int], ...]] = {
    "Q4_0": ((("AVX2",), 8), (("NEON", "MATMUL_INT8"), 4), (("NEON", "DOTPROD"), 4)),
    "Q4_K": ((("AVX2",), 8), (("NEON", "MATMUL_INT8"), 8), (("NEON", "DOTPROD"), 8)),
    "Q5_K": ((("NEON", "MATMUL_INT8"), 8), (("NEON", "DOTPROD"), 8)),
    "Q6_K": ((("NEON", "MATMUL_INT8"), 8), (("NEON", "DOTPROD"), 8)),
    "Q8_0": ((("NEON", "MATMUL_INT8"), 4), (("NEON", "DOTPROD"), 4)),
    "Q2_K": ((("AVX512",), 8),),
    "IQ4_NL": ((("AVX2",), 8), (("NEON", "DOTPROD"), 4)),
    "MXFP4": ((("AVX2",), 8), (("NEON", "DOTPROD"), 4)),
}
EMBEDDING = "token_embd.weight"


@dataclass(frozen=True)
class WeightMemory:
    """The weights' share of a process's resident memory, in bytes."""

    mapped: int  # file pages resident through the mapping (clean: the kernel may drop and re-read them)
    anonymous: int  # weights copied into llama.cpp's own buffers (repacked, or read without mapping)
    repacked: int  # the part of `anonymous` that is repacked matrices
    loading_peak: int  # extra while loading: the read buffer of the largest repacked matrix (no mapping)

    @property
    def resident(self) -> int:
        """What the weights hold once loaded."""
        return self.mapped + self.anonymous


def repacks(weight: Weight, build: set[str]) -> bool:
    """Whether llama.cpp repacks this matrix on a build with these features."""
    if "REPACK" not in build or len(weight.shape) != 2:
        return False
    rows = weight.shape[1]
    return any(set(needs) <= build and rows % multiple == 0 for needs, multiple in REPACK_LAYOUTS.get(weight.type, ()))


def matrices(info: GGUFInfo) -> list[Weight]:
    """The weights llama.cpp multiplies by (the ones it may repack): every 2-D tensor but the embedding,
    which it reads rows of, and the embedding again as the output layer when the model ties them."""
    found = [w for w in info.weights if len(w.shape) == 2 and w.name != EMBEDDING]
    embedding = next((w for w in info.weights if w.name == EMBEDDING), None)
    if info.tied_embeddings and embedding is not None:
        found.append(embedding)
    return found


def weight_memory(info: GGUFInfo, build: set[str], *, repack: bool, mmap: bool) -> WeightMemory:
    """Where the weights of `info`'s model go on a build with these features, and what each place holds."""
    repacked = [w for w in matrices(info) if repack and repacks(w, build)]
    repacked_bytes = [w.n_bytes for w in repacked]
    if mmap:
        return WeightMemory(mapped=_mapped_span(info, {w.name for w in repacked}), anonymous=sum(repacked_bytes),
                            repacked=sum(repacked_bytes), loading_peak=0)
    tensors = sum(w.n_bytes for w in info.weights) or info.file_size  # the metadata before them is not kept
    embedding = next((w.n_bytes for w in info.weights if w.name == EMBEDDING), 0)
    # A tied embedding is held twice only when its output copy is repacked: rows are looked up in the plain one.
    tied_twice = info.tied_embeddings and any(w.name == EMBEDDING for w in repacked)
    anonymous = tensors + (embedding if tied_twice else 0)
    return WeightMemory(mapped=0, anonymous=anonymous, repacked=sum(repacked_bytes),
                        loading_peak=max(repacked_bytes, default=0))


def _mapped_span(info: GGUFInfo, repacked: set[str]) -> int:
    """The part of the file that stays resident through the mapping: llama.cpp unmaps what lies before the first
    and after the last tensor it computes from in place (the tied embedding's rows stay, repacked or not). An
    untied embedding is only looked up, a few rows per token, so its pages are not counted."""
    if not info.weights:
        return info.file_size
    in_place = [w for w in info.weights if w.name not in repacked or (w.name == EMBEDDING and info.tied_embeddings)]
    if not in_place:
        return 0
    span = max(w.offset + w.n_bytes for w in in_place) - min(w.offset for w in in_place)
    looked_up = sum(w.n_bytes for w in in_place if w.name == EMBEDDING and not info.tied_embeddings)
    return span - looked_up
