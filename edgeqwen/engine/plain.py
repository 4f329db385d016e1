"""Plain llama-cpp-python, as a user of it would call it: the reference `edgeqwen bench` measures
edgeqwen against in the same run."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

__all__ = ["PlainLlama"]


class PlainLlama:
    """llama_cpp.Llama on the same model file and threads, called the usual high-level way."""

    def __init__(self, model: Path, n_ctx: int, threads: int) -> None:
        self.llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                   logits_all=False, verbose=False)

    def eval_seconds(self, prefix: Sequence[int], rest: Sequence[int]) -> float:
        """Seconds to evaluate `rest` after a freshly evaluated `prefix`: the compute floor of an input."""
        self.llm.reset()
        self.llm.eval(list(prefix))
        started = time.perf_counter()
        self.llm.eval(list(rest))
        return time.perf_counter() - started

    def grammar_completion(self, prompt: str, labels: Sequence[str]) -> str:
        """A plain completion forced to one of `labels` by a GBNF grammar (the naive classification call)."""
        grammar = llama_cpp.LlamaGrammar.from_string("root ::= " + " | ".join(f'"{label}"' for label in labels),
                                                     verbose=False)
        return self.llm.create_completion(prompt, grammar=grammar, max_tokens=4, temperature=0.0)["choices"][0]["text"]

    def chat_completion(self, messages: list[dict[str, str]], labels: Sequence[str] | None = None,
                        max_tokens: int = 4) -> str:
        """create_chat_completion, greedy, optionally forced to one of `labels` by a grammar."""
        grammar = None
        if labels:
            grammar = llama_cpp.LlamaGrammar.from_string("root ::= " + " | ".join(f'"{label}"' for label in labels),
                                                         verbose=False)
        reply = self.llm.create_chat_completion(messages, grammar=grammar, max_tokens=max_tokens, temperature=0.0)
        return reply["choices"][0]["message"]["content"] or ""

    def json_schema_decode_rate(self, prompt: Sequence[int], n_tokens: int, schema: dict) -> float:
        """Greedy tok/s under llama-cpp-python's own JSON-schema grammar, which it applies to every candidate
        of every token (the way a plain llama-cpp-python user gets structured output)."""
        grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        return self.decode_rate(prompt, n_tokens, temp=0.0, grammar=grammar)

    def decode_rate(self, prompt: Sequence[int], n_tokens: int, **sampling) -> float:
        """Tokens per second of Llama.generate after `prompt`, the first token excluded."""
        self.llm.reset()
        self.llm.eval(list(prompt))
        started, count = time.perf_counter(), 0
        for count, _ in enumerate(self.llm.generate(list(prompt), **sampling), start=1):
            if count == 1:
                started = time.perf_counter()
            if count >= n_tokens:
                break
        return (count - 1) / (time.perf_counter() - started)
