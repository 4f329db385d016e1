"""The KV cache's bookkeeping: which tokens the working sequence holds, which role prefixes are kept as
sequences of their own (in memory and on disk), the sequences lent to prompts evaluated together, and
the cells chat slots hold.

All sequences share one pool of n_ctx cells (llama.cpp's unified KV cache): a sequence that starts
with a kept prefix points at that prefix's cells instead of evaluating it again, and kept prefixes
make way, oldest first, when a prompt needs their cells. A chat slot's cells (its prompt and its whole
token budget, reserved when it starts) never make way: a prompt that does not fit beside them is
refused with CacheBusyError, to be run once the slots are done.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import llama_cpp as llama
import numpy as np

from .. import settings
from ..errors import CacheBusyError
from .prefix_store import PrefixStore

WORKING_SEQ = 0
MAX_KEPT_PREFIXES = 4
MAX_PARALLEL = 16  # prompts evaluated together, each its own sequence
FIRST_PARALLEL_SEQ = MAX_KEPT_PREFIXES + 1
MAX_SLOTS = settings.MAX_CHAT_SLOTS  # chat streams decoded together, each its own sequence
FIRST_SLOT_SEQ = FIRST_PARALLEL_SEQ + MAX_PARALLEL
N_SEQ_MAX = FIRST_SLOT_SEQ + MAX_SLOTS
PREFIX_SHARE = 0.5  # kept prefixes hold at most this share of the cells by default


class Cells:
    """Sequences and their tokens in one llama.cpp context's KV cache."""

    def __init__(self, ctx: llama.llama_context_p, n_ctx: int, prefix_budget: int, store: PrefixStore | None) -> None:
        self._ctx = ctx
        self._memory = llama.llama_get_memory(ctx)
        self.n_ctx = n_ctx
        self.prefix_budget = prefix_budget
        self.store = store
        self.working: list[int] = []  # tokens held by the working sequence
        self.kept: OrderedDict[tuple[int, ...], int] = OrderedDict()  # prefix -> sequence id, oldest first
        self.slots: dict[int, tuple[tuple[int, ...], int]] = {}  # slot sequence -> (prefix it shares, cells of its own)

    def reuse(self, tokens: Sequence[int], keep_prefix: int) -> int:
        """Point the working sequence at the longest start of `tokens` already in the cache (its own
        tokens, a kept prefix, or a saved one for the first `keep_prefix`) and return its length."""
        reuse = common_prefix_length(self.working, tokens)
        kept = self._longest_kept_prefix(tokens)
        if keep_prefix > max(reuse, len(kept)) and self._load_prefix(tuple(tokens[:keep_prefix])):
            kept = tuple(tokens[:keep_prefix])
        if len(kept) > reuse:
            self._restore(kept)
            reuse = len(kept)
        return reuse

    def truncate(self, length: int) -> None:
        """Drop the working sequence's tokens after `length` (also cells an interrupted decode left)."""
        del self.working[length:]
        llama.llama_memory_seq_rm(self._memory, WORKING_SEQ, length, -1)

    def make_room(self, length: int) -> None:
        """Evict kept prefixes, oldest first, until `length` cells of the working prompt fit beside them
        and the slots' cells; CacheBusyError if the slots' cells leave too little room even then."""
        while self.kept and self._overflows(length):
            self.forget_oldest()
        if self.slots and self._overflows(length):
            raise CacheBusyError(f"{length} cells do not fit beside the {self.cells_in_slots()} that chat slots hold "
                                 f"(n_ctx {self.n_ctx})")

    def _overflows(self, length: int) -> bool:
        return length + self._cells_kept_apart() + self.cells_in_slots() > self.n_ctx

    def forget_oldest(self) -> bool:
        """Give up the oldest kept prefix's sequence (its cells go once no other sequence shares them)."""
        if not self.kept:
            return False
        llama.llama_memory_seq_rm(self._memory, self.kept.pop(next(iter(self.kept))), -1, -1)
        return True

    def keep(self, length: int) -> None:
        """Keep the working sequence's first `length` tokens as a prefix of their own, and save it."""
        prefix = tuple(self.working[:length])
        seq = self._free_sequence(prefix)
        if seq is None:
            return
        llama.llama_memory_seq_cp(self._memory, WORKING_SEQ, seq, 0, length)
        self.kept[prefix] = seq
        if self.store is not None:
            self.store.save(self._ctx, prefix, seq)

    # -- sequences lent to prompts evaluated together ---------------------------------------------

    def lend(self, count: int, shared: int, source: int = WORKING_SEQ) -> list[int]:
        """`count` cleared sequence ids, each starting with the first `shared` cells of `source` (the
        working sequence, or a kept prefix's sequence)."""
        seqs = list(range(FIRST_PARALLEL_SEQ, FIRST_PARALLEL_SEQ + count))
        for seq in seqs:
            llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
            if shared:
                llama.llama_memory_seq_cp(self._memory, source, seq, 0, shared)
        return seqs

    def kept_beside_working(self, prefix: Sequence[int], cells: int) -> int | None:
        """The sequence of a kept `prefix` (marked as just used) when `cells` more fit beside the working
        sequence without evicting anything; None otherwise. Prompts lent that prefix leave the working
        sequence, a conversation say, as it was. With no prefix there is nothing to copy, and the
        working sequence's id stands for "fits beside it"."""
        seq = self.kept.get(tuple(prefix)) if prefix else WORKING_SEQ
        if seq is None or self._overflows(len(self.working) + cells):
            return None
        if prefix:
            self.kept.move_to_end(tuple(prefix))
        return seq

    def give_back(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            llama.llama_memory_seq_rm(self._memory, seq, -1, -1)

    # -- chat slots -------------------------------------------------------------------------------

    def cells_in_slots(self) -> int:
        """Cells the slots hold: their own, and the prefixes they share that are no longer kept (a kept
        prefix's cells are counted with the kept ones)."""
        lost = {prefix for prefix, _ in self.slots.values() if prefix not in self.kept}
        return sum(own for _, own in self.slots.values()) + sum(map(len, lost))

    def open_slot(self, seq: int, prefix: Sequence[int], own: int) -> None:
        """Reserve `own` cells for slot `seq`, which starts with `prefix`: copied from its kept sequence
        (shared cells, no evaluation) if kept, else from the working sequence, which must hold it."""
        prefix = tuple(prefix)
        llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
        self.slots[seq] = (prefix, own)
        if prefix:
            source = self.kept[prefix] if prefix in self.kept else WORKING_SEQ
            llama.llama_memory_seq_cp(self._memory, source, seq, 0, len(prefix))

    def close_slot(self, seq: int) -> None:
        """Free a slot's cells at once."""
        self.slots.pop(seq, None)
        llama.llama_memory_seq_rm(self._memory, seq, -1, -1)

    # -- internals ------------------------------------------------------------------------------

    def _longest_kept_prefix(self, tokens: Sequence[int]) -> tuple[int, ...]:
        best: tuple[int, ...] = ()
        for prefix in self.kept:
            if len(best) < len(prefix) <= len(tokens) and tuple(tokens[: len(prefix)]) == prefix:
                best = prefix
        return best

    def _restore(self, prefix: tuple[int, ...]) -> None:
        """Point the working sequence at a kept prefix's cells: no evaluation, no copy."""
        self.working = []  # bookkeeping first: an interrupt here leaves a state truncate() repairs
        llama.llama_memory_seq_rm(self._memory, WORKING_SEQ, -1, -1)
        llama.llama_memory_seq_cp(self._memory, self.kept[prefix], WORKING_SEQ, -1, -1)
        self.kept.move_to_end(prefix)
        self.working = list(prefix)

    def _free_sequence(self, prefix: tuple[int, ...]) -> int | None:
        """A cleared sequence id for `prefix`, evicting older kept prefixes; None if it should not be kept."""
        if prefix in self.kept or len(prefix) > self.prefix_budget:
            return None
        while self.kept and (len(self.kept) >= MAX_KEPT_PREFIXES
                             or sum(map(len, self.kept)) + len(prefix) > self.prefix_budget):
            self.forget_oldest()
        seq = min(set(range(1, MAX_KEPT_PREFIXES + 1)) - set(self.kept.values()))
        llama.llama_memory_seq_rm(self._memory, seq, -1, -1)  # cells an interrupted keep() may have left
        return seq

    def _cells_kept_apart(self) -> int:
        # Cells of kept prefixes, less the longest one the working sequence starts with (those it shares).
        shared = max((len(p) for p in self.kept if tuple(self.working[: len(p)]) == p), default=0)
        return sum(map(len, self.kept)) - shared

    def _load_prefix(self, prefix: tuple[int, ...]) -> bool:
        """Load a saved prefix into a kept sequence; False when there is none or it does not check out."""
        if self.store is None or len(prefix) > self.prefix_budget or not self.store.has(prefix):
            return False
        seq = self._free_sequence(prefix)
        if seq is None:
            return False
        if not self.store.load(self._ctx, prefix, seq):
            llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
            return False
        self.kept[prefix] = seq
        return True


def common_prefix_length(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(cached), len(tokens))
    if n == 0:
        return 0
    differs = np.flatnonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))
    return int(differs[0]) if differs.size else n
