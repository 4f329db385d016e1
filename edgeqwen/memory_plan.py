"""The memory plan: which KV-cache type and context size a model gets on this board by default.

Peak memory is estimated from the GGUF's metadata alone:

    model file + KV bytes per token × n_ctx + a fixed overhead

and the plan is the first of PLANS (best first) whose estimate fits the budget: HEADROOM of the
memory available now, and at most SHARE_OF_TOTAL of the board's RAM, because the model file is
memory-mapped and the OS, the page cache and the user's own program need the rest. A setting the
user gives (--ctx, --kv-cache) is kept; the plan only fills in the others. How the estimate
compares with measured peaks: docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import settings
from .board import Memory, read_memory
from .errors import InputError
from .gguf_info import GGUFInfo

MiB = 1 << 20
# Python, numpy, llama.cpp's vocabulary, compute buffers and logits, beyond the model file and the
# KV cache: measured peak RSS less those two, with room to spare (docs/hardening.md).
OVERHEAD_BYTES = 110 * MiB
HEADROOM = 0.8
SHARE_OF_TOTAL = 0.5
# Best first: a shorter context before a smaller cache type would cut chat history for little memory.
PLANS = ((settings.KV_CACHE, settings.N_CTX), ("q8_0", settings.N_CTX), ("q8_0", 1024), ("q8_0", 512), ("q8_0", 256))
CTX_CHOICES = (2048, 1024, 512, 256)
NEGLIGIBLE = 0.05  # of the smallest estimate: memory not worth a shorter context when nothing fits
BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 values and one f16 scale per block


@dataclass(frozen=True)
class MemoryPlan:
    kv_type: str
    n_ctx: int
    estimate_bytes: int
    budget_bytes: int | None  # None: the board's memory is unknown
    chosen_by: str  # "you" (both given), or this board's memory (and whether anything fit)

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.estimate_bytes <= self.budget_bytes

    def describe(self) -> str:
        budget = "unknown memory" if self.budget_bytes is None else f"budget {self.budget_bytes / MiB:,.0f} MiB"
        return (f"--ctx {self.n_ctx} --kv-cache {self.kv_type}: about {self.estimate_bytes / MiB:,.0f} MiB "
                f"({budget}; chosen by {self.chosen_by})")


def kv_bytes_per_token(info: GGUFInfo, kv_type: str = "f16") -> int | None:
    """K and V for every layer: block_count × head_count_kv × head_dim × 2 (K, V) × bytes per value."""
    if not (info.block_count and info.head_count and info.embedding_length):
        return None
    head_count_kv = info.head_count_kv or info.head_count
    values = info.block_count * head_count_kv * (info.embedding_length // info.head_count) * 2
    return int(values * BYTES_PER_VALUE[kv_type])


def estimate_bytes(info: GGUFInfo, n_ctx: int, kv_type: str = "f16") -> int:
    """Peak memory of the engine with this model, context and KV-cache type (see the module docstring)."""
    return info.file_size + (kv_bytes_per_token(info, kv_type) or 0) * n_ctx + OVERHEAD_BYTES


def budget_bytes(memory: Memory) -> int | None:
    """What a plan may use on a board with this memory (None when the board does not say)."""
    limits = [int(memory.usable * HEADROOM)] if memory.usable else []
    limits += [int(memory.total * SHARE_OF_TOTAL)] if memory.total else []
    return min(limits) if limits else None


def board_memory() -> Memory:
    """This board's memory, or the size $EDGEQWEN_MEMORY says to plan for."""
    try:
        override = settings.memory_override()
    except ValueError as error:
        raise InputError(str(error)) from None
    return Memory(total=override, available=override, cgroup_limit=None) if override else read_memory()


def plan_memory(info: GGUFInfo, memory: Memory | None = None, *, n_ctx: int | None = None, kv_type: str | None = None) -> MemoryPlan:
    """The KV-cache type and context for `info`'s model on a board with `memory` (default: this one).
    A given n_ctx or kv_type is kept; the others are chosen from PLANS."""
    if kv_type is not None and kv_type not in BYTES_PER_VALUE:
        raise InputError(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(BYTES_PER_VALUE)}")
    budget = budget_bytes(memory or board_memory())
    if n_ctx is not None and kv_type is not None:
        return MemoryPlan(kv_type, n_ctx, estimate_bytes(info, n_ctx, kv_type), budget, "you")
    candidates = [
        (kv, ctx) for kv, ctx in _candidates(n_ctx, kv_type)
        if not (info.context_length and ctx > info.context_length and n_ctx is None)
    ] or [(kv_type or settings.KV_CACHE, info.context_length or CTX_CHOICES[-1])]
    estimates = [(kv, ctx, estimate_bytes(info, ctx, kv)) for kv, ctx in candidates]
    for kv, ctx, estimate in estimates:
        if budget is None or estimate <= budget:
            return MemoryPlan(kv, ctx, estimate, budget, "this board's memory")
    # Nothing fits: the best plan that costs little more than the smallest (when the model file is
    # most of the estimate, a short context would lose chat history and save almost nothing).
    smallest = min(estimate for _, _, estimate in estimates)
    kv, ctx, estimate = next(e for e in estimates if e[2] <= smallest * (1 + NEGLIGIBLE))
    return MemoryPlan(kv, ctx, estimate, budget, "this board's memory, though nothing fits")


def _candidates(n_ctx: int | None, kv_type: str | None) -> list[tuple[str, int]]:
    if n_ctx is not None:
        return [(kv, n_ctx) for kv in settings.KV_CACHE_TYPES]
    if kv_type is not None:
        return [(kv_type, ctx) for ctx in CTX_CHOICES]
    return list(PLANS)
