"""How generated tokens are picked: sampling settings and the llama.cpp sampler chain built from them."""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp
from llama_cpp import _internals as internals

PENALTY_WINDOW = 64  # recent tokens the repeat penalty applies to (llama.cpp's usual last_n)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens when generating free text."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None


def build_sampler(model: internals.LlamaModel, sampling: SamplingParams, grammar: str | None = None) -> internals.LlamaSampler:
    """llama.cpp's sampler chain for `sampling` (greedy at temperature 0), constrained by `grammar` if given."""
    sampler = internals.LlamaSampler()
    if grammar is not None:
        sampler.add_grammar(model, _Grammar(grammar))
    greedy = sampling.temperature <= 0
    if sampling.repeat_penalty != 1.0:
        # The penalty only lowers the logits of the last PENALTY_WINDOW tokens, so the k best after
        # it are among the k + PENALTY_WINDOW best before: cutting to those first gives the same
        # choice without the penalty sampler scanning the whole vocabulary for every token.
        if greedy or sampling.top_k > 0:
            sampler.add_top_k((1 if greedy else sampling.top_k) + PENALTY_WINDOW)
        sampler.add_penalties(llama_cpp.llama_vocab_n_tokens(model.vocab), PENALTY_WINDOW, sampling.repeat_penalty, 0.0, 0.0)
    if greedy:
        sampler.add_greedy()
        return sampler
    seed = sampling.seed if sampling.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
    if sampling.top_k > 0:
        sampler.add_top_k(sampling.top_k)
    sampler.add_top_p(sampling.top_p, 1)
    sampler.add_temp(sampling.temperature)
    sampler.add_dist(seed)
    return sampler


@dataclass(frozen=True)
class _Grammar:
    """What llama-cpp-python's sampler wrapper reads from a grammar: its text and root rule."""

    _grammar: str
    _root: str = "root"
