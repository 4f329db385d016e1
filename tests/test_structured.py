"""Structured output, stop texts and logprobs on the real model, through the Python API: every reply under a
schema parses and validates (hypothesis draws the schemas), an extract role returns its fields, chat slots
carry a grammar and logprobs per reply, and a stop text ends a reply without being part of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.model

ARTIFACT = Path(__file__).parent / "artifacts" / "structured_validation.json"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0},
        "languages": {"type": "array", "items": {"enum": ["English", "Chinese", "French", "Spanish"]}, "maxItems": 4},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
PROMPTS = [
    "Lin is a 29-year-old translator who speaks Chinese and French.",
    "Tell me about your favourite city.",
    "请用JSON描述一本书。",
    "Summarise: the meeting moved to Friday at 10am in room 4.",
]
KEYS = st.sampled_from(["name", "city", "count", "tags", "ok", "level", "note", "items", "score", "kind", "名字"])


def bounded_schemas() -> st.SearchStrategy[dict]:
    """Schemas whose every matching reply has a bounded length (strings, arrays and numbers are bounded)."""
    leaves = st.one_of(
        st.integers(0, 10).map(lambda n: {"type": "string", "maxLength": 12 + n}),
        st.just({"type": "integer", "minimum": 0, "maximum": 100}),
        st.just({"type": "boolean"}),
        st.just({"type": ["string", "null"], "maxLength": 10}),
        st.lists(st.sampled_from(["low", "mid", "high", "红", "none"]), min_size=2, max_size=4, unique=True).map(
            lambda v: {"enum": v}
        ),
    )

    def extend(children):
        objects = st.dictionaries(KEYS, children, min_size=1, max_size=4).flatmap(
            lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
                lambda req: {"type": "object", "properties": props, "required": req, "additionalProperties": False}
            )
        )
        arrays = children.map(lambda item: {"type": "array", "items": item, "maxItems": 3})
        return st.one_of(objects, arrays)

    return st.recursive(leaves, extend, max_leaves=6).map(
        lambda s: (
            s if s.get("type") == "object" else {"type": "object", "properties": {"value": s}, "required": ["value"]}
        )
    )


_results: list[dict] = []


@pytest.mark.timeout(1800)  # 16 model replies, on a shared machine
@settings(
    max_examples=16,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(schema=bounded_schemas(), prompt=st.sampled_from(PROMPTS))
def test_replies_under_generated_schemas_always_validate(eq, schema, prompt):
    conversation = eq.conversation(sampling={"temperature": 0.7, "seed": 7, "max_tokens": 400}, schema=schema)
    reply = conversation.reply(prompt)
    valid = conversation.finish_reason == "stop"
    try:
        jsonschema.validate(json.loads(reply), schema)
    except (ValueError, jsonschema.ValidationError):
        valid = False
    _results.append(
        {
            "schema": schema,
            "reply": reply,
            "valid": valid,
            "finish_reason": conversation.finish_reason,
            "tokens": conversation.timings["reply_tokens"],
            "grammar_resampled": conversation.timings["grammar_resampled"],
        }
    )
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(
        json.dumps(
            {"replies": len(_results), "valid": sum(r["valid"] for r in _results), "cases": _results},
            ensure_ascii=False,
            indent=1,
        )
    )
    assert valid, f"{reply!r} ({conversation.finish_reason}) does not validate against {schema}"


def test_chat_with_schema_and_the_extract_role(eq):
    reply = eq.chat("Lin is a 29-year-old translator who speaks Chinese and French.", schema=PERSON)
    person = json.loads(reply)
    jsonschema.validate(person, PERSON)
    assert person["age"] == 29 and "Lin" in person["name"]
    contact = eq.extract(
        "Hello, I'm Tom Berg of Nordlys AS. Mail me at tom.berg@nordlys.no or call 22 33 44 55.", "contact"
    )
    jsonschema.validate(contact, eq.roles["contact"].output_schema)
    assert contact["email"] == "tom.berg@nordlys.no" and "Tom" in contact["name"]


def test_chat_slots_carry_a_grammar_stop_texts_and_logprobs_per_reply(eq):
    streams = eq.chat_streams(3)
    structured = eq.conversation(sampling={"temperature": 0, "max_tokens": 80}, schema=PERSON, logprobs=3)
    stopped = eq.conversation(sampling={"temperature": 0, "max_tokens": 60}, stop=["3"])
    free = eq.conversation(sampling={"temperature": 0, "max_tokens": 24})
    for conversation, text in (
        (structured, PROMPTS[0]),
        (stopped, "Count from 1 to 10, separated by commas."),
        (free, "Say hello."),
    ):
        assert streams.start(conversation, conversation.prepare(text)) is not None
    seen: dict[int, list] = {}
    for _ in range(400):  # bounded: every reply ends within its max_tokens
        if not streams.active:
            break
        for handle, piece in streams.step().items():
            seen.setdefault(handle, []).extend(piece.logprobs)
    assert not streams.active
    jsonschema.validate(json.loads(structured.history[-1]["content"]), PERSON)
    entries = structured.last_logprobs
    assert "".join(entry.token for entry in entries) == structured.history[-1]["content"]
    assert all(
        entry.logprob <= 0 and len(entry.top) == 3 and entry.top[0].logprob >= entry.top[-1].logprob
        for entry in entries
    )
    assert sum(math.exp(t.logprob) for t in entries[0].top) <= 1.0001
    assert stopped.finish_reason == "stop" and "3" not in stopped.history[-1]["content"]
    assert stopped.history[-1]["content"].replace(" ", "").startswith("1,2,")
    assert stopped.last_logprobs is None and free.last_logprobs is None


def test_a_stop_text_in_the_python_api(eq):
    reply = eq.chat("List the days of the week, one per line.", stop=["Wednesday"])
    assert "Wednesday" not in reply and "Monday" in reply
