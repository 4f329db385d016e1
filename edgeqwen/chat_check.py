"""`edgeqwen chat-check`: whether chat replies come in the prompt's language, without parroting, loops
or empty replies, remembering what the user said, responding to the person rather than restating
them; with first-token latency and decode speed.

Data: JSON Lines with `lang` (en or zh), `turns` (one or more user messages, sent in order in one
conversation), and optional `id`, `kind` and `remember` (a string the last reply must contain).
Every reply is judged by these rules:
- language, by script (text.script_language): a Han character counts as three Latin letters, so a
  reply is Chinese when 3 x Han >= letters, English otherwise; a reply with neither is in no language;
- parroting: the reply equals its prompt, or is mostly a copy of it: one piece of 80 % or more of
  the prompt making up half or more of the reply (compared without case, spaces or punctuation;
  prompts under 8 characters must match exactly). An answer that restates the question and goes on
  is not parroting;
- a loop: a piece of 2 or more characters repeated 4 times back to back, or one of 10 or more
  repeated 3 times;
- empty: nothing but spaces; cut: generation stopped at max_tokens, not at the end of the turn;
- leak: the reply repeats the role's own instructions (its system prompts and the guidance's system
  texts and templates): it shares a piece with one of them, compared as parroting is, of 8 or more Han
  characters or 24 or more letters (a Han character counts as three letters);
- response and restatement (reply_judging.py): the reply addresses the person (second person, a
  question, thanks, apology, congratulations, advice), or most of its content words (English) or Han
  characters (Chinese) come from the prompt. Both are reported per language and per kind of prompt.

Each run is a sampling mode, without the label or with it: a labelled run answers every turn as
`edgeqwen run --task both` does (EdgeQwen.run: the sentiment role's classification goes into the chat
turn), an unlabelled one as `--task chat` does.
"""

from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from .errors import InputError
from .evaluate import jsonl_objects
from .reply_judging import responds, restates
from .roles import Role
from .text import HAN, script_language

LANGS = ("en", "zh")
MODES = ("greedy", "sampled")  # greedy: temperature 0; sampled: the role's own sampling
LABELS = ("off", "on")  # off: a chat turn (--task chat); on: the sentiment label goes into it (--task both)
RESPONSE_KINDS = ("review", "statement")  # prompts whose replies must respond, not inform
FAILED_WHEN_TRUE = ("parrot", "restatement", "loop", "empty", "cut", "leak")
CHECKS = ("in_language", "parrot", "loop", "empty", "cut", "leak", "remembered", "response", "restatement")
# the report's share columns, in order, with their widths
_COLUMNS = (("in_language", 8), ("parrot", 7), ("loop", 6), ("empty", 6), ("cut", 6), ("leak", 6), ("remembered", 7),
            ("response", 8), ("restatement", 8))
LEAK_WEIGHT = 24  # letters; a Han character weighs 3
_SHORT_LOOP = re.compile(r"(.{2,40}?)(?:\s*\1){3,}", re.S)
_LONG_LOOP = re.compile(r"(.{10,200}?)(?:\s*\1){2,}", re.S)


@dataclass(frozen=True)
class ChatPrompt:
    id: str
    lang: str
    kind: str
    turns: tuple[str, ...]
    remember: str | None
    where: str  # file:line


@dataclass
class Reply:
    prompt: ChatPrompt
    turn: int
    text: str
    finish_reason: str | None
    first_token_ms: float
    tokens: int
    seconds: float
    label: str | None = None  # the sentiment label the turn was given, in a labelled run
    checks: dict[str, bool] = field(default_factory=dict)


def parrots(prompt: str, reply: str) -> bool:
    """The reply equals the prompt or holds most of it in one piece (the rule above)."""
    p, r = _letters(prompt), _letters(reply)
    if not p or not r:
        return False
    if len(p) < 8:
        return r == p
    match = SequenceMatcher(None, r, p, autojunk=False).find_longest_match(0, len(r), 0, len(p))
    return match.size >= 0.8 * len(p) and match.size >= 0.5 * len(r)


def leaks(reply: str, instructions: Sequence[str]) -> bool:
    """The reply repeats a piece of the role's instructions (the rule above)."""
    r = _letters(reply)
    for instruction in instructions:
        i = _letters(instruction)
        match = SequenceMatcher(None, r, i, autojunk=False).find_longest_match(0, len(r), 0, len(i))
        piece = r[match.a:match.a + match.size]
        if len(piece) + 2 * len(HAN.findall(piece)) >= LEAK_WEIGHT:
            return True
    return False


