"""GBNF grammars for label sets: built from labels, and checked in Python before llama.cpp sees them.

llama.cpp kills the whole process on a malformed grammar (SIGSEGV) and on a grammar that can emit
the end-of-sequence token (abort), so nothing reaches it that has not passed `check_grammar`.
Only grammars of the shape this module builds are accepted: alternatives of quoted literals.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import GrammarError

# Chat-template control tokens look like <|im_end|>; a literal containing one could emit it.
CONTROL_TOKEN_PATTERN = re.compile(r"<\|[^|<>]*\|>")
MAX_LABEL_CHARS = 64

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_RULE = re.compile(r'^root ::= ("(?:[^"\\\x00-\x1f]|\\["\\nrt])+")(?: \| ("(?:[^"\\\x00-\x1f]|\\["\\nrt])+"))*$')
_LITERAL = re.compile(r'"((?:[^"\\\x00-\x1f]|\\["\\nrt])+)"')


def label_problem(label: object) -> str | None:
    """Why `label` cannot be a grammar literal, or None when it can."""
    if not isinstance(label, str):
        return "must be a string"
    if not label or label != label.strip():
        return "must be non-empty without leading or trailing whitespace"
    if len(label) > MAX_LABEL_CHARS:
        return f"must be at most {MAX_LABEL_CHARS} characters"
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in label):
        return "must not contain control characters"
    if any(0xD800 <= ord(ch) < 0xE000 for ch in label):  # YAML's "\ud800" escape can make one; llama.cpp needs UTF-8
        return "must not contain lone surrogates (not valid UTF-8)"
    if CONTROL_TOKEN_PATTERN.search(label) or "<|" in label or "|>" in label:
        return "must not contain chat-template control tokens such as <|im_end|>"
    return None


def _quote(literal: str) -> str:
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in literal) + '"'


def _unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), quoted)


def label_grammar(labels: Sequence[str]) -> str:
    """A one-rule grammar that accepts exactly one of `labels`, checked before it is returned."""
    grammar = "root ::= " + " | ".join(_quote(label) for label in labels)
    check_grammar(grammar, labels)
    return grammar


def grammar_literals(grammar: str) -> list[str]:
    """The literals of a grammar built by `label_grammar`, unescaped."""
    return [_unquote(body) for body in _LITERAL.findall(grammar)]


def check_grammar(grammar: str, expected_labels: Sequence[str] | None = None) -> None:
    """Raise GrammarError unless `grammar` is a well-formed label grammar that cannot emit a control token."""
    if not _RULE.match(grammar):
        raise GrammarError("grammar rejected: only `root ::= \"a\" | \"b\"` label grammars are allowed")
    literals = grammar_literals(grammar)
    for literal in literals:
        problem = label_problem(literal)
        if problem:
            raise GrammarError(f"grammar rejected: literal {literal!r} {problem}")
    if len(set(literals)) != len(literals):
        raise GrammarError("grammar rejected: duplicate literals")
    if expected_labels is not None and list(expected_labels) != literals:
        raise GrammarError("grammar rejected: literals differ from the role's labels")
