"""A reply's text as it streams (engine/reply.py), no model: stop texts are never handed out, text that
may start one is held back only as long as it may, and logprobs follow the text they belong to."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edgeqwen.engine.reply import Reply

END = 999


def run(pieces: list[str], stop: list[str], budget: int = 100, logprobs: bool = False) -> tuple[list[str], Reply]:
    vocab = {i: piece.encode() for i, piece in enumerate(pieces)}
    reply = Reply(3, budget, lambda token: vocab[token], frozenset([END]), stop, logprobs)
    out = []
    for token in [*range(len(pieces)), END]:
        out.append(reply.take(token, (-0.5, [(token, -0.5)]) if logprobs and token != END else None))
        if reply.done:
            break
    return out, reply


def test_stop_text_ends_the_reply_and_is_never_sent():
    out, reply = run(["Hel", "lo ", "wor", "ld"], ["lo w"])
    assert "".join(out) == "Hel" and reply.generation.finish_reason == "stop"
    assert reply.generation.tokens == 3  # the tokens that made the stop text count as generated


def test_text_is_held_only_while_it_may_start_a_stop_text():
    out, reply = run(["a", "b", "x", "c"], ["bc"])
    assert out[:2] == ["a", ""]  # "b" may begin "bc": held
    assert out[2] == "bx"  # "bx" cannot: sent
    assert "".join(out) == "abxc" and reply.generation.finish_reason == "stop"


def test_held_text_is_sent_when_the_reply_ends_otherwise():
    out, reply = run(["one", " tw"], ["two"], budget=2)
    assert "".join(out) == "one tw" and reply.generation.finish_reason == "length"


def test_earliest_of_several_stop_texts_wins():
    out, _ = run(["x=1;", " y=2\n", "z"], ["\n", ";"])
    assert "".join(out) == "x=1"


def test_logprobs_follow_the_text_handed_out():
    out, reply = run(["Hel", "lo ", "wor", "ld"], ["lo w"], logprobs=True)
    assert [entry.token for entry in reply.generation.logprobs] == ["Hel"]  # "lo " is the stop text's: dropped
    out, reply = run(["a", "b", "c"], [], logprobs=True)
    assert [e.to_dict()["token"] for e in reply.generation.logprobs] == ["a", "b", "c"]
    assert reply.generation.logprobs[0].to_dict()["top_logprobs"][0] == {"token": "a", "logprob": -0.5, "bytes": [97]}


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text("abc\n", min_size=1, max_size=3), min_size=1, max_size=12),
    stop=st.lists(st.text("abc\n", min_size=1, max_size=3), min_size=1, max_size=4),
)
def test_streamed_text_is_the_full_text_cut_before_the_first_stop(pieces, stop):
    out, reply = run(pieces, stop)
    full = "".join(pieces)
    cut = min((full.find(s) for s in stop if s in full), default=-1)
    if cut >= 0:
        assert "".join(out) == full[:cut] and reply.generation.finish_reason == "stop"
    else:
        assert "".join(out) == full
    assert not any(s in "".join(out) for s in stop)
