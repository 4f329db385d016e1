"""A small GBNF reader for the tests: parses the grammars json_schema.py writes and draws random sentences
from them, so a test can check that every sentence a grammar allows parses and validates (no model needed).

It knows the subset json_schema.py uses: rules, alternatives, sequences, groups, string literals,
character classes (with ranges, escapes and negation), and the quantifiers ? * + {m} {m,} {m,n}.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# ("lit", text) | ("class", negated, ranges) | ("ref", name) | ("alt", [seq...]) | ("seq", [item...])
# | ("rep", node, lo, hi)
Node = tuple

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-", "^": "^", "/": "/"}
# Characters drawn for a negated class: ASCII, accents, CJK, an emoji, and markup-like text.
SAMPLE_CHARS = list("aZ0 -_.,:;!?<>|{}[]é中文😀\u2028") + ["\x7f"]


@dataclass
class Grammar:
    rules: dict[str, Node]

    def sample(self, rng: random.Random, start: str = "root", budget: int = 40) -> str:
        """One random sentence; past `budget` nested rules it takes the shortest ways out."""
        self._costs = self._costs if hasattr(self, "_costs") else _costs(self.rules)
        out: list[str] = []
        self._emit(self.rules[start], rng, out, 0, budget)
        return "".join(out)

    def _emit(self, node: Node, rng: random.Random, out: list[str], depth: int, budget: int) -> None:
        kind = node[0]
        if kind == "lit":
            out.append(node[1])
        elif kind == "class":
            out.append(_pick_char(node, rng))
        elif kind == "ref":
            self._emit(self.rules[node[1]], rng, out, depth + 1, budget)
        elif kind == "seq":
            for item in node[1]:
                self._emit(item, rng, out, depth, budget)
        elif kind == "alt":
            options = node[1]
            if depth > budget:
                options = [min(options, key=lambda seq: _cost(seq, self._costs))]
            self._emit(rng.choice(options), rng, out, depth, budget)
        elif kind == "rep":
            _, inner, lo, hi = node
            top = lo if depth > budget else min(hi if hi is not None else lo + 3, lo + 3)
            for _ in range(rng.randint(lo, max(lo, top))):
                self._emit(inner, rng, out, depth, budget)


def parse(text: str) -> Grammar:
    rules: dict[str, Node] = {}
    for line in text.strip("\n").split("\n"):
        name, _, body = line.partition(" ::= ")
        node, rest = _alternatives(body.strip(), 0)
        assert rest == len(body.strip()), f"unparsed text in {line!r}"
        rules[name] = node
    return Grammar(rules)


def _alternatives(text: str, i: int) -> tuple[Node, int]:
    seqs = []
    seq, i = _sequence(text, i)
    seqs.append(seq)
    while i < len(text) and text[i] == "|":
        seq, i = _sequence(text, _skip(text, i + 1))
        seqs.append(seq)
    return ("alt", seqs), i


def _sequence(text: str, i: int) -> tuple[Node, int]:
    items = []
    i = _skip(text, i)
    while i < len(text) and text[i] not in "|)":
        atom, i = _atom(text, i)
        atom, i = _quantifier(text, i, atom)
        items.append(atom)
        i = _skip(text, i)
    return ("seq", items), i


def _atom(text: str, i: int) -> tuple[Node, int]:
    if text[i] == '"':
        j, chars = i + 1, []
        while text[j] != '"':
            if text[j] == "\\":
                chars.append(_escape(text, j))
                j += _escape_length(text, j)
            else:
                chars.append(text[j])
                j += 1
        return ("lit", "".join(chars)), j + 1
    if text[i] == "[":
        j, negated, ranges = i + 1, False, []
        if text[j] == "^":
            negated, j = True, j + 1
        while text[j] != "]":
            low, j = _class_char(text, j)
            high = low
            if text[j] == "-" and text[j + 1] != "]":
                high, j = _class_char(text, j + 1)
            ranges.append((low, high))
        return ("class", negated, ranges), j + 1
    if text[i] == "(":
        node, j = _alternatives(text, _skip(text, i + 1))
        assert text[j] == ")"
        return node, j + 1
    match = re.compile(r"[a-z][a-z0-9-]*").match(text, i)
    assert match, f"unexpected {text[i : i + 10]!r}"
    return ("ref", match[0]), match.end()


def _quantifier(text: str, i: int, atom: Node) -> tuple[Node, int]:
    if i < len(text) and text[i] in "?*+":
        lo, hi = {"?": (0, 1), "*": (0, None), "+": (1, None)}[text[i]]
        return ("rep", atom, lo, hi), i + 1
    if i < len(text) and text[i] == "{":
        j = text.index("}", i)
        low, comma, high = text[i + 1 : j].partition(",")
        lo = int(low)
        hi = lo if not comma else (int(high) if high else None)
        return ("rep", atom, lo, hi), j + 1
    return atom, i


def _class_char(text: str, j: int) -> tuple[str, int]:
    if text[j] == "\\":
        return _escape(text, j), j + _escape_length(text, j)
    return text[j], j + 1


def _escape(text: str, j: int) -> str:
    if text[j + 1] in "xu":
        return chr(int(text[j + 2 : j + _escape_length(text, j)], 16))
    return _ESCAPES[text[j + 1]]


def _escape_length(text: str, j: int) -> int:
    return {"x": 4, "u": 6}.get(text[j + 1], 2)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] == " ":
        i += 1
    return i


def _pick_char(node: Node, rng: random.Random) -> str:
    _, negated, ranges = node
    inside = lambda ch: any(low <= ch <= high for low, high in ranges)  # noqa: E731
    if negated:
        return rng.choice([ch for ch in SAMPLE_CHARS if not inside(ch)])
    low, high = rng.choice(ranges)
    return chr(rng.randint(ord(low), ord(high)))


def _costs(rules: dict[str, Node]) -> dict[str, float]:
    """How many rules deep each rule must go at least before it ends (fixed point)."""
    costs = {name: float("inf") for name in rules}
    for _ in range(len(rules) + 1):
        for name, node in rules.items():
            costs[name] = min(costs[name], _cost(node, costs))
    return costs


def _cost(node: Node, costs: dict[str, float]) -> float:
    kind = node[0]
    if kind in ("lit", "class"):
        return 0
    if kind == "ref":
        return 1 + costs[node[1]]
    if kind == "seq":
        return sum(_cost(item, costs) for item in node[1])
    if kind == "alt":
        return min(_cost(seq, costs) for seq in node[1])
    return 0 if node[2] == 0 else node[2] * _cost(node[1], costs)