def instruction_texts(role: Role) -> list[str]:
    """What a generate role tells the model, as opposed to what it shows it (examples): system prompts, and
    each guidance entry's system texts and templates, without the placeholder for the message."""
    texts = [role.system, *role.system_by_language.values()]
    for entry in role.guidance:
        texts += [entry.system, *entry.system_by_language.values()]
        texts += [part for template in entry.template_by_language.values() for part in template.split("{text}")]
    return [text for text in texts if text.strip()]


def loops(reply: str) -> bool:
    """A piece of text repeated back to back (the rule above); pieces of digits or punctuation only do not count."""
    for pattern in (_SHORT_LOOP, _LONG_LOOP):
        for match in pattern.finditer(reply):
            unit = match.group(1)
            if sum(ch.isalpha() for ch in unit) >= 2:
                return True
    return False


def _letters(text: str) -> str:
    """Lower case, without spaces or punctuation: what parroting is judged on."""
    return "".join(ch for ch in text.casefold() if unicodedata.category(ch)[0] in "LN")


def read_prompts(
    paths: Sequence[str | Path], limit: int | None = None, kinds: Sequence[str] = ()
) -> list[ChatPrompt]:
    """Prompts from JSON Lines files (only those of `kinds`, if given); any problem is one line naming
    the file and line number."""
    rows = jsonl_objects(paths, "'lang' and 'turns' (a list of user messages)")
    prompts = [_prompt(row, where) for where, row in rows]
    if kinds:
        prompts = [prompt for prompt in prompts if prompt.kind in kinds]
    if not prompts:
        which = f" of kind {', '.join(kinds)}" if kinds else ""
        raise InputError(f"{', '.join(map(str, paths))}: no prompts{which}")
    return prompts[:limit] if limit else prompts


def _prompt(row: dict, where: str) -> ChatPrompt:
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
        raise InputError(f"{where}: field 'turns' must be a non-empty list of non-empty strings")
    if row.get("lang") not in LANGS:
        raise InputError(f"{where}: field 'lang' must be one of {', '.join(LANGS)}")
    remember = row.get("remember")
    if remember is not None and not (isinstance(remember, str) and remember.strip()):
        raise InputError(f"{where}: field 'remember' must be a non-empty string")
    return ChatPrompt(str(row.get("id", where)), row["lang"], str(row.get("kind", "")), tuple(turns), remember, where)


def judge(reply: Reply, instructions: Sequence[str] = ()) -> Reply:
    """Fill in the reply's checks; `instructions`: the role's (instruction_texts)."""
    text, prompt = reply.text, reply.prompt.turns[reply.turn]
    reply.checks = {
        "in_language": script_language(text) == reply.prompt.lang,
        "parrot": parrots(prompt, text),
        "loop": loops(text),
        "empty": not text.strip(),
        "cut": reply.finish_reason == "length",
        "leak": leaks(text, instructions),
        "response": responds(text),
        "restatement": restates(prompt, text),
    }
    if reply.prompt.remember is not None and reply.turn == len(reply.prompt.turns) - 1:
        reply.checks["remembered"] = reply.prompt.remember.casefold() in text.casefold()
    return reply


def summarize(replies: Sequence[Reply]) -> dict[str, Any]:
    """Shares of each check, first-token latency and decode speed, for one group of replies."""
    def share(name: str) -> float | None:
        judged = [r.checks[name] for r in replies if name in r.checks]
        return round(sum(judged) / len(judged), 4) if judged else None

    speeds = [(r.tokens - 1) / (r.seconds - r.first_token_ms / 1000)
              for r in replies if r.tokens > 1 and r.seconds > r.first_token_ms / 1000]
    return {
        "replies": len(replies),
        **{name: share(name) for name in CHECKS},
        "first_token_p50_ms": round(statistics.median(r.first_token_ms for r in replies), 1) if replies else None,
        "decode_tok_s_p50": round(statistics.median(speeds), 1) if speeds else None,
    }


def report(replies_by_run: dict[str, list[Reply]]) -> dict[str, Any]:
    """Per run (mode, with or without the label) and language, the summary; response and restatement
    per language and kind of prompt; each reply that failed a check, for reading."""
    table, by_kind, failures = {}, {}, []
    for run, replies in replies_by_run.items():
        table[run] = {lang: summarize([r for r in replies if r.prompt.lang == lang]) for lang in LANGS}
        table[run]["all"] = summarize(replies)
        by_kind[run] = {lang: _kind_shares([r for r in replies if r.prompt.lang == lang]) for lang in LANGS}
        for r in replies:
            bad = [name for name, ok in r.checks.items() if ok == (name in FAILED_WHEN_TRUE)]
            if r.prompt.kind not in RESPONSE_KINDS and "response" in bad:
                bad.remove("response")
            if bad:
                failures.append({"run": run, "id": r.prompt.id, "turn": r.turn, "failed": bad, "reply": r.text[:300]})
    replies = {run: [_record(r) for r in rs] for run, rs in replies_by_run.items()}
    return {"table": table, "by_kind": by_kind, "failures": failures, "replies": replies}


