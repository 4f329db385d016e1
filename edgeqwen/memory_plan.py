"""The memory plan: the KV-cache type, context size and weight loading a model gets on this board by default.

Peak memory is estimated from the GGUF's metadata and the llama.cpp build's features alone:

    weights + KV bytes per token × n_ctx + a fixed overhead

where the weights are the mapped file and whatever llama.cpp copies into its own memory: matrices it
repacks for faster kernels, or every tensor when the file is not mapped (weight_memory.py). The plan
is the first of PLANS (best first) whose estimate fits the budget: HEADROOM of the memory available
now, and at most SHARE_OF_TOTAL of the board's RAM, because the OS, the page cache and the user's own
program need the rest. At each context it tries weight repacking (where settings.REPACK wants it and
the build repacks something) before going without, and loads unmapped when repacking copies the
weights anyway and that costs less. A setting the user gives (--ctx, --kv-cache, $EDGEQWEN_REPACK,
$EDGEQWEN_MMAP) is kept; the plan only fills in the others. How the estimate compares with measured
peaks: docs/benchmarks.md, docs/raspberry-pi.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import settings
from .board import Memory, read_memory
from .errors import InputError
from .gguf_info import GGUFInfo
from .weight_memory import WeightMemory, weight_memory

MiB = 1 << 20
# Python, numpy, llama.cpp's vocabulary, compute buffers and logits, beyond the weights and the KV cache:
# measured peak RSS less those two, on x86 and an emulated Cortex-A76 (docs/raspberry-pi.md).
OVERHEAD_BYTES = 140 * MiB
# Python, numpy and llama.cpp's vocabulary while the weights load (before the KV cache and compute
# buffers exist): what sits beside the read buffer of a repacked matrix at the loading peak.
LOADING_OVERHEAD_BYTES = 60 * MiB
HEADROOM = 0.8
SHARE_OF_TOTAL = 0.5
# Best first: a shorter context before a smaller cache type would cut chat history for little memory.
PLANS = ((settings.KV_CACHE, settings.N_CTX), ("q8_0", settings.N_CTX), ("q8_0", 1024), ("q8_0", 512), ("q8_0", 256))
CTX_CHOICES = (2048, 1024, 512, 256)
NEGLIGIBLE = 0.05  # of the smallest estimate: memory not worth a shorter context when nothing fits
BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}  # q8_0: 32 int8 values and one f16 scale per block


@dataclass(frozen=True)
class Loading:
    """How the weights are loaded: repacked by llama.cpp or not, the file memory-mapped or read."""

    repack: bool
    mmap: bool

    def describe(self) -> str:
        return f"repacking {'on' if self.repack else 'off'}, file {'mapped' if self.mmap else 'read, not mapped'}"


@dataclass(frozen=True)
class MemoryPlan:
    kv_type: str
    n_ctx: int
    estimate_bytes: int
    budget_bytes: int | None  # None: the board's memory is unknown
    chosen_by: str  # "you" (both given), or this board's memory (and whether anything fit)
    loading: Loading = Loading(repack=False, mmap=True)
    gave_up: str | None = None  # what the plan left out to fit, said plainly

    @property
    def fits(self) -> bool:
        return self.budget_bytes is None or self.estimate_bytes <= self.budget_bytes

    def describe(self) -> str:
        budget = "unknown memory" if self.budget_bytes is None else f"budget {self.budget_bytes / MiB:,.0f} MiB"
        gave_up = f"; left out {self.gave_up}" if self.gave_up else ""
        return (f"--ctx {self.n_ctx} --kv-cache {self.kv_type}, {self.loading.describe()}: about "
                f"{self.estimate_bytes / MiB:,.0f} MiB ({budget}; chosen by {self.chosen_by}{gave_up})")


def kv_bytes_per_token(info: GGUFInfo, kv_type: str = "f16") -> int | None:
    """K and V for every layer: block_count × head_count_kv × head_dim × 2 (K, V) × bytes per value."""
    if not (info.block_count and info.head_count and info.embedding_length):
        return None
    head_count_kv = info.head_count_kv or info.head_count
    values = info.block_count * head_count_kv * (info.embedding_length // info.head_count) * 2
    return int(values * BYTES_PER_VALUE[kv_type])


def estimate_bytes(info: GGUFInfo, n_ctx: int, kv_type: str = "f16", weights: WeightMemory | None = None) -> int:
    """Peak memory of the engine with this model, context, KV-cache type and weight placement (default:
    the file mapped, nothing repacked; see the module docstring). A read buffer while loading counts
    when it is larger than what the KV cache and the compute buffers take later."""
    weights = weights or weight_memory(info, set(), repack=False, mmap=True)
    running = (kv_bytes_per_token(info, kv_type) or 0) * n_ctx + OVERHEAD_BYTES
    return weights.resident + max(running, weights.loading_peak + LOADING_OVERHEAD_BYTES)


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


def plan_memory(info: GGUFInfo, memory: Memory | None = None, *, n_ctx: int | None = None, kv_type: str | None = None,
                build: set[str] | frozenset[str] = frozenset(), repack: bool | None = None,
                mmap: bool | None = None) -> MemoryPlan:
    """The KV-cache type, context and weight loading for `info`'s model on a board with `memory` (default:
    this one) and a llama.cpp build with these features (llama_print_system_info names; what it repacks).
    A given n_ctx, kv_type, repack or mmap is kept, as are $EDGEQWEN_REPACK and $EDGEQWEN_MMAP; the others
    are chosen."""
    if kv_type is not None and kv_type not in BYTES_PER_VALUE:
        raise InputError(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(BYTES_PER_VALUE)}")
    budget = budget_bytes(memory or board_memory())
    loadings = _loadings(info, set(build), repack, mmap)
    if n_ctx is not None and kv_type is not None:
        candidates, chosen_by = [(kv_type, n_ctx)], "you"
    else:
        candidates = [
            (kv, ctx) for kv, ctx in _candidates(n_ctx, kv_type)
            if not (info.context_length and ctx > info.context_length and n_ctx is None)
        ] or [(kv_type or settings.KV_CACHE, info.context_length or CTX_CHOICES[-1])]
        chosen_by = "this board's memory"
    estimates = [(kv, ctx, loading, estimate_bytes(info, ctx, kv, weights))
                 for kv, ctx in candidates for loading, weights in loadings]
    for kv, ctx, loading, estimate in estimates:
        if budget is None or estimate <= budget:
            return MemoryPlan(kv, ctx, estimate, budget, chosen_by, loading, _gave_up(loading, loadings))
    # Nothing fits: the best plan that costs little more than the smallest (when the model file is
    # most of the estimate, a short context would lose chat history and save almost nothing).
    smallest = min(e[3] for e in estimates)
    kv, ctx, loading, estimate = next(e for e in estimates if e[3] <= smallest * (1 + NEGLIGIBLE))
    return MemoryPlan(kv, ctx, estimate, budget, chosen_by + ("" if chosen_by == "you" else ", though nothing fits"),
                      loading, _gave_up(loading, loadings))


def _loadings(info: GGUFInfo, build: set[str], repack: bool | None,
              mmap: bool | None) -> list[tuple[Loading, WeightMemory]]:
    """The weight loadings to try, best first, each with the cheaper of mapping or not unless one is given:
    repacking (when wanted and this build repacks some of the model's weights), then without."""
    try:
        repack = settings.repack_override() if repack is None else repack
        mmap = settings.mmap_override() if mmap is None else mmap
    except ValueError as error:
        raise InputError(str(error)) from None
    wanted = [repack] if repack is not None else [settings.REPACK, False] if settings.REPACK else [False]
    options = []
    for repacking in dict.fromkeys(wanted):
        by_mapping = {m: weight_memory(info, build, repack=repacking, mmap=m)
                      for m in ([mmap] if mmap is not None else [settings.MMAP, not settings.MMAP])}
        if repacking and repack is None and not any(w.repacked for w in by_mapping.values()):
            continue  # nothing of this model is repacked by this build: repacking changes nothing
        preferred, other = list(by_mapping) + [None] * (2 - len(by_mapping))
        saves = (other is not None
                 and _resident_peak(by_mapping[other]) < (1 - NEGLIGIBLE) * _resident_peak(by_mapping[preferred]))
        chosen = other if saves else preferred  # settings.MMAP, unless the other way saves more than a little
        options.append((Loading(repacking, chosen), by_mapping[chosen]))
    return options or [(Loading(False, settings.MMAP if mmap is None else mmap),
                        weight_memory(info, build, repack=False, mmap=settings.MMAP if mmap is None else mmap))]


def _resident_peak(weights: WeightMemory) -> int:
    return weights.resident + max(0, weights.loading_peak + LOADING_OVERHEAD_BYTES - OVERHEAD_BYTES)


def _gave_up(chosen: Loading, loadings: list[tuple[Loading, WeightMemory]]) -> str | None:
    """What the chosen loading leaves out of the best one tried: repacking, said with its cost."""
    (best, best_weights), chosen_weights = loadings[0], dict(loadings)[chosen]
    if best.repack and not chosen.repack:
        extra = _resident_peak(best_weights) - _resident_peak(chosen_weights)
        return f"weight repacking (llama.cpp's faster matmul kernels; needs about {extra / MiB:,.0f} MiB more)"
    return None


def _candidates(n_ctx: int | None, kv_type: str | None) -> list[tuple[str, int]]:
    if n_ctx is not None:
        return [(kv, n_ctx) for kv in settings.KV_CACHE_TYPES]
    if kv_type is not None:
        return [(kv_type, ctx) for ctx in CTX_CHOICES]
    return list(PLANS)
