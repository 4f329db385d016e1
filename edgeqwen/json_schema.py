"""JSON schemas turned into GBNF grammars whose every sentence parses and validates against the schema.

Written here rather than taken from llama-cpp-python's converter because that one ignores keywords
it cannot enforce (a reply could then fail the client's own validation) and emits whitespace the
model can repeat without end. This one supports a subset and refuses everything else by name:

  type (one or a list), enum, const, anyOf, oneOf (of disjoint types), allOf of one schema, local
  $ref to #/$defs or #/definitions (not recursive); objects: properties, required,
  additionalProperties (false, or a schema when there are no properties); arrays: items, minItems,
  maxItems; strings: minLength, maxLength; integers: minimum/maximum (a range of at most
  MAX_RANGE values, or a lower bound of 0 or 1); numbers: minimum 0.

Properties come in the schema's order, optional ones may be left out; whitespace between tokens is
bounded, so a constrained reply always ends. Annotations (title, description, default, examples...)
are accepted and change nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .errors import SchemaError

MAX_SCHEMA_BYTES = 32 * 1024
MAX_DEPTH = 12  # nested schemas
MAX_ENUM = 256
MAX_PROPERTIES = 64
MAX_REPEAT = 100  # minItems / maxItems / minLength / maxLength honoured up to this; larger bounds are refused
MAX_RANGE = 256  # integer values enumerated for minimum..maximum
MAX_GRAMMAR_CHARS = 64 * 1024
WHITESPACE = 24  # most whitespace characters between two JSON tokens

ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
KEYWORDS = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "minItems", "maxItems", "uniqueItems"},
    "string": {"minLength", "maxLength"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"minimum"},
    "boolean": set(),
    "null": set(),
}
GENERAL = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}
ALL_KNOWN = ANNOTATIONS | GENERAL | set().union(*KEYWORDS.values())

_BASE_RULES = {
    "ws": f"[ \\t\\n]{{0,{WHITESPACE}}}",
    "char": '[^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "plain-char": '[^"\\\\\\x00-\\x1f] | "\\\\" ["\\\\/bfnrt]',  # one character whatever the decoder: lengths hold
    "string": '"\\"" char* "\\""',
    "integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": 'integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "member": 'string ws ":" ws value',
    "object": '"{" ws (member ws ("," ws member ws)*)? "}"',
    "array": '"[" ws (value ws ("," ws value ws)*)? "]"',
}
_RULE_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal (UTF-8; quotes, backslashes, control characters and line separators
    escaped, so a literal never spans lines)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0:
            out.append(f"\\x{ord(ch):02x}")
        elif ch in "\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def json_literal(value: Any) -> str:
    """The compact JSON text of `value`, as a GBNF literal; strings with lone surrogates stay escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    return gbnf_literal(text)


