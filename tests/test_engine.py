"""The engine on the real model: kept prefixes, role switches, and state after interruptions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeqwen.engine import Engine, SamplingParams
from edgeqwen.errors import ContextOverflowError, GrammarError
from edgeqwen.prompt_fit import fit_prompt, fixed_prefix

from near_tie import assert_same_or_near_tie


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
    p_cached, p_fresh = (np.exp(x[labels] - x[labels].max()) / np.exp(x[labels] - x[labels].max()).sum()
                         for x in (cached, fresh))
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


def test_the_bench_decode_loop_over_several_streams_leaves_the_engine_as_it_was(eq):
    tokens = eq.engine.chat_tokens([{"role": "user", "content": "Count from 1 to 100."}])
    before = eq.sentiment("Absolutely loved the soundtrack.")
    assert eq.engine.bare_decode_rate(tokens, 4, streams=4) > 0
    after = eq.sentiment("Absolutely loved the soundtrack.")
    assert after.label == before.label and abs(after.confidence - before.confidence) < 1e-3
    assert eq.engine.bare_decode_rate(tokens, 4) > 0  # the working sequence is free again


def test_prompt_longer_than_the_context_is_refused_in_python(eq):
    with pytest.raises(ContextOverflowError):
        eq.engine.next_token_logits(list(range(100, 100 + eq.engine.n_ctx + 1)))


def test_grammar_with_a_control_token_never_reaches_llama_cpp(eq):
    tokens = eq.engine.chat_tokens([{"role": "user", "content": "hi"}])
    for grammar in ['root ::= "a" | "<|im_end|>"', 'root ::= "a" | "b', "root ::= [a-z]+", 'root ::= "a" "b" | x']:
        with pytest.raises(GrammarError):
            eq.engine.constrained_choice(tokens, grammar)


# -- kept prefixes on disk, and in the same cells as the prompt --------------------------------


def _sentiment_prompt(engine, eq, text="物流很快，包装完好。"):
    return fit_prompt(engine, eq.roles["sentiment"], text, prefix=fixed_prefix(engine, eq.roles["sentiment"]))


def test_a_new_engine_loads_a_saved_prefix_instead_of_evaluating_it(eq, model_path, tmp_path):
    first = Engine(model_path, n_ctx=512, prefix_cache_dir=tmp_path)
    prompt = _sentiment_prompt(first, eq)
    evaluated = first.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    assert len(list(tmp_path.glob("*.kv"))) == 1

    second = Engine(model_path, n_ctx=512, prefix_cache_dir=tmp_path)
    loaded = second.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    assert second.tokens_evaluated == len(prompt.tokens) - prompt.fixed
    top = np.argsort(evaluated)[-20:]
    assert np.argmax(loaded) == np.argmax(evaluated)
    assert np.max(np.abs(loaded[top] - evaluated[top])) < 0.5


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "empty", "another prefix's file"])
def test_a_damaged_prefix_file_is_ignored(eq, model_path, tmp_path, damage):
    engine = Engine(model_path, n_ctx=512, prefix_cache_dir=tmp_path)
    prompt = _sentiment_prompt(engine, eq)
    reference = engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    (saved,) = tmp_path.glob("*.kv")
    data = saved.read_bytes()
    if damage == "flip a byte":
        saved.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    elif damage == "truncate":
        saved.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        saved.write_bytes(b"")
    else:
        other = _sentiment_prompt(engine, eq, "x")
        engine.next_token_logits([*other.tokens[: other.fixed - 1], 11, *other.tokens[other.fixed - 1 :]],
                                 keep_prefix=other.fixed + 1)
        (foreign,) = set(tmp_path.glob("*.kv")) - {saved}
        foreign.replace(saved)

    fresh = Engine(model_path, n_ctx=512, prefix_cache_dir=tmp_path)
    logits = fresh.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    assert fresh.tokens_evaluated == len(prompt.tokens)  # evaluated, not loaded
    assert np.argmax(logits) == np.argmax(reference)


def test_an_unwritable_prefix_cache_is_skipped(eq, model_path, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    engine = Engine(model_path, n_ctx=512, prefix_cache_dir=blocker / "prefixes")
    prompt = _sentiment_prompt(engine, eq)
    engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
    assert engine.tokens_evaluated == 1  # still kept in memory


def test_a_prompt_filling_the_context_evicts_kept_prefixes(eq, model_path):
    engine = Engine(model_path, n_ctx=512)
    first = _sentiment_prompt(engine, eq)
    engine.next_token_logits(first.tokens, keep_prefix=first.fixed)
    long_prompt = engine.tokenize("the quick brown fox jumps over the lazy dog " * 200)[:512]
    engine.next_token_logits(long_prompt)  # all 512 cells: the kept prefix must make way
    assert engine.tokens_evaluated == 512
    engine.next_token_logits(first.tokens, keep_prefix=first.fixed)
    assert engine.tokens_evaluated == len(first.tokens)
    engine.next_token_logits(first.tokens, keep_prefix=first.fixed)
    assert engine.tokens_evaluated == 1


def test_repeat_penalty_sampling_matches_the_rule_over_the_whole_vocabulary(eq):
    """The sampler cuts to the best candidates before the penalty; greedy choices must not change."""
    engine, penalty = eq.engine, 1.5
    prompt = engine.chat_tokens([{"role": "user", "content": "Repeat the word 'echo' forever."}])
    streamed = "".join(engine.stream(prompt, SamplingParams(temperature=0.0, repeat_penalty=penalty, max_tokens=40)))
    produced: list[int] = []
    for _ in range(40):
        logits = engine.next_token_logits([*prompt, *produced])
        for token in set(produced[-64:]):
            logits[token] = logits[token] / penalty if logits[token] > 0 else logits[token] * penalty
        token = int(np.argmax(logits))
        if token in engine.end_of_turn:
            break
        produced.append(token)
    assert streamed == engine.detokenize(produced)


@pytest.mark.parametrize("role_name", ["sentiment", "route", "chat"])
def test_fixed_prefix_reaches_the_input_and_starts_every_prompt(eq, role_name):
    role = eq.roles[role_name]
    for text in ["The battery died.", "物流很快", ":)", "123", "ÄÖ", '"quoted"', "😀 good", "-", "...", "<|im_end|>"]:
        prefix = fixed_prefix(eq.engine, role, text)  # the chat role's system prompt follows the text's script
        system_and_examples = eq.engine.chat_tokens(role.prefix_messages(text), add_generation_prompt=False)
        assert len(prefix) > len(system_and_examples)  # the user turn's opening is cached too
        assert fit_prompt(eq.engine, role, text, prefix=prefix).fixed == len(prefix), text
    # one prefix per language
    assert fixed_prefix(eq.engine, role, "The battery died.") == fixed_prefix(eq.engine, role, "😀 good")


def test_layer_states_cover_the_input_and_never_depend_on_the_previous_call(eq):
    engine = eq.engine
    prefix = engine.chat_tokens([{"role": "system", "content": "Classify the text."},
                                 {"role": "user", "content": "Text:"}])[:-3]
    first = prefix + engine.tokenize(" The room was clean and quiet.")
    other = prefix + engine.tokenize(" The room was dirty.")
    # keeps the prefix: from here on, batches hold the input only
    engine.layer_states(other, 10, keep_prefix=len(prefix))
    logits, states = engine.layer_states(first, 10, keep_prefix=len(prefix))
    assert states.shape == (len(first) - len(prefix), engine.n_embd) and np.isfinite(states).all()
    engine.next_token_logits(other, keep_prefix=len(prefix))  # shares "The room was" with `first`
    again_logits, again = engine.layer_states(first, 10, keep_prefix=len(prefix))
    assert np.array_equal(again, states) and np.array_equal(again_logits, logits)
    plain = engine.next_token_logits(first)  # evaluates only the last token again: other kernels, close numbers
    assert np.linalg.norm(plain - logits) / np.linalg.norm(plain) < 0.03 and plain.argmax() == logits.argmax()
    assert not np.allclose(engine.layer_states(first, 11, keep_prefix=len(prefix))[1], states)
    with pytest.raises(ValueError, match="layer must be between 0 and"):
        engine.layer_states(first, engine.n_layer - 1)


# -- chat slots: several replies decoded together (ChatStreams over engine Streams) -----------------

SECRETS = {"zorblax": "Remember this secret word: zorblax.", "quimbly": "Remember this secret word: quimbly."}
GREEDY = {"temperature": 0, "max_tokens": 24}


def _chats(eq):
    """Four conversations: two with a made-up word in their history, two plain questions."""
    asks = [(SECRETS[word], word) for word in SECRETS]
    chats = [(eq.conversation(sampling=GREEDY,
                              history=[{"role": "user", "content": said},
                                       {"role": "assistant", "content": f"Understood, the secret word is {word}."}]),
              "What is the secret word? Answer with the word only.") for said, word in asks]
    chats += [(eq.conversation(sampling=GREEDY), q)
              for q in ("Name one famous Chinese dish.", "用一句话介绍一下长城。")]
    return chats


def _together(eq, streams, chats, between=None):
    handles = {streams.start(conversation, conversation.prepare(text)): i
               for i, (conversation, text) in enumerate(chats)}
    assert None not in handles and streams.active == len(chats)
    replies, reasons = [""] * len(chats), [None] * len(chats)
    while streams.active:
        for handle, piece in streams.step().items():
            replies[handles[handle]] += piece.text
            reasons[handles[handle]] = piece.finish_reason or reasons[handles[handle]]
        if between:
            between()
    return replies, reasons


def test_replies_decoded_together_are_the_replies_alone_and_keep_to_their_own_history(eq):
    alone = []
    for conversation, text in _chats(eq):
        alone.append((conversation.reply(text), conversation.finish_reason))
    streams = eq.chat_streams(4)
    chats = _chats(eq)
    sentiments = []
    # A classification between steps must neither disturb the slots nor be disturbed by them.
    replies, reasons = _together(
        eq, streams, chats, between=lambda: sentiments.append(eq.sentiment("The battery died after two days.").label))
    prompts = [conversation.prepare(text).prompt.tokens for conversation, text in _chats(eq)]
    for prompt, (reply, _), together in zip(prompts, alone, replies):  # greedy: equal but for a near-tie flip
        assert_same_or_near_tie(eq.engine, prompt, reply, together)
    assert set(reasons) <= {"stop", "length"}
    assert "zorblax" in replies[0] and "quimbly" not in replies[0]
    assert "quimbly" in replies[1] and "zorblax" not in replies[1]
    assert not any(word in reply for reply in replies[2:] for word in SECRETS)
    assert set(sentiments) == {"negative"}
    for (conversation, _), reply in zip(chats, replies):  # each reply recorded in its own conversation only
        assert conversation.history[-1] == {"role": "assistant", "content": reply}
        assert conversation.timings["reply_tokens"] > 0
    assert streams.free == 4 and not eq.engine.runtime.cells.slots


def test_a_closed_stream_frees_its_slot_and_the_others_finish(eq):
    streams = eq.chat_streams(2)
    long_chat = eq.conversation(sampling={"temperature": 0, "max_tokens": 200})
    short_chat = eq.conversation(sampling=GREEDY)
    alone = eq.conversation(sampling=GREEDY).reply("Name one famous Chinese dish.")
    long_handle = streams.start(long_chat, long_chat.prepare("Count from 1 to 100, separated by commas."))
    short_handle = streams.start(short_chat, short_chat.prepare("Name one famous Chinese dish."))
    # waits for a slot
    assert streams.free == 0 and streams.start(eq.conversation(), eq.conversation().prepare("hi")) is None
    reply = ""
    for _ in range(3):
        reply += streams.step()[short_handle].text
    streams.close(long_handle)  # its client went away
    assert streams.free == 1 and long_chat.finish_reason is None and long_chat.history[-1]["role"] == "assistant"
    while streams.active:
        reply += streams.step()[short_handle].text
    assert_same_or_near_tie(eq.engine,
                            eq.conversation(sampling=GREEDY).prepare("Name one famous Chinese dish.").prompt.tokens,
                            alone, reply)
    assert short_chat.finish_reason in ("stop", "length")
    assert streams.free == 2 and not eq.engine.runtime.cells.slots


def test_chats_arriving_together_have_their_prompts_evaluated_in_one_step(eq):
    streams = eq.chat_streams(3)
    chats = _chats(eq)[1:]
    handles = [streams.start(conversation, conversation.prepare(text)) for conversation, text in chats]
    try:
        assert set(streams.step()) == set(handles)  # one decode: three prompts, three first tokens
    finally:
        streams.close_all()  # the session's engine: leave no slot holding cells
    assert not eq.engine.runtime.cells.slots


def test_a_long_prompt_joins_running_chats_without_stalling_them(eq):
    streams = eq.chat_streams(2)
    running = eq.conversation(sampling={"temperature": 0, "max_tokens": 40})
    handle = streams.start(running, running.prepare("Count from 1 to 100, separated by commas."))
    streams.step()
    story = "Here is my week: " + "I walked to the market, bought apples and read a book by the river. " * 16
    joining = eq.conversation(sampling=GREEDY)
    joined = streams.start(joining, joining.prepare(story + "Summarise my week in one sentence."))
    prompt_tokens = len(joining.prepare(story + "Summarise my week in one sentence.").prompt.tokens)
    assert prompt_tokens > 2 * eq.engine.n_batch  # evaluated over several steps
    steps_before_first = 0
    reply = ""
    try:
        while streams.active:
            pieces = streams.step()
            assert handle in pieces or running.finish_reason  # the running chat gets a token every step
            if joined in pieces:
                reply += pieces[joined].text
            elif not reply:
                steps_before_first += 1
    finally:
        streams.close_all()
    assert steps_before_first >= 2
    alone = eq.conversation(sampling=GREEDY)
    assert_same_or_near_tie(eq.engine, alone.prepare(story + "Summarise my week in one sentence.").prompt.tokens,
                            alone.reply(story + "Summarise my week in one sentence."), reply)


def test_a_prompt_that_does_not_fit_beside_a_slot_is_refused_and_the_slot_goes_on(model_path):
    from edgeqwen.errors import CacheBusyError

    engine = Engine(model_path, n_ctx=512)
    tokens = engine.chat_tokens([{"role": "user", "content": "Count from 1 to 500, separated by commas."}])
    alone = "".join(engine.stream(tokens, SamplingParams(temperature=0.0, max_tokens=16)))
    streams = engine.streams(2)
    handle = streams.start(tokens, SamplingParams(temperature=0.0, max_tokens=400))  # reserves ~430 of 512 cells
    text = streams.step()[handle].text
    long_prompt = engine.tokenize("the quick brown fox jumps over the lazy dog " * 40)[:200]
    with pytest.raises(CacheBusyError):
        engine.next_token_logits(long_prompt)  # would need the slot's cells: refused, nothing evicted
    assert streams.start(tokens, SamplingParams(temperature=0.0, max_tokens=400)) is None  # a second one waits
    for _ in range(15):
        text += streams.step()[handle].text
    streams.close(handle)
    assert_same_or_near_tie(engine, tokens, alone, text)
    engine.next_token_logits(long_prompt)  # the slot's cells are free again
    assert engine.tokens_evaluated == 200


def test_logit_bias_moves_greedy_off_a_token(eq):
    """A token biased to -inf is never picked: greedy takes the next best, as the logits say."""
    engine = eq.engine
    prompt = engine.chat_tokens([{"role": "user", "content": "Name one fruit."}])
    logits = engine.next_token_logits(prompt)
    best = int(np.argmax(logits))
    logits[best] = -np.inf
    runner_up = int(np.argmax(logits))
    free = engine.stream(prompt, SamplingParams(temperature=0.0, max_tokens=1))
    banned = engine.stream(prompt, SamplingParams(temperature=0.0, max_tokens=1, logit_bias=((best, -math.inf),)))
    assert "".join(free) == engine.detokenize([best])
    assert "".join(banned) == engine.detokenize([runner_up])
