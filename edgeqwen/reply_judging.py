"""Whether a chat reply responds to the person, or restates what they said: the chat check's two rules.

A reply is a **response** when it addresses the person: it holds one of these markers (either
language's count, whatever the reply's language; language match is judged on its own):
- English: second person (you, your, yours, yourself, you're, you've, you'll, you'd); a question
  mark; thanks (thank, thanks); apology or sympathy (sorry, apologise/apologize, apologies);
  congratulations (congrat...); advice (try, consider, I recommend, I suggest, make sure, don't
  forget, how about, why not);
- Chinese: second person (你, 您); a question (？ ? 吗); thanks (谢谢, 感谢, 多谢); apology or
  sympathy (抱歉, 对不起, 不好意思, 遗憾); congratulations (恭喜, 祝贺); advice (建议, 试试, 不妨,
  记得, 别忘了, 可以考虑).

A reply is a **restatement** when most of its content comes from the input: more than half of its
content units occur in the input, and it has at least 3 of them. The units are, for a Chinese reply
(text.script_language), its Han characters without a short list of function characters and
pronouns (的 了 是 我 你 ...); for any other reply, its English words without stop words, compared by
a crude stem (a final -ing, -ed, -es, -s or -ly dropped from words of 5 letters or more, then a
final e from words of 4 or more). Each occurrence in the reply counts.

A refusal ("I'm sorry, but I can't assist with that.", "抱歉，我无法回答") is never a response, whatever
its markers: a reply that says it cannot help (can't/cannot/unable to assist or help with that; 无法
or 不能 followed by 帮助, 协助, 回答 or 提供).

The two are judged apart: a reply that thanks the person and then repeats their review is both.
"""

from __future__ import annotations

import re

from .text import HAN, script_language

_EN_MARKERS = {
    "second person": re.compile(r"\byou(?:r|rs|rself|'re|'ve|'ll|'d)?\b", re.I),
    "question": re.compile(r"[?？]"),
    "thanks": re.compile(r"\bthanks?\b", re.I),
    "apology": re.compile(r"\b(?:sorry|apologi[sz]e|apologies)\b", re.I),
    "congratulations": re.compile(r"\bcongrat", re.I),
    "advice": re.compile(
        r"\b(?:try|consider|I(?: would|'d)? (?:recommend|suggest)|make sure|don't forget|how about|why not)\b", re.I),
}
_ZH_MARKERS = {
    "second person": re.compile(r"[你您]"),
    "question": re.compile(r"[?？吗]"),
    "thanks": re.compile(r"谢谢|感谢|多谢"),
    "apology": re.compile(r"抱歉|对不起|不好意思|遗憾"),
    "congratulations": re.compile(r"恭喜|祝贺"),
    "advice": re.compile(r"建议|试试|不妨|记得|别忘了|可以考虑"),
}
MARKERS = {"en": _EN_MARKERS, "zh": _ZH_MARKERS}
_REFUSAL = re.compile(
    r"\b(?:can't|can not|cannot|unable to) (?:assist|help)(?: you)? with (?:that|this)"
    r"|(?:无法|不能)(?:帮助|协助|回答|提供)", re.I)

# Characters nearly every Chinese sentence has; they say nothing about where the content came from.
_HAN_FUNCTION = set("的了是在我你您他她它有和就不都也很这那"
                    "个一上着过们吧呢啊呀吗么得地")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_STOP_WORDS = set("""
a an the and or but so if then than that this these those there here it its it's is are was were be been being am
i me my mine we us our you your he him his she her they them their what which who whom whose when where why how
to of in on at by for with from about as into over after before up down out off again very too just also
not no nor only own same such can will would could should may might must do does did done have has had having
i'm i've i'd i'll we're they're he's she's that's what's don't didn't doesn't isn't wasn't aren't weren't
won't can't couldn't wouldn't shouldn't haven't hasn't hadn't let's all any both each few more most other some
even really still much many well
""".split())
_SUFFIXES = ("ing", "ed", "es", "s", "ly")
MIN_UNITS = 3  # shorter replies ("Thanks!") are never restatements


def response_markers(reply: str) -> list[str]:
    """The kinds of marker (second person, question, thanks, ...) the reply holds, in either language."""
    return sorted({name for markers in MARKERS.values() for name, pattern in markers.items() if pattern.search(reply)})


def refuses(reply: str) -> bool:
    """The reply says it cannot help (the rule above)."""
    return bool(_REFUSAL.search(reply.replace("\u2019", "'")))


def responds(reply: str) -> bool:
    """The reply addresses the person (the markers above) and is not a refusal."""
    return bool(response_markers(reply)) and not refuses(reply)


def content_units(text: str, chinese: bool) -> list[str]:
    """Han characters without function characters (chinese), else stemmed English words without stop words."""
    if chinese:
        return [ch for ch in HAN.findall(text) if ch not in _HAN_FUNCTION]
    return [_stem(word) for word in _WORD.findall(text.casefold().replace("\u2019", "'")) if word not in _STOP_WORDS]


def borrowed_share(prompt: str, reply: str) -> float | None:
    """The share of the reply's content units that occur in the prompt; None below MIN_UNITS units."""
    chinese = script_language(reply) == "zh"
    units = content_units(reply, chinese)
    if len(units) < MIN_UNITS:
        return None
    source = set(content_units(prompt, chinese))
    return sum(unit in source for unit in units) / len(units)


def restates(prompt: str, reply: str) -> bool:
    """Most of the reply's content comes from the prompt (the rule above)."""
    share = borrowed_share(prompt, reply)
    return share is not None and share > 0.5


def _stem(word: str) -> str:
    if len(word) >= 5:
        suffix = next((s for s in _SUFFIXES if word.endswith(s) and len(word) - len(s) >= 3), "")
        word = word[: len(word) - len(suffix)]
    return word[:-1] if len(word) >= 4 and word.endswith("e") else word
