"""`edgeqwen doctor`: what this board has, what the llama.cpp build can use, and settings that fit.

It reads the board (board.py: RAM, cores, CPU flags), asks llama.cpp what it was compiled with, and
estimates the memory a model needs from its GGUF metadata alone (gguf-py; no weights are loaded):

    model file + KV cache (f16 K and V for every layer, per token of context) + a fixed overhead

The engine allocates n_ctx KV cells (the roles' kept prompt prefixes share them with the prompt),
so the KV term uses that many tokens.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from . import settings
from .board import Cores, Memory, cpu_features, read_cores, read_memory
from .engine.plain import llama_cpp_build
from .errors import EdgeQwenError
from .gguf_info import GGUFInfo, inspect_gguf
from .model_paths import resolve_model

MiB = 1 << 20
# Python, numpy, llama.cpp's vocabulary, compute buffers and logits, beyond the model file and the KV
# cache: measured peak RSS less those two, with room to spare (docs/hardening.md).
OVERHEAD_BYTES = 110 * MiB
HEADROOM = 0.8  # recommend a context whose estimate stays within this share of the available RAM
CTX_CHOICES = (2048, 1024, 512, 256)  # the default (2048) at most: longer prompts are slow on these boards


@dataclass
class ModelEstimate:
    path: str
    architecture: str
    file_type: str | None
    file_bytes: int
    kv_bytes_per_token: int | None
    context_length: int | None
    estimate_bytes: dict[int, int]  # n_ctx -> estimated peak memory


@dataclass
class Report:
    machine: str
    memory: Memory
    cores: Cores
    cpu_features: dict[str, bool]
    llama_cpp_features: str
    model: ModelEstimate | None
    model_error: str | None
    recommended_ctx: int | None
    recommended_threads: int
    warnings: list[str]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["memory"]["usable"] = self.memory.usable
        return data


# --------------------------------------------------------------------------- the model


def kv_bytes_per_token(info: GGUFInfo) -> int | None:
    """f16 K and V for every layer: block_count × head_count_kv × head_dim × 2 (K, V) × 2 bytes."""
    if not (info.block_count and info.head_count and info.embedding_length):
        return None
    head_count_kv = info.head_count_kv or info.head_count
    return info.block_count * head_count_kv * (info.embedding_length // info.head_count) * 2 * 2


def estimate_bytes(info: GGUFInfo, n_ctx: int) -> int:
    """Peak memory of the engine with this model and context (see the module docstring)."""
    per_token = kv_bytes_per_token(info) or 0
    return info.file_size + per_token * n_ctx + OVERHEAD_BYTES


def recommend_ctx(info: GGUFInfo, usable: int | None) -> int | None:
    """The largest usual context that fits in HEADROOM of the usable RAM (None: not even the smallest)."""
    for n_ctx in CTX_CHOICES:
        if info.context_length and n_ctx > info.context_length:
            continue
        if usable is None or estimate_bytes(info, n_ctx) <= usable * HEADROOM:
            return n_ctx
    return None


def diagnose(model: str | os.PathLike | None = None, *, ram_bytes: int | None = None, n_ctx: int | None = None) -> Report:
    """Everything `edgeqwen doctor` prints. ram_bytes: plan for this much available RAM instead of this board's."""
    memory = read_memory()
    if ram_bytes is not None:
        memory = Memory(total=ram_bytes, available=ram_bytes, cgroup_limit=None)
    cores = read_cores()
    warnings: list[str] = []
    estimate = None
    model_error = None
    recommended = None
    try:
        info = inspect_gguf(resolve_model(model))
    except EdgeQwenError as error:
        model_error = str(error)
        warnings.append(f"no usable model: {error}")
    else:
        contexts = sorted({*CTX_CHOICES, settings.N_CTX, *([n_ctx] if n_ctx else [])})
        estimate = ModelEstimate(
            path=str(info.path), architecture=info.architecture, file_type=info.file_type, file_bytes=info.file_size,
            kv_bytes_per_token=kv_bytes_per_token(info), context_length=info.context_length,
            estimate_bytes={c: estimate_bytes(info, c) for c in contexts},
        )
        usable = memory.usable
        recommended = recommend_ctx(info, usable)
        chosen = n_ctx or settings.N_CTX
        need = estimate_bytes(info, chosen)
        if usable is not None and need > usable:
            warnings.append(
                f"the model will not fit: about {need / MiB:.0f} MiB needed at --ctx {chosen}, {usable / MiB:.0f} MiB available"
                + (f"; try --ctx {recommended}" if recommended else "; use a smaller model or free memory (swap makes it very slow)")
            )
        elif recommended is None:
            warnings.append(f"tight on memory: even --ctx {CTX_CHOICES[-1]} leaves less than {100 - HEADROOM * 100:.0f}% of RAM free")
        if not info.has_chat_template:
            warnings.append("the model has no chat template: edgeqwen needs an instruct/chat model")
    features = cpu_features()
    if features.get("avx2") is False and "avx2" in features:
        warnings.append("this x86 CPU lacks AVX2: expect slow inference")
    if "NEON (asimd)" in features and not features.get("dotprod (asimddp)"):
        warnings.append("no ARM dotprod: build llama.cpp for armv8-a (README, Raspberry Pi section), expect slower inference")
    return Report(
        machine=platform.machine(),
        memory=memory,
        cores=cores,
        cpu_features=features,
        llama_cpp_features=llama_cpp_build(),
        model=estimate,
        model_error=model_error,
        recommended_ctx=recommended,
        recommended_threads=cores.physical,
        warnings=warnings,
    )


def format_report(report: Report) -> list[str]:
    """The report as lines for people."""

    def mib(value: int | None) -> str:
        return "unknown" if value is None else f"{value / MiB:,.0f} MiB"

    m, c = report.memory, report.cores
    lines = [
        f"machine        {report.machine}",
        f"RAM            {mib(m.total)} total, {mib(m.available)} available"
        + (f", cgroup limit {mib(m.cgroup_limit)}" if m.cgroup_limit else ""),
        f"cores          {c.logical} logical, {c.usable} usable, {c.physical} physical"
        + (f" big cores (big.LITTLE, capacities {sorted(set(c.capacities))})" if c.big_little else ""),
        "CPU features   " + " ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in report.cpu_features.items()),
        f"llama.cpp      {report.llama_cpp_features}",
    ]
    if report.model is not None:
        e = report.model
        per_token = "unknown" if e.kv_bytes_per_token is None else f"{e.kv_bytes_per_token / 1024:.0f} KiB/token"
        lines += [
            f"model          {e.path} ({e.architecture}, {e.file_type}, {mib(e.file_bytes)})",
            f"KV cache       {per_token} (f16; about half with --kv-cache q8_0), n_ctx cells allocated",
            "estimate       " + ", ".join(f"--ctx {n}: {mib(b)}" for n, b in e.estimate_bytes.items()),
        ]
    if report.recommended_ctx or report.model is None:
        ctx = f"--ctx {report.recommended_ctx} " if report.recommended_ctx else ""
        lines.append(f"recommended    {ctx}--threads {report.recommended_threads}")
    else:
        lines.append(f"recommended    --threads {report.recommended_threads} (no --ctx fits the available RAM)")
    lines += [f"warning: {w}" for w in report.warnings]
    return lines
