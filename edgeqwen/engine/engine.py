"""The engine: the only module that talks to llama.cpp (load, tokenize, evaluate, logits, sample).

It knows nothing of roles, YAML, the CLI or HTTP. It drives llama.cpp's model, context and
samplers itself, because it keeps more than one prompt in the KV cache: sequence 0 is the working
prompt, and each fixed prompt prefix a caller marks (a role's system prompt and examples) is kept
as its own sequence. A later prompt that starts with a kept prefix shares those cache cells
instead of evaluating them again, across role switches too.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import _internals as internals  # model/context/batch/sampler wrappers of the pinned version
from llama_cpp._logger import set_verbose

from .. import settings
from ..board import physical_cores
from ..errors import ContextOverflowError, EngineError, GrammarError, ModelFileError
from ..gguf_info import GGUFInfo, inspect_gguf
from ..grammar import check_grammar, grammar_literals
from ..numeric import logsumexp
from ..signals import held_signals
from .layer_tap import LayerTap
from .prefix_store import PrefixStore
from .sampling import SamplingParams, build_sampler

WORKING_SEQ = 0
MAX_KEPT_PREFIXES = 4
KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml type ids of the KV cache (settings.KV_CACHE_TYPES)
# Kept prefixes live in the same n_ctx cells as the working prompt (a long prompt evicts them), and
# hold at most this share of them.
PREFIX_SHARE = 0.5
_DECODE_NO_SLOT = 1  # llama_decode's return code when the KV cache has no room for the batch
# Stand-ins for message contents while rendering a chat template, so user text can be tokenized
# apart from the template and never becomes a control token (private-use code points).
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Generation:
    """What one Engine.stream call produced: tokens, and why it stopped ("stop": end of turn,
    "length": the max_tokens or context budget ran out; None while it runs or if it was closed)."""

    prompt_tokens: int = 0
    tokens: int = 0
    finish_reason: str | None = None


class Engine:
    """One loaded GGUF model and one llama.cpp context.

    `n_ctx` is the longest prompt + reply the engine accepts, and the number of KV cells: kept
    prefixes use at most `prefix_budget` of them (default half) and are evicted, oldest first,
    when a prompt needs their room. With `prefix_cache_dir`, kept prefixes are also saved there
    and loaded instead of evaluated by later processes (a corrupt or foreign file is ignored).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = settings.N_CTX,
        n_threads: int | None = None,
        n_batch: int = settings.N_BATCH,
        prefix_budget: int | None = None,
        prefix_cache_dir: str | os.PathLike | None = None,
        use_mmap: bool = True,
        repack: bool = settings.REPACK,
        kv_type: str = settings.KV_CACHE,
        flash_attn: bool = settings.FLASH_ATTN,
        verbose: bool = False,
    ) -> None:
        self.info: GGUFInfo = inspect_gguf(Path(model_path))  # raises before llama.cpp sees a bad file
        if not self.info.has_chat_template:
            raise ModelFileError(f"{model_path}: the GGUF has no chat template (tokenizer.chat_template); use an instruct/chat model")
        if n_ctx < settings.MIN_N_CTX:
            raise ValueError(f"n_ctx must be at least {settings.MIN_N_CTX}")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or physical_cores()
        self.n_batch = min(n_batch, n_ctx)
        self.prefix_budget = int(n_ctx * PREFIX_SHARE) if prefix_budget is None else min(prefix_budget, n_ctx)
        self.kv_type = kv_type
        self.verbose = verbose
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}")
        with held_signals():  # llama.cpp logs through a Python callback during the load
            self._load(str(model_path), use_mmap, repack, kv_type, flash_attn)
        self._store = self._prefix_store(prefix_cache_dir)
        self.n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama.llama_model_n_embd(self._model.model)
        self.n_layer = llama.llama_model_n_layer(self._model.model)
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            self.info.chat_template or ""
        )
        self.end_of_turn = frozenset(t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self._vocab, t))
        self._eos_text = self._piece(llama.llama_vocab_eos(self._vocab), special=True).decode("utf-8", "replace")
        self._working: list[int] = []  # tokens held by the working sequence
        self._kept: OrderedDict[tuple[int, ...], int] = OrderedDict()  # prefix -> sequence id, oldest first
        self.tokens_evaluated = 0  # new tokens evaluated by the last call: what it cost
        self.last_generation = Generation()  # what the last stream() produced, and why it stopped

    def _load(self, path: str, use_mmap: bool, repack: bool, kv_type: str, flash_attn: bool) -> None:
        set_verbose(self.verbose)  # llama.cpp's log goes nowhere unless asked for
        model_params = llama.llama_model_default_params()
        model_params.load_mode = llama.LLAMA_LOAD_MODE_MMAP if use_mmap else llama.LLAMA_LOAD_MODE_NONE
        model_params.use_extra_bufts = repack  # CPU weight repacking: faster matmuls, a second copy of the weights
        try:
            self._model = internals.LlamaModel(path_model=path, params=model_params, verbose=self.verbose)
        except ValueError:
            raise ModelFileError(f"{path}: llama.cpp could not load this model (run with --verbose to see why; `edgeqwen info {path}` shows what it holds)") from None
        self._vocab = self._model.vocab
        context_params = llama.llama_context_default_params()
        context_params.n_ctx = self.n_ctx
        context_params.n_batch = context_params.n_ubatch = self.n_batch
        context_params.n_threads = context_params.n_threads_batch = self.n_threads
        context_params.n_seq_max = MAX_KEPT_PREFIXES + 1
        context_params.kv_unified = True  # one cell pool: sequences can share a prefix's cells
        context_params.no_perf = True
        context_params.type_k = context_params.type_v = KV_TYPES[kv_type]
        # A quantized V cache needs flash attention in llama.cpp.
        use_flash = flash_attn or kv_type != "f16"
        context_params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if use_flash else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._tap = LayerTap()
        context_params.cb_eval = self._tap.callback
        try:
            self._ctx = internals.LlamaContext(model=self._model, params=context_params, verbose=self.verbose)
        except ValueError:
            raise EngineError(
                f"llama.cpp could not create a context of {context_params.n_ctx} tokens, most likely out of memory: "
                "try a smaller --ctx or --kv-cache q8_0 (`edgeqwen doctor` estimates what fits)"
            ) from None
        self._flash = use_flash
        self._memory = llama.llama_get_memory(self._ctx.ctx)
        self._batch = internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=self.verbose)

    # -- text <-> tokens ------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of `text`; with special=False, markup like <|im_end|> stays plain text."""
        return self._model.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=special)

    def is_plain_text(self, text: str) -> bool:
        """True when `text` holds no control token of this model, even one llama.cpp matches in plain
        text (an added token such as Qwen2.5's <tool_call>)."""
        tokens = self.tokenize(text, special=True)
        return tokens == self.tokenize(text) and not self.info.special_tokens.intersection(tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", "replace")

    def _piece(self, token: int, special: bool = False) -> bytes:
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama.llama_token_to_piece(self._vocab, token, buffer, size, 0, special)
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # the piece needs a bigger buffer

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Tokens of `messages` in the model's own chat template.

        The template's markup is tokenized with control tokens, message contents without, so text a
        user types can never open or close a turn.
        """
        placeholders = [{**message, "content": _SENTINEL.format(i)} for i, message in enumerate(messages)]
        rendered = self._template.render(
            messages=placeholders, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=self._eos_text
        )
        pieces = _SENTINEL_PATTERN.split(rendered)
        if len(pieces) != 2 * len(messages) + 1:
            raise ModelFileError("the model's chat template rewrites message contents; edgeqwen cannot render it safely")
        tokens: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                tokens += self.tokenize(piece, special=True)
            else:
                tokens += self.tokenize(messages[int(piece)]["content"])
        return tokens

    # -- evaluation -----------------------------------------------------------------------------

    def next_token_logits(self, tokens: Sequence[int], keep_prefix: int = 0) -> np.ndarray:
        """Logits for the token that follows `tokens` (a copy, shape [n_vocab]).

        keep_prefix: the length of a fixed prefix of `tokens` worth keeping in the cache.
        """
        self._evaluate(list(tokens), keep_prefix)
        return self._last_logits().copy()

    @property
    def readable_layers(self) -> range:
        """Blocks whose output layer_states can give: all but the last, which llama.cpp cuts down to
        the output rows (its output is the final state, read through the logits)."""
        return range(self.n_layer - 1)

    def layer_states(self, tokens: Sequence[int], layer: int, keep_prefix: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Next-token logits after `tokens`, and the output of transformer block `layer` (0-based, not
        the last block) for each token after the first `keep_prefix`: shape [len(tokens) - keep_prefix, n_embd].

        Those tokens are always evaluated afresh, so the states never depend on what ran before.
        """
        if layer not in self.readable_layers:
            raise ValueError(f"layer must be between 0 and {self.n_layer - 2} (the model has {self.n_layer} blocks; the last one is the final state)")
        if not 0 <= keep_prefix < len(tokens):
            raise ValueError("keep_prefix must leave at least one token to evaluate")
        self._truncate(min(len(self._working), keep_prefix))
        self._tap.arm(layer)
        try:
            self._evaluate(list(tokens), keep_prefix)
            states = np.concatenate(self._tap.rows)
        finally:
            self._tap.disarm()
        return self._last_logits().copy(), states[len(states) - (len(tokens) - keep_prefix):]

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int], keep_prefix: int = 0) -> float:
        """log P(continuation | prefix), one evaluation per continuation token."""
        total = 0.0
        for i, token in enumerate(continuation):
            logits = self.next_token_logits([*prefix, *continuation[:i]], keep_prefix)
            total += float(logits[token] - logsumexp(logits))
        return total

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx.ctx, -1), shape=(self.n_vocab,))

    def _evaluate(self, tokens: list[int], keep_prefix: int = 0) -> None:
        """Make the working sequence hold `tokens` and leave the last one's logits ready."""
        if not tokens:
            raise ValueError("nothing to evaluate")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens does not fit n_ctx {self.n_ctx}")
        reuse = common_prefix_length(self._working, tokens)
        kept = self._longest_kept_prefix(tokens)
        if keep_prefix > max(reuse, len(kept)) and self._load_prefix(tuple(tokens[:keep_prefix])):
            kept = tuple(tokens[:keep_prefix])
        if len(kept) > reuse:
            self._restore(kept)
            reuse = len(kept)
        reuse = min(reuse, len(tokens) - 1)  # the last token is evaluated again for its logits
        self._truncate(reuse)
        self._make_room(len(tokens))
        self._decode(tokens[reuse:], keep_prefix)
        self.tokens_evaluated = len(tokens) - reuse

    def _decode(self, tokens: list[int], keep_prefix: int = 0) -> None:
        """Evaluate `tokens` after the working sequence, keeping its first `keep_prefix` tokens once reached."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self._batch.set_batch(chunk, n_past=len(self._working), logits_all=False)
            # The layer tap is Python that llama.cpp calls mid-decode: a Ctrl-C raised in it would be lost.
            with held_signals():
                while (code := llama.llama_decode(self._ctx.ctx, self._batch.batch)) == _DECODE_NO_SLOT and self._kept:
                    self._forget(next(iter(self._kept)))  # the working prompt needs the oldest kept prefix's cells
            if code != 0:
                raise EngineError(f"llama.cpp could not evaluate the prompt (llama_decode returned {code})")
            self._working += chunk
            if keep_prefix and len(self._working) >= keep_prefix:
                self._keep(keep_prefix)
                keep_prefix = 0

    def _truncate(self, length: int) -> None:
        # Also drops cells an interrupted decode left past the bookkept tokens.
        del self._working[length:]
        llama.llama_memory_seq_rm(self._memory, WORKING_SEQ, length, -1)

    def _longest_kept_prefix(self, tokens: list[int]) -> tuple[int, ...]:
        best: tuple[int, ...] = ()
        for prefix in self._kept:
            if len(prefix) > len(best) and len(prefix) <= len(tokens) and tuple(tokens[: len(prefix)]) == prefix:
                best = prefix
        return best

    def _restore(self, prefix: tuple[int, ...]) -> None:
        """Point the working sequence at a kept prefix's cells: no evaluation, no copy."""
        self._working = []  # bookkeeping first: an interrupt here leaves a state _truncate repairs
        llama.llama_memory_seq_rm(self._memory, WORKING_SEQ, -1, -1)
        llama.llama_memory_seq_cp(self._memory, self._kept[prefix], WORKING_SEQ, -1, -1)
        self._kept.move_to_end(prefix)
        self._working = list(prefix)

    def _keep(self, length: int) -> None:
        prefix = tuple(self._working[:length])
        seq = self._free_sequence(prefix)
        if seq is None:
            return
        llama.llama_memory_seq_cp(self._memory, WORKING_SEQ, seq, 0, length)
        self._kept[prefix] = seq
        self._save_prefix(prefix, seq)

    def _free_sequence(self, prefix: tuple[int, ...]) -> int | None:
        """A cleared sequence id for `prefix`, evicting older kept prefixes; None if it should not be kept."""
        if prefix in self._kept or len(prefix) > self.prefix_budget:
            return None
        while self._kept and (len(self._kept) >= MAX_KEPT_PREFIXES or sum(map(len, self._kept)) + len(prefix) > self.prefix_budget):
            self._forget(next(iter(self._kept)))
        seq = min(set(range(1, MAX_KEPT_PREFIXES + 1)) - set(self._kept.values()))
        llama.llama_memory_seq_rm(self._memory, seq, -1, -1)  # cells an interrupted _keep may have left
        return seq

    def _make_room(self, length: int) -> None:
        """Evict kept prefixes, oldest first, until a working sequence of `length` tokens fits beside them."""
        while self._kept and length + self._cells_kept_apart() > self.n_ctx:
            self._forget(next(iter(self._kept)))

    def _cells_kept_apart(self) -> int:
        # Cells of kept prefixes, less the longest one the working sequence starts with (those it shares).
        shared = max((len(p) for p in self._kept if tuple(self._working[: len(p)]) == p), default=0)
        return sum(map(len, self._kept)) - shared

    def _forget(self, prefix: tuple[int, ...]) -> None:
        llama.llama_memory_seq_rm(self._memory, self._kept.pop(prefix), -1, -1)

    # -- kept prefixes on disk ------------------------------------------------------------------

    def _prefix_store(self, directory: str | os.PathLike | None) -> PrefixStore | None:
        if directory is None:
            return None
        stat = os.stat(self.info.path)
        return PrefixStore(Path(directory), [os.path.realpath(self.info.path), stat.st_size, stat.st_mtime_ns, self.kv_type, self._flash])

    def _save_prefix(self, prefix: tuple[int, ...], seq: int) -> None:
        if self._store is not None:
            self._store.save(self._ctx.ctx, prefix, seq)

    def _load_prefix(self, prefix: tuple[int, ...]) -> bool:
        """Load a saved prefix into a kept sequence; False when there is none or it does not check out."""
        if self._store is None or len(prefix) > self.prefix_budget or not self._store.has(prefix):
            return False
        seq = self._free_sequence(prefix)
        if seq is None:
            return False
        if not self._store.load(self._ctx.ctx, prefix, seq):
            llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
            return False
        self._kept[prefix] = seq
        return True

    # -- generation -----------------------------------------------------------------------------

    def stream(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> Iterator[str]:
        """Sample a continuation of `tokens`, yielding text as it decodes; stops at end of turn.
        `last_generation` tells how many tokens it produced and why it stopped."""
        generation = self.last_generation = Generation(prompt_tokens=len(tokens))
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens leaves no room in n_ctx {self.n_ctx}")
        sampler = build_sampler(self._model, sampling)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._evaluate(list(tokens), keep_prefix)
        self._make_room(len(tokens) + budget)
        for count in range(1, budget + 1):
            token = sampler.sample(self._ctx, -1)  # also feeds the token to the sampler's state
            if token in self.end_of_turn:
                generation.finish_reason = "stop"
                break
            generation.tokens = count
            text = decoder.decode(self._piece(token))
            if text:
                yield text
            if count < budget:
                self._decode([token])
        else:
            generation.finish_reason = "length"
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def bare_decode_rate(self, tokens: Sequence[int], n_tokens: int) -> float:
        """Tokens per second of a bare llama_decode + arg-max loop after `tokens` on this context and
        its settings, with no sampler chain: the reference `edgeqwen bench` holds generation against."""
        token = (llama.llama_token * 1)(int(np.argmax(self.next_token_logits(tokens))))
        started = time.perf_counter()
        for _ in range(n_tokens):
            llama.llama_decode(self._ctx.ctx, llama.llama_batch_get_one(token, 1))  # positions follow the working sequence
            token[0] = int(np.argmax(self._last_logits()))
        elapsed = time.perf_counter() - started
        self._truncate(0)  # the bookkeeping did not see these tokens
        return n_tokens / elapsed

    def constrained_choice(self, tokens: Sequence[int], grammar: str, max_tokens: int = 32, keep_prefix: int = 0) -> str:
        """Greedy decoding under a label grammar; returns the literal the model produced."""
        check_grammar(grammar)
        for literal in grammar_literals(grammar):
            if not self.is_plain_text(literal):
                raise GrammarError(f"grammar rejected: literal {literal!r} contains a control token of this model")
        sampler = build_sampler(self._model, SamplingParams(temperature=0.0), grammar=grammar)
        self._evaluate(list(tokens), keep_prefix)
        produced: list[int] = []
        while len(produced) < max_tokens:
            token = sampler.sample(self._ctx, -1)
            if token in self.end_of_turn:
                break
            produced.append(token)
            self._decode([token])
        return self.detokenize(produced)


def common_prefix_length(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(cached), len(tokens))
    if n == 0:
        return 0
    differs = np.flatnonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))
    return int(differs[0]) if differs.size else n