def _record(r: Reply) -> dict[str, Any]:
    return {"id": r.prompt.id, "lang": r.prompt.lang, "kind": r.prompt.kind, "turn": r.turn, "label": r.label,
            "reply": r.text, "finish_reason": r.finish_reason, "tokens": r.tokens, "first_token_ms": r.first_token_ms,
            "seconds": round(r.seconds, 3), "checks": r.checks}


def _kind_shares(replies: Sequence[Reply]) -> dict[str, dict[str, Any]]:
    """Response and restatement shares per kind of prompt, plus reviews and statements together."""
    groups: dict[str, list[Reply]] = {}
    for r in replies:
        groups.setdefault(r.prompt.kind or "-", []).append(r)
    groups["review+statement"] = [r for r in replies if r.prompt.kind in RESPONSE_KINDS]
    return {kind: {"replies": len(rs), "response": _share(rs, "response"), "restatement": _share(rs, "restatement")}
            for kind, rs in groups.items() if rs}


def _share(replies: Sequence[Reply], name: str) -> float:
    return round(sum(r.checks[name] for r in replies) / len(replies), 4)


def format_report(result: dict[str, Any]) -> str:
    header = (f"{'run':<14} {'lang':<4} {'replies':>7} {'in lang':>8} {'parrot':>7} {'loop':>6} {'empty':>6} "
              f"{'cut':>6} {'leak':>6} {'recall':>7} {'respond':>8} {'restate':>8} {'1st tok ms':>10} {'tok/s':>6}")
    lines = [header]
    for run, by_lang in result["table"].items():
        for lang, s in by_lang.items():
            shares = " ".join(f"{_pct(s[name]):>{width}}" for name, width in _COLUMNS)
            lines.append(f"{run:<14} {lang:<4} {s['replies']:>7} {shares} "
                         f"{s['first_token_p50_ms'] or '-':>10} {s['decode_tok_s_p50'] or '-':>6}")
    lines += ["", f"{'run':<14} {'lang':<4} {'kind':<17} {'replies':>7} {'respond':>8} {'restate':>8}"]
    for run, by_lang in result["by_kind"].items():
        for lang, kinds in by_lang.items():
            for kind, s in kinds.items():
                lines.append(f"{run:<14} {lang:<4} {kind:<17} {s['replies']:>7} "
                             f"{_pct(s['response']):>8} {_pct(s['restatement']):>8}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def run_name(mode: str, label: str) -> str:
    return mode if label == "off" else f"{mode}+label"


def run_chat_check(
    eq: Any, prompts: Sequence[ChatPrompt], *, modes: Sequence[str] = MODES, labels: Sequence[str] = LABELS,
    max_tokens: int | None = None, seed: int = 0, on_reply: Any = None,
) -> dict[str, Any]:
    """Each prompt's turns in a fresh conversation of the chat role, once per mode and label setting;
    the judged report.

    `max_tokens` caps every reply (default: the role's); the sampled mode uses `seed`, so runs repeat.
    A labelled run answers each turn as `edgeqwen run --task both` does, an unlabelled one as `--task chat`.
    """
    replies_by_run: dict[str, list[Reply]] = {}
    instructions = instruction_texts(eq.roles["chat"])
    for mode in modes:
        overrides: dict[str, Any] = {"temperature": 0.0} if mode == "greedy" else {"seed": seed}
        if max_tokens:
            overrides["max_tokens"] = max_tokens
        for label in labels:
            replies = []
            for prompt in prompts:
                conversation = eq.conversation(sampling=overrides)
                for turn, text in enumerate(prompt.turns):
                    result = eq.run(text, "both" if label == "on" else "chat", conversation=conversation)
                    timings = conversation.timings
                    label_given = result.sentiment.label if result.sentiment else None
                    replies.append(judge(Reply(
                        prompt, turn, result.reply or "", conversation.finish_reason, timings["first_token_ms"],
                        int(timings["reply_tokens"]), timings["total_ms"] / 1000, label_given), instructions))
                    if on_reply:
                        on_reply()
            replies_by_run[run_name(mode, label)] = replies
    return report(replies_by_run)