class _Builder:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.by_body: dict[str, str] = {}
        self.resolving: list[str] = []

    def rule(self, body: str, hint: str) -> str:
        """A named rule for `body` (one per distinct body)."""
        if body in self.by_body:
            return self.by_body[body]
        name = f"{hint}-{len(self.rules)}"
        self.rules[name] = body
        self.by_body[body] = name
        return name

    def value(self, schema: Any, path: str, depth: int) -> str:
        """A rule name matching exactly the JSON values `schema` accepts (within the subset)."""
        if depth > MAX_DEPTH:
            raise SchemaError(f"{path}: nested more than {MAX_DEPTH} levels deep")
        if schema is True or schema == {}:
            return "value"
        if schema is False:
            raise SchemaError(f"{path}: the schema `false` accepts no value")
        if not isinstance(schema, Mapping):
            raise SchemaError(f"{path}: a schema must be an object (or true)")
        unknown = sorted(set(schema) - ALL_KNOWN)
        if unknown:
            supported = ", ".join(sorted(ALL_KNOWN - ANNOTATIONS))
            raise SchemaError(f"{path}: unsupported JSON-schema keyword {unknown[0]!r} (supported: {supported})")
        if "$ref" in schema:
            return self._ref(schema, path, depth)
        if "allOf" in schema:
            return self._all_of(schema, path, depth)
        if "anyOf" in schema or "oneOf" in schema:
            return self._any_of(schema, path, depth)
        if "const" in schema or "enum" in schema:
            return self._enum(schema, path)
        types = self._types(schema, path)
        alternatives = [self._typed(kind, schema, path, depth) for kind in types]
        return alternatives[0] if len(alternatives) == 1 else self.rule(" | ".join(alternatives), "alt")

    # -- general keywords ------------------------------------------------------------------------

    def _only(self, schema: Mapping[str, Any], allowed: set[str], path: str, why: str) -> None:
        extra = sorted(set(schema) - allowed - ANNOTATIONS)
        if extra:
            raise SchemaError(f"{path}: {extra[0]!r} beside {why} is not supported")

    def _ref(self, schema: Mapping[str, Any], path: str, depth: int) -> str:
        self._only(schema, {"$ref"}, path, "$ref")
        ref = schema["$ref"]
        match = re.fullmatch(r"#/(\$defs|definitions)/([^/]+)", ref) if isinstance(ref, str) else None
        if not match:
            raise SchemaError(f"{path}.$ref: only local references such as '#/$defs/Name' are supported, not {ref!r}")
        table = self.root.get(match[1])
        if not isinstance(table, Mapping) or match[2] not in table:
            raise SchemaError(f"{path}.$ref: {ref!r} is not defined in the schema")
        if ref in self.resolving:
            raise SchemaError(f"{path}.$ref: recursive reference {ref!r} is not supported")
        self.resolving.append(ref)
        try:
            return self.value(table[match[2]], f"{match[1]}.{match[2]}", depth + 1)
        finally:
            self.resolving.pop()

    def _all_of(self, schema: Mapping[str, Any], path: str, depth: int) -> str:
        self._only(schema, {"allOf"}, path, "allOf")
        parts = schema["allOf"]
        if not isinstance(parts, list) or len(parts) != 1:
            raise SchemaError(f"{path}.allOf: only an allOf of exactly one schema is supported")
        return self.value(parts[0], f"{path}.allOf.0", depth + 1)

    def _any_of(self, schema: Mapping[str, Any], path: str, depth: int) -> str:
        keyword = "anyOf" if "anyOf" in schema else "oneOf"
        self._only(schema, {keyword}, path, keyword)
        branches = schema[keyword]
        if not isinstance(branches, list) or not branches:
            raise SchemaError(f"{path}.{keyword}: must be a non-empty list of schemas")
        if keyword == "oneOf":
            kinds = [self._branch_types(b, f"{path}.oneOf.{i}") for i, b in enumerate(branches)]
            seen: set[str] = set()
            for kind in kinds:
                if kind & seen or "number" in kind and "integer" in seen or "integer" in kind and "number" in seen:
                    raise SchemaError(
                        f"{path}.oneOf: branches must have different types (a grammar cannot keep them exclusive)"
                    )
                seen |= kind
        names = [self.value(b, f"{path}.{keyword}.{i}", depth + 1) for i, b in enumerate(branches)]
        unique = list(dict.fromkeys(names))
        return unique[0] if len(unique) == 1 else self.rule(" | ".join(unique), "any")

    def _branch_types(self, schema: Any, path: str) -> set[str]:
        if not isinstance(schema, Mapping) or "type" not in schema:
            raise SchemaError(f"{path}: each oneOf branch needs its own 'type'")
        return set(self._types(schema, path))

    def _enum(self, schema: Mapping[str, Any], path: str) -> str:
        values = [schema["const"]] if "const" in schema else schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{path}.enum: must be a non-empty list")
        if len(values) > MAX_ENUM:
            raise SchemaError(f"{path}.enum: at most {MAX_ENUM} values are supported")
        if "type" in schema:
            types = set(self._types(schema, path))
            for value in values:
                if _json_type(value) not in types and not (_json_type(value) == "integer" and "number" in types):
                    raise SchemaError(f"{path}.enum: value {value!r} is not of type {sorted(types)}")
        literals = list(dict.fromkeys(json_literal(value) for value in values))
        return self.rule(" | ".join(literals), "enum")

    def _types(self, schema: Mapping[str, Any], path: str) -> list[str]:
        kind = schema.get("type")
        if kind is None:
            present = [name for name, words in KEYWORDS.items() if words & set(schema)]
            if not present:
                return ["object", "array", "string", "number", "boolean", "null"]
            kind = present[:1]
        kinds = kind if isinstance(kind, list) else [kind]
        for item in kinds:
            if item not in KEYWORDS:
                raise SchemaError(f"{path}.type: unknown type {item!r}")
        if not kinds or len(set(kinds)) != len(kinds):
            raise SchemaError(f"{path}.type: must name distinct types")
        for word in set(schema) - ANNOTATIONS - GENERAL:
            if not any(word in KEYWORDS[item] for item in kinds):
                raise SchemaError(
                    f"{path}: keyword {word!r} does not apply to type {'/'.join(kinds)} (or is not supported for it)"
                )
        return kinds

    # -- one type ----------------------------------------------------------------------------------

    def _typed(self, kind: str, schema: Mapping[str, Any], path: str, depth: int) -> str:
        if kind == "object":
            return self._object(schema, path, depth)
        if kind == "array":
            return self._array(schema, path, depth)
        if kind == "string":
            return self._string(schema, path)
        if kind == "integer":
            return self._integer(schema, path)
        if kind == "number":
            minimum = schema.get("minimum")
            if minimum is None:
                return "number"
            if minimum != 0 or isinstance(minimum, bool):
                raise SchemaError(f"{path}.minimum: a number's minimum must be 0 (other bounds are not supported)")
            return self.rule('("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?', "non-negative")
        return kind

    def _object(self, schema: Mapping[str, Any], path: str, depth: int) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            raise SchemaError(f"{path}: properties must be an object and required a list")
        if len(properties) > MAX_PROPERTIES:
            raise SchemaError(f"{path}.properties: at most {MAX_PROPERTIES} properties are supported")
        missing = [name for name in required if name not in properties]
        if missing:
            raise SchemaError(
                f"{path}.required: {missing[0]!r} is not among the properties (only listed properties are generated)"
            )
        if not properties:
            if extra is True or extra == {}:
                return "object"
            if extra is False:
                return self.rule('"{" ws "}"', "empty")
            value = self.value(extra, f"{path}.additionalProperties", depth + 1)
            member = self.rule(f'string ws ":" ws {value}', "member")
            return self.rule(f'"{{" ws ({member} ws ("," ws {member} ws)*)? "}}"', "map")
        if extra not in (True, False) and extra != {}:
            raise SchemaError(f"{path}.additionalProperties: a schema beside listed properties is not supported")
        members = []
        for name, sub in properties.items():
            value = self.value(sub, f"{path}.properties.{name}", depth + 1)
            members.append((self.rule(f'{json_literal(name)} ws ":" ws {value} ws', "prop"), name in required))
        first: str | None = None
        rest: str | None = None
        # rest: what may follow once a property was written; first: what comes before any was.
        for index, (member, needed) in reversed(list(enumerate(members))):
            after = f"{member} {rest}" if rest else member
            if needed:
                first = self.rule(after, "first")
            elif first:
                first = self.rule(f"{after} | {first}", "first")
            else:
                first = self.rule(f"({after})?", "first")
            if index:
                step = f'"," ws {after}'
                rest = self.rule(step if needed else (f"{step} | {rest}" if rest else f"({step})?"), "rest")
        return self.rule(f'"{{" ws {first} "}}"', "object")

    def _array(self, schema: Mapping[str, Any], path: str, depth: int) -> str:
        if schema.get("uniqueItems"):
            raise SchemaError(f"{path}.uniqueItems: not supported (a grammar cannot keep items distinct)")
        item = self.value(schema.get("items", True), f"{path}.items", depth + 1)
        low, high = self._bounds(schema, "minItems", "maxItems", path)
        if high == 0:
            return self.rule('"[" ws "]"', "empty-array")
        element = self.rule(f"{item} ws", "item")
        more = self.rule(f'"," ws {element}', "more")
        if low == 0:
            tail = "*" if high is None else f"{{0,{high - 1}}}"
            return self.rule(f'"[" ws ({element} {more}{tail})? "]"', "array")
        tail = f"{{{low - 1},}}" if high is None else f"{{{low - 1},{high - 1}}}"
        return self.rule(f'"[" ws {element} {more}{tail} "]"', "array")

    def _string(self, schema: Mapping[str, Any], path: str) -> str:
        low, high = self._bounds(schema, "minLength", "maxLength", path)
        if low == 0 and high is None:
            return "string"
        count = f"{{{low},}}" if high is None else f"{{{low},{high}}}"
        return self.rule(f'"\\"" plain-char{count} "\\""', "string")

    def _integer(self, schema: Mapping[str, Any], path: str) -> str:
        low, high = schema.get("minimum"), schema.get("maximum")
        for word in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            value = schema.get(word)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value)
            ):
                raise SchemaError(f"{path}.{word}: must be a whole number")
        if schema.get("exclusiveMinimum") is not None:
            low = max(low if low is not None else -(10**18), int(schema["exclusiveMinimum"]) + 1)
        if schema.get("exclusiveMaximum") is not None:
            high = min(high if high is not None else 10**18, int(schema["exclusiveMaximum"]) - 1)
        if low is None and high is None:
            return "integer"
        if low is not None and high is not None:
            low, high = int(low), int(high)
            if high < low:
                raise SchemaError(f"{path}: minimum {low} is above maximum {high}")
            if high - low + 1 <= MAX_RANGE:
                return self.rule(" | ".join(f'"{n}"' for n in range(low, high + 1)), "range")
        if high is None and low in (0, 1):
            return self.rule(('"0" | ' if low == 0 else "") + "[1-9] [0-9]{0,15}", "natural")
        raise SchemaError(
            f"{path}: integer bounds are supported as a range of at most {MAX_RANGE} values or a minimum of 0 or 1"
        )

    def _bounds(self, schema: Mapping[str, Any], low_word: str, high_word: str, path: str) -> tuple[int, int | None]:
        low, high = schema.get(low_word, 0), schema.get(high_word)
        for word, value in ((low_word, low), (high_word, high)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise SchemaError(f"{path}.{word}: must be a non-negative integer")
            if value is not None and value > MAX_REPEAT:
                raise SchemaError(f"{path}.{word}: at most {MAX_REPEAT} is supported")
        if high is not None and high < low:
            raise SchemaError(f"{path}: {low_word} {low} is above {high_word} {high}")
        return low, high

    def grammar(self, root_rule: str) -> str:
        """The whole grammar: root, the schema's rules, and the base rules they refer to."""
        needed: set[str] = set()
        todo = [root_rule, *self.rules.values()]
        while todo:
            for ref in _references(todo.pop()):
                if ref in _BASE_RULES and ref not in needed:
                    needed.add(ref)
                    todo.append(_BASE_RULES[ref])
        lines = [f"root ::= {root_rule}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        lines += [f"{name} ::= {_BASE_RULES[name]}" for name in _BASE_RULES if name in needed]
        return "\n".join(lines) + "\n"


def _references(body: str) -> list[str]:
    """The rule names a rule body refers to (literals and character classes left out)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', " ", body)
    bare = re.sub(r"\[(?:[^\]\\]|\\.)*\]", " ", bare)
    return re.findall(r"[a-z][a-z0-9-]*", bare)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def schema_grammar(schema: Any) -> str:
    """The GBNF grammar for `schema`, or SchemaError naming the first thing that is not supported."""
    try:
        size = len(json.dumps(schema, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError) as error:
        raise SchemaError(f"schema: not JSON: {error}") from None
    if size > MAX_SCHEMA_BYTES:
        raise SchemaError(f"schema: {size} bytes, at most {MAX_SCHEMA_BYTES} are supported")
    builder = _Builder(schema if isinstance(schema, Mapping) else {})
    root = builder.value(schema, "schema", 0)
    grammar = builder.grammar(root)
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise SchemaError(
            f"schema: its grammar would be {len(grammar)} characters, at most {MAX_GRAMMAR_CHARS} are supported"
        )
    check_rules(grammar)
    return grammar


def check_rules(grammar: str) -> None:
    """Raise SchemaError unless every rule is defined once, with a valid name, and every reference resolves."""
    defined: dict[str, str] = {}
    for line in grammar.rstrip("\n").split("\n"):
        name, sep, body = line.partition(" ::= ")
        if not sep or not _RULE_NAME.match(name) or name in defined:
            raise SchemaError(f"internal: malformed grammar line {line[:60]!r}")
        defined[name] = body
    if "root" not in defined:
        raise SchemaError("internal: grammar has no root rule")
    for name, body in defined.items():
        for ref in _references(body):
            if ref not in defined:
                raise SchemaError(f"internal: rule {name} refers to undefined {ref!r}")


def schema_instruction(schema: Any) -> str:
    """What the prompt tells the model, so that what it wants to write is what the grammar allows."""
    if schema == {"type": "object"}:
        return "Answer with one JSON object only, no other text."
    shown = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    return f"Answer with one JSON value only, no other text, that matches this JSON schema: {shown}"
