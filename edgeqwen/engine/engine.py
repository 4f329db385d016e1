"""The engine: the only module that talks to llama.cpp (load, tokenize, evaluate, logits, sample).

It knows nothing of roles, YAML, the CLI or HTTP. It drives llama.cpp's model, context and
samplers itself, because it keeps more than one prompt in the KV cache: sequence 0 is the working
prompt, and each fixed prompt prefix a caller marks (a role's system prompt and examples) is kept
as its own sequence. A later prompt that starts with a kept prefix shares those cache cells
instead of evaluating them again, across role switches too.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .. import settings
from ..board import physical_cores
from ..errors import ContextOverflowError, GrammarError, ModelFileError
from ..gguf_info import GGUFInfo, inspect_gguf
from ..grammar import check_grammar, grammar_literals
from ..memory_plan import plan_memory
from ..numeric import logsumexp
from .cells import MAX_PARALLEL, PREFIX_SHARE, WORKING_SEQ
from .llama_build import check_cpu
from .llama_build import features as build_features
from .picker import TokenPicker, start_reply
from .prefix_store import PrefixStore
from .reply import Generation, Reply
from .runtime import KV_TYPES, Entry, Runtime
from .sampling import SamplingParams
from .streams import Streams

log = logging.getLogger("edgeqwen.engine")
# Stand-ins for message contents while rendering a chat template, so user text can be tokenized
# apart from the template and never becomes a control token (private-use code points).
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")


@dataclass
class Evaluated:
    """What Engine.evaluate_many read for one prompt."""

    logits: np.ndarray | None  # next-token logits, shape [n_vocab]
    states: dict[int, np.ndarray]  # block -> its output per token after the shared prefix, [tokens, n_embd]


class Engine:
    """One loaded GGUF model and one llama.cpp context.

    `n_ctx`, `kv_type`, `use_mmap` and `repack` default to the memory plan for this model, board and
    llama.cpp build (memory_plan.py).
    `n_ctx` is the longest prompt + reply the engine accepts, and the number of KV cells: kept
    prefixes use at most `prefix_budget` of them (default half) and are evicted, oldest first,
    when a prompt needs their room. With `prefix_cache_dir`, kept prefixes are also saved there
    and loaded instead of evaluated by later processes (a corrupt or foreign file is ignored).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = settings.N_BATCH,
        prefix_budget: int | None = None,
        prefix_cache_dir: str | os.PathLike | None = None,
        use_mmap: bool | None = None,
        repack: bool | None = None,
        kv_type: str | None = None,
        flash_attn: bool = settings.FLASH_ATTN,
        verbose: bool = False,
    ) -> None:
        self.info: GGUFInfo = inspect_gguf(Path(model_path))  # raises before llama.cpp sees a bad file
        if not self.info.has_chat_template:
            raise ModelFileError(f"{model_path}: the GGUF has no chat template (tokenizer.chat_template); "
                                 "use an instruct/chat model")
        if n_ctx is not None and n_ctx < settings.MIN_N_CTX:
            raise ValueError(f"n_ctx must be at least {settings.MIN_N_CTX}")
        if kv_type is not None and kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}")
        check_cpu()  # a build for CPU features this one lacks would die with SIGILL at the first evaluation
        self.memory_plan = plan_memory(self.info, n_ctx=n_ctx, kv_type=kv_type, build=build_features(), repack=repack,
                                       mmap=use_mmap)  # fills in what was not given
        if not self.memory_plan.fits:
            log.warning(f"warning: {self.info.path.name} may not fit this board's memory: "
                        f"{self.memory_plan.describe()}")
        self.n_ctx = n_ctx = self.memory_plan.n_ctx
        kv_type = self.memory_plan.kv_type
        self.n_threads = n_threads or physical_cores()
        self.n_batch = min(n_batch, n_ctx)
        self.prefix_budget = int(n_ctx * PREFIX_SHARE) if prefix_budget is None else min(prefix_budget, n_ctx)
        self.kv_type = kv_type
        self.verbose = verbose
        flash = flash_attn or kv_type != "f16"  # a quantized V cache needs flash attention in llama.cpp
        loading = self.memory_plan.loading
        self.runtime = Runtime(
            str(model_path), n_ctx=n_ctx, n_batch=self.n_batch, n_threads=self.n_threads, kv_type=kv_type,
            flash_attn=flash, use_mmap=loading.mmap, repack=loading.repack, prefix_budget=self.prefix_budget,
            store=self._prefix_store(prefix_cache_dir, flash), verbose=verbose,
        )
        runtime = self.runtime
        self.n_vocab, self.n_embd, self.n_layer = runtime.n_vocab, runtime.n_embd, runtime.n_layer
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            self.info.chat_template or ""
        )
        self.end_of_turn = frozenset(t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(runtime.vocab, t))
        self._eos_text = runtime.piece(llama.llama_vocab_eos(runtime.vocab), special=True).decode("utf-8", "replace")
        self.tokens_evaluated = 0  # new tokens evaluated by the last call: what it cost
        self.last_generation = Generation()  # what the last stream() produced, and why it stopped

    # -- text <-> tokens ------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of `text`; with special=False, markup like <|im_end|> stays plain text."""
        return self.runtime.model.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=special)

    def is_plain_text(self, text: str) -> bool:
        """True when `text` holds no control token of this model, even one llama.cpp matches in plain
        text (an added token such as Qwen2.5's <tool_call>)."""
        tokens = self.tokenize(text, special=True)
        return tokens == self.tokenize(text) and not self.info.special_tokens.intersection(tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.runtime.piece(t) for t in tokens).decode("utf-8", "replace")

    def reply_header_length(self) -> int:
        """How many tokens the chat template puts after a user message's content when a reply follows
        (the end of the turn and the reply's header, 5 in ChatML)."""
        return len(self.tokenize(self._template_pieces([{"role": "user", "content": ""}], True)[-1], special=True))

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                    known: dict[str, list[int]] | None = None) -> list[int]:
        """Tokens of `messages` in the model's own chat template.

        The template's markup is tokenized with control tokens, message contents without, so text a
        user types can never open or close a turn. `known` maps contents to their tokens: those found
        there are not tokenized again, the others are added (a caller trying several cuts of one long
        conversation tokenizes each message once).
        """
        tokens: list[int] = []
        for index, piece in enumerate(self._template_pieces(messages, add_generation_prompt)):
            if index % 2 == 0:
                tokens += self.tokenize(piece, special=True)
                continue
            content = messages[int(piece)]["content"]
            if known is None:
                known = {}  # this call's own: every content is still tokenized once
            if content not in known:
                known[content] = self.tokenize(content)
            tokens += known[content]
        return tokens

    def _template_pieces(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> list[str]:
        """The rendered template split at each message's content: markup, then a message's index, in turn."""
        placeholders = [{**message, "content": _SENTINEL.format(i)} for i, message in enumerate(messages)]
        rendered = self._template.render(
            messages=placeholders, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=self._eos_text
        )
        pieces = _SENTINEL_PATTERN.split(rendered)
        if len(pieces) != 2 * len(messages) + 1:
            raise ModelFileError(
                "the model's chat template rewrites message contents; edgeqwen cannot render it safely")
        return pieces

    # -- evaluation -----------------------------------------------------------------------------

    def next_token_logits(self, tokens: Sequence[int], keep_prefix: int = 0) -> np.ndarray:
        """Logits for the token that follows `tokens` (a copy, shape [n_vocab]).

        keep_prefix: the length of a fixed prefix of `tokens` worth keeping in the cache.
        """
        self._evaluate(list(tokens), keep_prefix)
        return self.runtime.logits_row(-1).copy()

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
        (result,) = self.evaluate_many([tokens], keep_prefix, layers=[layer])
        return result.logits, result.states[layer]

    def evaluate_many(self, prompts: Sequence[Sequence[int]], keep_prefix: int = 0, *, layers: Sequence[int] = (),
                      logits: bool = True) -> list[Evaluated]:
        """Evaluate prompts that share their first `keep_prefix` tokens, each as its own sequence on the
        shared prefix's cells, as many in one llama_decode as n_batch allows.

        Per prompt: the next-token logits (None with logits=False) and, for each block in `layers`,
        its output for each token after the prefix. Those tokens are always evaluated afresh and
        dropped again afterwards, so nothing depends on what ran before or on which prompts share a
        batch beyond llama.cpp's rounding. With logits=False llama.cpp stops after the highest block
        asked for: the blocks above it and the output layer are never computed.
        """
        prompts = [list(p) for p in prompts]
        self._check_many(prompts, keep_prefix, layers, logits)
        if not prompts:
            return []
        lengths = [len(p) - keep_prefix for p in prompts]
        groups = list(self._groups(lengths))
        prefix = prompts[0][:keep_prefix]
        evaluated, source = 0, self.runtime.cells.kept_beside_working(prefix,
                                                                      max(sum(lengths[i] for i in group)
                                                                          for group in groups))
        if source is None:  # not kept yet, or no room beside the working sequence: it gives way and holds the prefix
            evaluated, source = self.runtime.hold(prefix), WORKING_SEQ
        results: list[Evaluated] = []
        for group in groups:
            results += self._evaluate_group([prompts[i][keep_prefix:] for i in group], keep_prefix, layers, logits,
                                            source)
        self.tokens_evaluated = evaluated + sum(lengths)
        return results

    def _check_many(self, prompts: list[list[int]], keep_prefix: int, layers: Sequence[int], logits: bool) -> None:
        if not layers and not logits:
            raise ValueError("nothing to read: ask for the logits, a layer, or both")
        if any(layer not in self.readable_layers for layer in layers):
            raise ValueError(f"layer must be between 0 and {self.n_layer - 2} (the model has {self.n_layer} blocks; "
                             "the last one is the final state)")
        for prompt in prompts:
            if not 0 <= keep_prefix < len(prompt):
                raise ValueError("keep_prefix must leave at least one token of each prompt to evaluate")
            if len(prompt) > self.n_ctx:
                raise ContextOverflowError(f"prompt of {len(prompt)} tokens does not fit n_ctx {self.n_ctx}")
            if prompt[:keep_prefix] != prompts[0][:keep_prefix]:
                raise ValueError("prompts evaluated together must share their first keep_prefix tokens")

    def _groups(self, lengths: list[int]) -> Iterator[list[int]]:
        """Indices of prompts to evaluate together: at most n_batch tokens and MAX_PARALLEL prompts."""
        group: list[int] = []
        total = 0
        for index, length in enumerate(lengths):
            if group and (total + length > self.n_batch or len(group) == MAX_PARALLEL):
                yield group
                group, total = [], 0
            group.append(index)
            total += length
        if group:
            yield group

    def _evaluate_group(self, suffixes: list[list[int]], start: int, layers: Sequence[int], logits: bool,
                        source: int) -> list[Evaluated]:
        """Each suffix as its own sequence after the first `start` tokens of sequence `source` (a kept
        prefix's, or the working one's; a suffix longer than n_batch is alone in its group and goes in
        several calls)."""
        entries: list[Entry] = [(token, start + j, k, j == len(suffix) - 1) for k, suffix in enumerate(suffixes)
                                for j, token in enumerate(suffix)]
        if source == WORKING_SEQ:  # beside a kept prefix the room was checked, and nothing may be evicted
            self.runtime.cells.make_room(start + len(entries))
        seqs = self.runtime.cells.lend(len(suffixes), start, source)
        found: list[np.ndarray | None] = [None] * len(suffixes)
        if layers:
            self.runtime.tap.arm(layers, stop=not logits)
        try:
            for first in range(0, len(entries), self.n_batch):
                part = entries[first : first + self.n_batch]
                self.runtime.fill_batch([(token, pos, seqs[k], last) for token, pos, k, last in part])
                self.runtime.run_batch()
                for index, (_, _, k, last) in enumerate(part):
                    if last and logits:
                        found[k] = self.runtime.logits_row(index).copy()
            bounds = np.cumsum([len(s) for s in suffixes])[:-1]
            states = {layer: np.split(self.runtime.tap.states(layer), bounds) for layer in layers}
        finally:
            self.runtime.tap.disarm()
            self.runtime.cells.give_back(seqs)
        return [Evaluated(found[k], {layer: rows[k] for layer, rows in states.items()}) for k in range(len(suffixes))]

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int], keep_prefix: int = 0) -> float:
        """log P(continuation | prefix), one evaluation per continuation token."""
        total = 0.0
        for i, token in enumerate(continuation):
            logits = self.next_token_logits([*prefix, *continuation[:i]], keep_prefix)
            total += float(logits[token] - logsumexp(logits))
        return total

    def _evaluate(self, tokens: list[int], keep_prefix: int = 0) -> None:
        """Make the working sequence hold `tokens` and leave the last one's logits ready."""
        if not tokens:
            raise ValueError("nothing to evaluate")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens does not fit n_ctx {self.n_ctx}")
        # the last token again, for its logits
        reuse = min(self.runtime.cells.reuse(tokens, keep_prefix), len(tokens) - 1)
        self.runtime.cells.truncate(reuse)
        self.runtime.cells.make_room(len(tokens))
        self.runtime.decode(tokens[reuse:], keep_prefix)
        self.tokens_evaluated = len(tokens) - reuse

    # -- kept prefixes on disk ------------------------------------------------------------------

    def _prefix_store(self, directory: str | os.PathLike | None, flash: bool) -> PrefixStore | None:
        if directory is None:
            return None
        stat = os.stat(self.info.path)
        identity = [os.path.realpath(self.info.path), stat.st_size, stat.st_mtime_ns, self.kv_type, flash]
        return PrefixStore(Path(directory), identity)

    # -- generation -----------------------------------------------------------------------------

    def stream(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> Iterator[str]:
        """Sample a continuation of `tokens`, yielding text as it decodes, until the end of the turn or a
        stop text (never yielded); under `sampling.grammar` every token keeps to it. `last_generation`
        tells how many tokens it produced, why it stopped and, if asked for, each token's logprobs."""
        reply, picker = self._start_reply(tokens, sampling)  # the picker's llama.cpp samplers are freed with it
        self.last_generation = reply.generation
        self._evaluate(list(tokens), keep_prefix)
        self.runtime.cells.make_room(len(tokens) + reply.budget)
        while True:
            token, scores = picker.pick()  # also feeds the token to the sampler's state
            text = reply.take(token, scores)
            reply.generation.resampled = picker.resampled
            if text:
                yield text
            if reply.done:
                return
            self.runtime.decode([token])

    def streams(self, slots: int) -> Streams:
        """Up to `slots` replies decoded together, one token of each per llama_decode (chat slots)."""
        return Streams(self.runtime, slots, start_reply=self._start_reply)

    def _start_reply(self, tokens: Sequence[int], sampling: SamplingParams) -> tuple[Reply, TokenPicker]:
        budget = self.reply_budget(tokens, sampling)
        return start_reply(self.runtime, tokens, sampling, budget=budget, end_of_turn=self.end_of_turn,
                           control_tokens=self.info.special_tokens)

    def reply_budget(self, tokens: Sequence[int], sampling: SamplingParams) -> int:
        """Most tokens a reply after `tokens` may have: max_tokens, or what the context has left."""
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens leaves no room in n_ctx {self.n_ctx}")
        return budget

    def bare_decode_rate(self, tokens: Sequence[int], n_tokens: int, streams: int = 1) -> float:
        """Tokens per second (all streams together) of a bare llama_decode + arg-max loop after `tokens`
        on this context and its settings, with no sampler chain; `streams` > 1 continues that many copies
        of `tokens` in one batch per step: what llama.cpp itself gets from decoding several streams at
        once on this machine, the reference `edgeqwen bench` holds generation and chat slots against."""
        if not 1 <= streams <= MAX_PARALLEL:
            raise ValueError(f"streams must be between 1 and {MAX_PARALLEL}")
        first = int(np.argmax(self.next_token_logits(tokens)))
        seqs = [WORKING_SEQ, *self.runtime.cells.lend(streams - 1, len(tokens))]
        next_tokens, position = [first] * streams, len(tokens)
        started = time.perf_counter()
        try:
            for _ in range(n_tokens):
                self.runtime.fill_batch([(token, position, seq, True) for token, seq in zip(next_tokens, seqs)])
                self.runtime.run_batch()
                next_tokens = [int(np.argmax(self.runtime.logits_row(row))) for row in range(streams)]
                position += 1
            elapsed = time.perf_counter() - started
        finally:
            self.runtime.cells.give_back(seqs[1:])
            self.runtime.cells.truncate(0)  # the bookkeeping did not see these tokens
        return streams * n_tokens / elapsed

    def constrained_choice(self, tokens: Sequence[int], grammar: str, max_tokens: int = 32,
                           keep_prefix: int = 0) -> str:
        """Greedy decoding under a label grammar; returns the literal the model produced."""
        check_grammar(grammar)
        for literal in grammar_literals(grammar):
            if not self.is_plain_text(literal):
                raise GrammarError(f"grammar rejected: literal {literal!r} contains a control token of this model")
        _, picker = self._start_reply(tokens, SamplingParams(temperature=0.0, grammar=grammar, max_tokens=max_tokens))
        self._evaluate(list(tokens), keep_prefix)
        produced: list[int] = []
        while len(produced) < max_tokens:
            token, _ = picker.pick()
            if token in self.end_of_turn:
                break
            produced.append(token)
            self.runtime.decode([token])
        return self.detokenize(produced)
