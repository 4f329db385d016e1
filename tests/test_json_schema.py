"""JSON schema to grammar (json_schema.py), no model: every sentence a grammar allows parses and validates,
unsupported keywords are refused by name, and the grammars stay within what llama.cpp accepts."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeqwen.errors import SchemaError
from edgeqwen.json_schema import MAX_REPEAT, check_rules, gbnf_literal, schema_grammar

import gbnf_sample

NAMES = st.text(st.sampled_from('abcxyz_é中 "\\<|>'), min_size=1, max_size=6)
STRING_VALUES = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)


def leaf_schemas() -> st.SearchStrategy[dict]:
    bounded = st.integers(0, 5).flatmap(
        lambda lo: st.integers(lo, lo + 6).map(lambda hi: {"minLength": lo, "maxLength": hi})
    )
    return st.one_of(
        st.just({"type": "string"}),
        bounded.map(lambda b: {"type": "string", **b}),
        st.just({"type": "integer"}),
        st.integers(-50, 50).flatmap(
            lambda lo: st.integers(lo, lo + 40).map(lambda hi: {"type": "integer", "minimum": lo, "maximum": hi})
        ),
        st.sampled_from(
            [{"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 1}, {"type": "number", "minimum": 0}]
        ),
        st.just({"type": "number"}),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(
            st.one_of(STRING_VALUES, st.integers(-99, 99), st.booleans(), st.none()),
            min_size=1,
            max_size=5,
            unique_by=json.dumps,
        ).map(lambda values: {"enum": values}),
        STRING_VALUES.map(lambda value: {"const": value}),
        st.just({}),
        st.just({"type": ["string", "null"]}),
    )


def schemas() -> st.SearchStrategy[dict]:
    def extend(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
        objects = st.dictionaries(NAMES, children, max_size=5).flatmap(
            lambda props: st.lists(
                st.sampled_from(sorted(props)) if props else st.nothing(), unique=True, max_size=len(props)
            ).map(
                lambda required: {
                    "type": "object",
                    "properties": props,
                    "required": required,
                    "additionalProperties": False,
                }
            )
        )
        arrays = st.tuples(children, st.integers(0, 3), st.integers(0, 4)).map(
            lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[1] + t[2]}
        )
        any_of = st.lists(children, min_size=1, max_size=3).map(lambda branches: {"anyOf": branches})
        maps = children.map(lambda value: {"type": "object", "additionalProperties": value})
        return st.one_of(objects, arrays, any_of, maps)

    return st.recursive(leaf_schemas(), extend, max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schemas(), seed=st.integers(0, 2**32 - 1))
def test_every_sentence_of_a_schema_grammar_parses_and_validates(schema, seed):
    grammar = schema_grammar(schema)
    check_rules(grammar)
    sampler = gbnf_sample.parse(grammar)
    rng = random.Random(seed)
    for _ in range(5):
        text = sampler.sample(rng)
        jsonschema.validate(json.loads(text), schema)


def test_pydantic_style_schema_with_refs_and_optional_fields():
    schema = {
        "$defs": {
            "Address": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
                "title": "Address",
            }
        },
        "type": "object",
        "title": "Person",
        "properties": {
            "name": {"type": "string", "title": "Name"},
            "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "address": {"$ref": "#/$defs/Address"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    }
    sampler, rng = gbnf_sample.parse(schema_grammar(schema)), random.Random(7)
    for _ in range(50):
        jsonschema.validate(json.loads(sampler.sample(rng)), schema)


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "string", "pattern": "^a+$"}, "'pattern'"),
        ({"type": "string", "format": "date-time"}, "'format'"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"not": {"type": "string"}}, "'not'"),
        ({"if": {}, "then": {}}, "'if'"),
        ({"type": "object", "patternProperties": {"a": {}}}, "'patternProperties'"),
        ({"type": "number", "minimum": 3}, "minimum"),
        ({"type": "integer", "minimum": 0, "maximum": 10**6}, "integer bounds"),
        ({"type": "integer", "multipleOf": 2}, "'multipleOf'"),
        ({"type": "array", "maxItems": MAX_REPEAT + 1}, "maxItems"),
        ({"type": "string", "maxLength": MAX_REPEAT + 1}, "maxLength"),
        (
            {"$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}, "$ref": "#/$defs/N"},
            "recursive",
        ),
        ({"$ref": "https://example.com/schema.json"}, "local references"),
        ({"$ref": "#/$defs/Missing"}, "not defined"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "'b'"),
        ({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 2}]}, "different types"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
        ({"type": "date"}, "unknown type"),
        ({"type": "string", "minItems": 1}, "does not apply"),
        ({"enum": []}, "non-empty"),
        (False, "accepts no value"),
        ({"type": "object", "properties": {f"p{i}": {} for i in range(100)}}, "at most"),
    ],
)
def test_unsupported_keywords_are_refused_by_name(schema, named):
    with pytest.raises(SchemaError) as refused:
        schema_grammar(schema)
    message = str(refused.value)
    assert named in message and "\n" not in message


def test_nesting_is_bounded():
    schema: dict = {"type": "string"}
    for _ in range(20):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="nested more than"):
        schema_grammar(schema)


def test_literals_escape_what_gbnf_and_json_need():
    assert gbnf_literal('a"b\\c\n\x01') == '"a\\"b\\\\c\\n\\x01"'
    assert gbnf_literal("x\u2028\x85y") == '"x\\u2028\\x85y"'  # Unicode line separators never split a grammar line
    grammar = schema_grammar({"enum": ["\ud800", "<|im_end|>", "中文", 'q"', "a\u2028\x85b"]})
    grammar.encode("utf-8")  # no lone surrogate reaches llama.cpp: it stays a JSON escape
    sampler, rng = gbnf_sample.parse(grammar), random.Random(0)
    seen = {json.loads(sampler.sample(rng)) for _ in range(60)}
    assert seen == {"\ud800", "<|im_end|>", "中文", 'q"', "a\u2028\x85b"}


def test_json_object_and_empty_schemas_allow_any_object_or_value():
    sampler, rng = gbnf_sample.parse(schema_grammar({"type": "object"})), random.Random(3)
    assert all(isinstance(json.loads(sampler.sample(rng)), dict) for _ in range(30))
    grammar = schema_grammar(True)
    assert grammar.startswith("root ::= value\n")


def test_check_rules_refuses_malformed_grammars():
    with pytest.raises(SchemaError, match="undefined"):
        check_rules("root ::= thing\n")
    with pytest.raises(SchemaError, match="no root"):
        check_rules('a ::= "x"\n')
    with pytest.raises(SchemaError, match="malformed"):
        check_rules('root ::= "x"\nroot ::= "y"\n')
    check_rules('root ::= "yes" | "no"')  # a label grammar passes too


# -- extract roles ---------------------------------------------------------------------------------

EXTRACT_ROLE = """\
kind: extract
system: Pull the order out of the message.
schema:
  type: object
  properties:
    item: {type: string, maxLength: 40}
    quantity: {type: integer, minimum: 1}
  required: [item, quantity]
"""


def test_extract_role_files_are_validated(write_role):
    from edgeqwen.errors import RoleError
    from edgeqwen.roles import load_role, load_roles

    role = load_role(write_role("order", EXTRACT_ROLE))
    assert role.kind == "extract" and role.output_schema["required"] == ["item", "quantity"]
    assert role.require_kind("generate") is role  # an extract role is a generate role whose replies follow its schema
    bad = {
        "no_schema": (EXTRACT_ROLE.split("schema:")[0], "an extract role needs one"),
        "schema_on_chat": (EXTRACT_ROLE.replace("kind: extract", "kind: generate"), "only an extract role"),
        "pattern": (EXTRACT_ROLE.replace("maxLength: 40", "pattern: '^[a-z]+$'"), "'pattern'"),
        "labels": (EXTRACT_ROLE + "labels: [{name: a}, {name: b}]\n", "has no labels"),
    }
    for name, (text, message) in bad.items():
        with pytest.raises(RoleError, match=message) as error:
            load_role(write_role(name, text))
        assert "\n" not in str(error.value) and name in str(error.value)
    shipped = load_roles()["contact"]
    assert shipped.kind == "extract" and set(shipped.output_schema["required"]) == {"name", "email", "phone", "company"}
