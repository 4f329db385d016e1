"""The engine on the real model: kept prefixes, role switches, and state after interruptions."""

from __future__ import annotations

import numpy as np
import pytest

from edgeqwen.engine import Engine, SamplingParams
from edgeqwen.errors import ContextOverflowError, GrammarError
from edgeqwen.tasks import fixed_prefix, fit_prompt


def _prompt(eq, role_name, text):
    role = eq.roles[role_name]
    return fit_prompt(eq.engine, role, text, prefix=fixed_prefix(eq.engine, role))


def test_role_switches_do_not_re_evaluate_fixed_prefixes(eq):
    eq.sentiment("warm the sentiment role")
    eq.route("warm the route role")
    eq.chat("hi")
    prompt = _prompt(eq, "sentiment", "The battery died after two days.")
    assert prompt.fixed > 100  # system prompt + few-shot examples
    eq.sentiment("The battery died after two days.")
    assert eq.engine.tokens_evaluated == len(prompt.tokens) - prompt.fixed


def test_kept_prefix_gives_the_same_logits_as_a_fresh_evaluation(eq, model_path):
    prompt = _prompt(eq, "sentiment", "物流很快，包装完好。")
    eq.route("something else first")
    cached = eq.engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    fresh_engine = Engine(model_path, n_ctx=512, prefix_budget=0)
    fresh = fresh_engine.next_token_logits(prompt.tokens)
    assert fresh_engine.tokens_evaluated == len(prompt.tokens)
    # Batch splits change llama.cpp's rounding slightly (~0.5 % here); a wrong cache changes everything.
    top = np.argsort(fresh)[-20:]
    assert np.argmax(cached) == np.argmax(fresh)
    assert np.max(np.abs(cached[top] - fresh[top])) < 0.5
    labels = [eq.engine.tokenize(name)[0] for name in ("positive", "negative")]
    p_cached, p_fresh = (np.exp(x[labels] - x[labels].max()) / np.exp(x[labels] - x[labels].max()).sum() for x in (cached, fresh))
    assert np.max(np.abs(p_cached - p_fresh)) < 0.01


def test_interrupted_stream_leaves_a_usable_engine(eq):
    tokens = eq.engine.chat_tokens([{"role": "user", "content": "Count from 1 to 100."}])
    stream = eq.engine.stream(tokens, SamplingParams(temperature=0.0, max_tokens=64))
    next(stream)
    next(stream)
    stream.close()  # what Ctrl-C or a client disconnect does
    before = eq.sentiment("Absolutely loved the soundtrack.")
    again = eq.sentiment("Absolutely loved the soundtrack.")
    assert before.label == again.label == "positive"
    assert abs(before.confidence - again.confidence) < 1e-3


def test_prompt_longer_than_the_context_is_refused_in_python(eq):
    with pytest.raises(ContextOverflowError):
        eq.engine.next_token_logits(list(range(100, 100 + eq.engine.n_ctx + 1)))


def test_grammar_with_a_control_token_never_reaches_llama_cpp(eq):
    tokens = eq.engine.chat_tokens([{"role": "user", "content": "hi"}])
    for grammar in ['root ::= "a" | "<|im_end|>"', 'root ::= "a" | "b', "root ::= [a-z]+", 'root ::= "a" "b" | x']:
        with pytest.raises(GrammarError):
            eq.engine.constrained_choice(tokens, grammar)


def test_next_token_state_gives_logits_and_the_hidden_state(eq):
    tokens = eq.engine.chat_tokens([{"role": "user", "content": "hello there"}])
    logits, hidden = eq.engine.next_token_state(tokens)
    assert hidden.shape == (eq.engine.n_embd,) and np.isfinite(hidden).all() and np.abs(hidden).max() > 0
    # Batch splits change llama.cpp's rounding a little, so compare with tolerances, not exactly.
    reference = eq.engine.next_token_logits(tokens)
    assert np.argmax(logits) in np.argsort(reference)[-3:]
    assert np.max(np.abs(logits - reference)) < 1.0
    _, hidden_again = eq.engine.next_token_state(tokens)
    cosine = hidden @ hidden_again / (np.linalg.norm(hidden) * np.linalg.norm(hidden_again))
    assert cosine > 0.99
