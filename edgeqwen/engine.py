"""The engine: the only module that talks to llama.cpp (load, tokenize, evaluate, logits, sample).

It knows nothing of roles, YAML, the CLI or HTTP. It evaluates token sequences and keeps the KV
cache of the last one, so a new prompt that shares a prefix with the previous one only pays for
its new tokens.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ContextOverflowError, GrammarError, ModelFileError
from .grammar import check_grammar, grammar_literals
from .models import GGUFInfo, inspect_gguf

DEFAULT_N_CTX = 2048
DEFAULT_N_BATCH = 512
# Stand-ins for message contents while rendering a chat template, so user text can be tokenized
# apart from the template and never becomes a control token (private-use code points).
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens when generating free text."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None


def physical_cores() -> int:
    """Physical cores usable by this process: llama.cpp gains nothing from SMT siblings."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return usable
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", text))
    return max(1, min(usable, len(cores))) if cores else usable


class Engine:
    """One loaded GGUF model and one llama.cpp context."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_batch: int = DEFAULT_N_BATCH,
        verbose: bool = False,
    ) -> None:
        self.info: GGUFInfo = inspect_gguf(Path(model_path))  # raises before llama.cpp sees a bad file
        if not self.info.has_chat_template:
            raise ModelFileError(f"{model_path}: the GGUF has no chat template (tokenizer.chat_template); use an instruct/chat model")
        if n_ctx < 64:
            raise ValueError("n_ctx must be at least 64")
        from llama_cpp import Llama  # imported here: it loads the native library (~40 MB)

        self.n_threads = n_threads or physical_cores()
        self.verbose = verbose
        self._llm = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_batch=min(n_batch, n_ctx),
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            logits_all=False,  # all-position logits cost 300 MB+ with a 152k vocabulary
            use_mmap=True,
            verbose=verbose,
        )
        self.n_ctx = self._llm.n_ctx()
        self.n_vocab = self._llm.n_vocab()
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            self.info.chat_template or ""
        )
        self.end_of_turn = self._end_of_generation_tokens()
        self.tokens_evaluated = 0  # new tokens evaluated by the last call: what it cost

    # -- text <-> tokens ------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of `text`; with special=False, markup like <|im_end|> stays plain text."""
        return self._llm.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._llm.detokenize(list(tokens)).decode("utf-8", "replace")

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Tokens of `messages` in the model's own chat template.

        The template's markup is tokenized with control tokens, message contents without, so text a
        user types can never open or close a turn.
        """
        placeholders = [{**message, "content": _SENTINEL.format(i)} for i, message in enumerate(messages)]
        rendered = self._render(placeholders, add_generation_prompt)
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

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        eos = self._llm.detokenize([self._llm.token_eos()], special=True).decode("utf-8", "replace")
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=eos
        )

    def _end_of_generation_tokens(self) -> frozenset[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        # Control tokens sit at the end of Qwen's vocabulary; scanning every id costs ~0.1 s.
        return frozenset(t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t))

    # -- evaluation -----------------------------------------------------------------------------

    def next_token_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits for the token that follows `tokens` (a copy, shape [n_vocab])."""
        self._evaluate(tokens)
        row = self._llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int]) -> float:
        """log P(continuation | prefix), one evaluation per continuation token."""
        total = 0.0
        for i, token in enumerate(continuation):
            logits = self.next_token_logits([*prefix, *continuation[:i]])
            total += float(logits[token] - _logsumexp(logits))
        return total

    def _evaluate(self, tokens: Sequence[int]) -> None:
        """Make the KV cache hold `tokens`, reusing the longest prefix already there."""
        tokens = list(tokens)
        if not tokens:
            raise ValueError("nothing to evaluate")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens does not fit n_ctx {self.n_ctx}")
        llm = self._llm
        reuse = min(_common_prefix(llm.input_ids[: llm.n_tokens], tokens), len(tokens) - 1)
        llm.n_tokens = reuse  # eval() drops the KV cache past n_tokens
        llm.eval(tokens[reuse:])
        self.tokens_evaluated = len(tokens) - reuse

    # -- generation -----------------------------------------------------------------------------

    def stream(self, tokens: Sequence[int], sampling: SamplingParams) -> Iterator[str]:
        """Sample a continuation of `tokens`, yielding text as it decodes; stops at end of turn."""
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens leaves no room in n_ctx {self.n_ctx}")
        if sampling.seed is not None:
            self._llm.set_seed(sampling.seed)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        generator = self._llm.generate(
            list(tokens),
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=0.0,
            repeat_penalty=sampling.repeat_penalty,
        )
        self.tokens_evaluated = 0
        try:
            for count, token in enumerate(generator, start=1):
                if token in self.end_of_turn:
                    break
                text = decoder.decode(self._llm.detokenize([token]))
                if text:
                    yield text
                if count >= budget:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            generator.close()

    def constrained_choice(self, tokens: Sequence[int], grammar: str, max_tokens: int = 32) -> str:
        """Greedy decoding under a label grammar; returns the literal the model produced."""
        check_grammar(grammar)
        for literal in grammar_literals(grammar):
            if self.tokenize(literal, special=True) != self.tokenize(literal):
                raise GrammarError(f"grammar rejected: literal {literal!r} contains a control token of this model")
        from llama_cpp import LlamaGrammar

        compiled = LlamaGrammar.from_string(grammar, verbose=self.verbose)
        produced: list[int] = []
        generator = self._llm.generate(list(tokens), temp=0.0, grammar=compiled)
        try:
            for token in generator:
                if token in self.end_of_turn or len(produced) >= max_tokens:
                    break
                produced.append(token)
        finally:
            generator.close()
        return self.detokenize(produced)


def _common_prefix(cached: np.ndarray, tokens: list[int]) -> int:
    n = min(len(cached), len(tokens))
    if n == 0:
        return 0
    differs = np.flatnonzero(cached[:n] != np.asarray(tokens[:n], dtype=cached.dtype))
    return int(differs[0]) if differs.size else n


def _logsumexp(values: np.ndarray) -> float:
    peak = float(values.max())
    return peak + float(np.log(np.exp(values - peak).sum()))
