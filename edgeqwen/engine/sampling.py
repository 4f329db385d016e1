"""How generated tokens are picked: sampling settings and the llama.cpp sampler chain built from them."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from .bindings import LlamaModel, LlamaSampler

PENALTY_WINDOW = 64  # recent tokens the repeat penalty applies to (llama.cpp's usual last_n)
DRY_BASE = 1.75  # llama.cpp's defaults for the DRY sampler
DRY_BREAKERS = ("\n", ":", '"', "*")  # a repeated run is not followed across these


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens when generating free text."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    # DRY ("don't repeat yourself"): a token that would extend a run of more than dry_allowed_length
    # tokens already in the prompt or the reply is penalised, growing with the run; 0: off.
    dry_multiplier: float = 0.0
    dry_allowed_length: int = 2
    # OpenAI's penalties: subtract frequency_penalty per earlier use of a token in the window, and
    # presence_penalty once if it was used at all.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    # A GBNF grammar every reply must match (json_schema.schema_grammar builds them); checked lazily:
    # only a sampled token that breaks it makes the whole grammar apply (engine/picker.py).
    grammar: str | None = None
    stop: tuple[str, ...] = ()  # texts that end the reply; never part of it (engine/reply.py)
    logprobs: int | None = None  # None: no log-probabilities; n: each token's, and its n most likely alternatives
    # Added to a token's logit before anything else: (token, bias) pairs; -inf bans the token.
    logit_bias: tuple[tuple[int, float], ...] = ()


def build_sampler(model: LlamaModel, sampling: SamplingParams, context: Sequence[int] = (),
                  window: int = 4096) -> LlamaSampler:
    """llama.cpp's sampler chain for `sampling` (greedy at temperature 0; its grammar is the picker's,
    engine/picker.py); `context` is the prompt, which the DRY sampler must know to keep the reply from
    copying it, and `window` how far back it looks (n_ctx: all of it; this llama.cpp takes no -1 for that)."""
    sampler = LlamaSampler()
    greedy = sampling.temperature <= 0
    if sampling.logit_bias:
        llama_cpp.llama_sampler_chain_add(sampler.sampler, _logit_bias(model, sampling.logit_bias))
    if sampling.repeat_penalty != 1.0 or sampling.frequency_penalty or sampling.presence_penalty:
        # The penalty only lowers the logits of the last PENALTY_WINDOW tokens, so the k best after
        # it are among the k + PENALTY_WINDOW best before: cutting to those first gives the same
        # choice without the penalty sampler scanning the whole vocabulary for every token.
        if (greedy or sampling.top_k > 0) and sampling.frequency_penalty >= 0 and sampling.presence_penalty >= 0:
            sampler.add_top_k((1 if greedy else sampling.top_k) + PENALTY_WINDOW)
        sampler.add_penalties(llama_cpp.llama_vocab_n_tokens(model.vocab), PENALTY_WINDOW, sampling.repeat_penalty,
                              sampling.frequency_penalty, sampling.presence_penalty)
    if sampling.dry_multiplier > 0:
        llama_cpp.llama_sampler_chain_add(sampler.sampler, _dry(model, sampling, context, window))
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


def _logit_bias(model: LlamaModel, pairs: Sequence[tuple[int, float]]) -> llama_cpp.llama_sampler_p:
    biases = (llama_cpp.llama_logit_bias * len(pairs))(*(llama_cpp.llama_logit_bias(t, b) for t, b in pairs))
    return llama_cpp.llama_sampler_init_logit_bias(llama_cpp.llama_vocab_n_tokens(model.vocab), len(pairs), biases)


def _dry(model: LlamaModel, sampling: SamplingParams, context: Sequence[int], window: int) -> llama_cpp.llama_sampler_p:
    """A DRY sampler that has already seen `context` (the chain's other samplers have not: the repeat
    penalty keeps to the reply's own last tokens). Cloned from one made per model and setting, since
    making one walks the whole vocabulary for the breakers."""
    key = (id(model), sampling.dry_multiplier, sampling.dry_allowed_length, window)
    if key not in _DRY_TEMPLATES:
        breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode() for b in DRY_BREAKERS))
        _DRY_TEMPLATES[key] = (model, llama_cpp.llama_sampler_init_dry(
            model.vocab, sampling.dry_multiplier, DRY_BASE, sampling.dry_allowed_length, window, breakers,
            len(DRY_BREAKERS)))
    dry = llama_cpp.llama_sampler_clone(_DRY_TEMPLATES[key][1])
    for token in context:
        llama_cpp.llama_sampler_accept(dry, token)
    return dry


# (model, multiplier, allowed length, window) -> (the model, kept alive with it; a DRY sampler to clone)
_DRY_TEMPLATES: dict[tuple, tuple[LlamaModel, llama_cpp.llama_sampler_p]] = {}
