"""Plain llama-cpp-python, as a user of it would call it: the reference `edgeqwen bench` measures
edgeqwen against in the same run.

`python -m edgeqwen.engine.plain MODEL N_CTX THREADS [--no-extra-buffers]` loads it and runs a few
tokens: bench tries it in that child process first, since llama.cpp's default loading can die with
SIGILL on a CPU that advertises features it does not enable (AMX weight repacking on an x86 VM).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

from ..errors import EngineError
from .bindings import llama_model_defaults

__all__ = ["PlainLlama"]
PROBE_TEXT = "The battery died after two days."
PROBE_TOKENS = 4


class PlainLlama:
    """llama_cpp.Llama on the same model file and threads, called the usual high-level way.

    extra_buffers=False loads the weights without llama.cpp's extra buffer types (CPU weight
    repacking), as edgeqwen's memory plan does on x86; Llama() has no keyword for that."""

    def __init__(self, model: Path, n_ctx: int, threads: int, *, extra_buffers: bool = True) -> None:
        with contextlib.nullcontext() if extra_buffers else llama_model_defaults(use_extra_bufts=False):
            self.llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                       logits_all=False, verbose=False)
        if self.llm.model_params.use_extra_bufts != extra_buffers:
            raise EngineError(f"llama-cpp-python {llama_cpp.__version__} did not load with extra buffer types "
                              f"{'on' if extra_buffers else 'off'} (engine/bindings.py needs a look)")

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


def probe(model: Path, n_ctx: int, threads: int, extra_buffers: bool = True) -> None:
    """Load the reference and run a few tokens through it: evaluation and sampling, as bench will."""
    plain = PlainLlama(model, n_ctx, threads, extra_buffers=extra_buffers)
    tokens = plain.llm.tokenize(PROBE_TEXT.encode())
    plain.decode_rate(tokens, PROBE_TOKENS, temp=0.0)


if __name__ == "__main__":
    path, context, n_threads, *flags = sys.argv[1:]
    probe(Path(path), int(context), int(n_threads), extra_buffers="--no-extra-buffers" not in flags)
