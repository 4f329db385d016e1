"""Picking each token of one reply: llama.cpp's sampler chain, a grammar checked lazily, and log-probabilities.

A grammar applied to every candidate costs llama.cpp a pass over the whole vocabulary per token (about
40 ms here, twice a decode step). As llama.cpp's own common sampler does, the token is sampled without
the grammar first and only that token is checked against it; only when it breaks the grammar are the
candidates filtered by the whole grammar and sampled again. Both samples see the same chain state, and
the chain and the grammar learn only the token kept. A token is never given to the grammar unless the
grammar accepts it (llama.cpp aborts the process otherwise).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable, Sequence

import llama_cpp
import numpy as np

from ..errors import EngineError, GrammarError
from ..json_schema import check_rules
from .bindings import LlamaModel
from .reply import Reply
from .runtime import Runtime
from .sampling import SamplingParams

# llama_token_data as numpy sees it: {id int32, logit float32, p float32}
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
LAZY_GRAMMAR = True  # False: the whole grammar on every token (what llama-cpp-python does): the bench's "before"

Scores = tuple[float, list[tuple[int, float]]]  # the picked token's logprob, and the top alternatives (id, logprob)


def start_reply(runtime: Runtime, tokens: Sequence[int], sampling: SamplingParams, *, budget: int,
                end_of_turn: frozenset[int], control_tokens: frozenset[int]) -> tuple[Reply, TokenPicker]:
    """A reply after `tokens`: its bookkeeping (budget, stop texts, logprobs) and what picks its tokens.
    Under a grammar, control tokens other than the end of turn are never picked: their text is not the reply's."""
    reply = Reply(len(tokens), budget, runtime.piece, end_of_turn, sampling.stop, sampling.logprobs is not None)
    banned = control_tokens - end_of_turn if sampling.grammar is not None else frozenset()
    return reply, TokenPicker(runtime, sampling, banned=banned, context=tokens)


def grammar_sampler(model: LlamaModel, grammar: str) -> llama_cpp.llama_sampler_p:
    """llama.cpp's grammar sampler for a grammar built by json_schema; GrammarError if llama.cpp refuses it."""
    try:
        check_rules(grammar)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with it, it must not reach llama.cpp
        raise GrammarError(f"grammar rejected: {error}") from None
    sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise GrammarError("grammar rejected by llama.cpp")
    return sampler


def token_scores(logits: np.ndarray, token: int, top: int) -> Scores:
    """log P(token) under the model's raw distribution, and the `top` most likely tokens with theirs."""
    peak = float(logits.max())
    total = peak + math.log(float(np.exp(logits - peak, dtype=np.float64).sum()))
    best: list[tuple[int, float]] = []
    if top:
        ids = np.argpartition(logits, -top)[-top:]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = [(int(i), float(logits[i]) - total) for i in ids]
    return float(logits[token]) - total, best


class TokenPicker:
    """The next token of one reply, from a row of the last batch's logits: `pick(row)`."""

    def __init__(self, runtime: Runtime, sampling: SamplingParams, *, banned: Iterable[int] = (),
                 context: Sequence[int] = ()) -> None:
        self.runtime = runtime
        self.chain = runtime.sampler(sampling, context=context)
        self.top = sampling.logprobs
        self.resampled = 0  # tokens the whole grammar had to be applied for
        self._grammar = None
        if sampling.grammar is not None:
            n_vocab = runtime.n_vocab
            self._grammar = grammar_sampler(runtime.model, sampling.grammar)
            self._candidates = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._banned = np.fromiter(sorted(set(banned)), dtype=np.int64)  # control tokens: not the reply's text
            self._one = llama_cpp.llama_token_data(0, 1.0, 0.0)

    def pick(self, row: int = -1) -> tuple[int, Scores | None]:
        """The token sampled from batch row `row` (-1: the last), fed to the chain and the grammar; with
        logprobs asked for, its scores."""
        logits = self.runtime.logits_row(row)
        token = self.runtime.sample(self.chain, row) if self._grammar is None else self._constrained(logits)
        return token, (token_scores(logits, token, self.top) if self.top is not None else None)

    def close(self) -> None:
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
        self.chain.close()

    def __del__(self) -> None:
        self.close()

    # -- under a grammar -----------------------------------------------------------------------

    def _constrained(self, logits: np.ndarray) -> int:
        token = self._sample(logits, grammar=not LAZY_GRAMMAR)
        if not self._fits(token):
            self.resampled += 1
            token = self._sample(logits, grammar=True)
            if not self._fits(token):
                raise EngineError("no token fits the grammar (the reply cannot go on)")
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self.chain.sampler, token)
        return token

    def _sample(self, logits: np.ndarray, grammar: bool) -> int:
        """The chain's choice over every token (with grammar=True, over those the grammar allows), without
        feeding it to the chain."""
        candidates = self._candidates
        candidates["id"] = self._ids
        candidates["logit"] = logits
        candidates["p"] = 0.0
        if self._banned.size:
            candidates["logit"][self._banned] = -np.inf
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(llama_cpp.llama_token_data_p), len(candidates), -1, False
        )
        if grammar:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain.sampler, ctypes.byref(array))
        if array.selected < 0:
            raise EngineError("the sampler chain selected no token")
        return int(array.data[array.selected].id)

    def _fits(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (control tokens other than the end of turn never)."""
        if self._banned.size and token in self._banned:
            return False
        one = self._one
        one.id, one.logit, one.p = token, 1.0, 0.0
        array = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return one.logit != -math.inf
