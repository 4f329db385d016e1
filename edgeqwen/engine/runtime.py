"""One model loaded in llama.cpp with its context: what Engine and the chat streams (streams.py) share.

It holds llama.cpp's model, context and batch, the layer tap and the KV cells' bookkeeping, and the
decode primitives both build on: fill the batch, run it (kept prefixes make way when the cells are
full), read a row of logits, decode tokens after the working sequence, hold a kept prefix, build and
run a sampler, and turn a token into its bytes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp as llama
import numpy as np

from ..errors import EngineError, ModelFileError
from ..signals import held_signals
from .bindings import LlamaBatch, LlamaContext, LlamaModel, LlamaSampler, set_verbose
from .cells import N_SEQ_MAX, Cells
from .layer_tap import LayerTap
from .prefix_store import PrefixStore
from .sampling import SamplingParams, build_sampler

KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml type ids of the KV cache (settings.KV_CACHE_TYPES)
_DECODE_NO_SLOT = 1  # llama_decode's return code when the KV cache has no room for the batch
Entry = tuple[int, int, int, bool]  # a batch entry: token, position, sequence id, wants logits


class Runtime:
    """A GGUF model and one llama.cpp context of `n_ctx` cells, `n_batch` tokens per decode."""

    def __init__(self, path: str, *, n_ctx: int, n_batch: int, n_threads: int, kv_type: str, flash_attn: bool,
                 use_mmap: bool, repack: bool, prefix_budget: int, store: PrefixStore | None, verbose: bool) -> None:
        self.n_ctx, self.n_batch, self.verbose = n_ctx, n_batch, verbose
        with held_signals():  # llama.cpp logs through a Python callback during the load
            self.model = self._load_model(path, use_mmap, repack)
            self.tap = LayerTap()
            self.context = self._new_context(n_threads, kv_type, flash_attn)
        self.vocab = self.model.vocab
        self.batch = LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=verbose)
        self.cells = Cells(self.context.ctx, n_ctx, prefix_budget, store)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.n_embd = llama.llama_model_n_embd(self.model.model)
        self.n_layer = llama.llama_model_n_layer(self.model.model)

    def _load_model(self, path: str, use_mmap: bool, repack: bool) -> LlamaModel:
        set_verbose(self.verbose)  # llama.cpp's log goes nowhere unless asked for
        params = llama.llama_model_default_params()
        params.load_mode = llama.LLAMA_LOAD_MODE_MMAP if use_mmap else llama.LLAMA_LOAD_MODE_NONE
        params.use_extra_bufts = repack  # CPU weight repacking: faster matmuls, a second copy of the weights
        try:
            return LlamaModel(path_model=path, params=params, verbose=self.verbose)
        except ValueError:
            raise ModelFileError(f"{path}: llama.cpp could not load this model (run with --verbose to see why; "
                                 f"`edgeqwen info {path}` shows what it holds)") from None

    def _new_context(self, n_threads: int, kv_type: str, flash_attn: bool) -> LlamaContext:
        params = llama.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.n_seq_max = N_SEQ_MAX
        params.kv_unified = True  # one cell pool: sequences can share a prefix's cells
        params.no_perf = True
        params.type_k = params.type_v = KV_TYPES[kv_type]
        params.flash_attn_type = (llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        params.cb_eval = self.tap.callback
        try:
            return LlamaContext(model=self.model, params=params, verbose=self.verbose)
        except ValueError:
            raise EngineError(
                f"llama.cpp could not create a context of {self.n_ctx} tokens, most likely out of memory: "
                "try a smaller --ctx or --kv-cache q8_0 (`edgeqwen doctor` estimates what fits)"
            ) from None

    # -- tokens ---------------------------------------------------------------------------------

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token (part of a UTF-8 character, maybe)."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama.llama_token_to_piece(self.vocab, token, buffer, size, 0, special)
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # the piece needs a bigger buffer

    # -- decoding -------------------------------------------------------------------------------

    def fill_batch(self, entries: Sequence[Entry]) -> None:
        """The batch of (token, position, sequence, wants logits) entries."""
        batch = self.batch.batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, wants_logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, wants_logits
            batch.seq_id[i][0] = seq

    def run_batch(self) -> None:
        """llama_decode on the filled batch; kept prefixes make way if the cells are full."""
        # The layer tap is Python that llama.cpp calls mid-decode: a Ctrl-C raised in it would be lost.
        with held_signals():
            while (code := llama.llama_decode(self.context.ctx, self.batch.batch)) == _DECODE_NO_SLOT and (
                    self.cells.forget_oldest()):
                pass
        if code != 0:
            raise EngineError(f"llama.cpp could not evaluate the prompt (llama_decode returned {code})")

    def logits_row(self, index: int) -> np.ndarray:
        """Logits of the last batch's entry `index` (one that asked for them; -1: the last such), a
        view into llama.cpp's buffer."""
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(self.context.ctx, index), shape=(self.n_vocab,))

    def decode(self, tokens: list[int], keep_prefix: int = 0) -> None:
        """Evaluate `tokens` after the working sequence, keeping its first `keep_prefix` tokens once reached."""
        cells = self.cells
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self.batch.set_batch(chunk, n_past=len(cells.working), logits_all=False)
            self.run_batch()
            cells.working += chunk
            if keep_prefix and len(cells.working) >= keep_prefix:
                cells.keep(keep_prefix)
                keep_prefix = 0

    def hold(self, prefix: list[int]) -> int:
        """Make the working sequence hold exactly `prefix`, kept; returns how many tokens that evaluated."""
        cells = self.cells
        reuse = cells.reuse(prefix, len(prefix)) if prefix else 0
        cells.truncate(reuse)
        if reuse < len(prefix):
            cells.make_room(len(prefix))
            self.decode(prefix[reuse:], len(prefix))
        return len(prefix) - reuse

    # -- sampling -------------------------------------------------------------------------------

    def sampler(self, sampling: SamplingParams, context: Sequence[int] = ()) -> LlamaSampler:
        """llama.cpp's sampler chain for `sampling` on this model (sampling.build_sampler; a grammar is
        the token picker's, engine/picker.py)."""
        return build_sampler(self.model, sampling, context=context, window=self.n_ctx)

    def sample(self, sampler: LlamaSampler, row: int = -1) -> int:
        """The token `sampler` picks from the last batch's row of logits (and feeds to its own state)."""
        return sampler.sample(self.context, row)
