"""Text rules shared by several modules: an input cleaned, error details folded onto one line, which script a
text is in, whether it asks something."""

from __future__ import annotations

import re

from .errors import InputError

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # a Han character
_LATIN = re.compile(r"[A-Za-z]")
# asks(): a text that ends like a question, or a clause that opens like one or like a request.
_ENDS_ASKING = re.compile(r"(?:[?？]|[吗呢么]|\bplease)[\s\W]*$", re.I)
_EN_ASKING = re.compile(
    r"(?:^|[.!?;:]\s)\W*(?:"
    r"(?:please|can you|could you|would you|will you|give me|tell me|show me|help me|let me know|write|suggest|"
    r"recommend|list|explain|describe|translate|summari[sz]e|i need|i want|i'd like|i would like|any (?:tips|ideas))\b"
    r"|(?:what|how|why|when|where|which|who)(?:'s|\s+(?:is|are|was|were|do|does|did|can|could|should|would|will|to"
    r"|much|many|long|often|old))\b"
    r"|(?:is|are|was|were|do|does|did|can|could|should|would|will|shall)\s+(?:i|you|we|it|he|she|they|there|this|that"
    r"|my|your|a|an|the)\b)", re.I)
_ZH_ASKING = re.compile(
    r"^\W*(?:请|帮我|帮忙|给我|告诉我|推荐|写|列|介绍|解释|翻译"
    r"|我想要|我想学|我需要|可不可以|能否)"
    r"|[。！？；，]\s*(?:请|帮我|给我|告诉我)"
    r"|怎么办|为什么|如何|怎么样|哪些|哪里|哪个|是不是|能不能")


def script_language(text: str) -> str | None:
    """"zh" or "en" by script: a Han character counts as three Latin letters (a Chinese word is one or
    two characters, an English word about five letters), so a text is Chinese when 3 x Han >= letters;
    None for a text with neither."""
    han, latin = len(HAN.findall(text)), len(_LATIN.findall(text))
    if han == latin == 0:
        return None
    return "zh" if 3 * han >= latin else "en"


def asks(text: str) -> bool:
    """Whether the text asks a question or makes a request: it ends with a question mark (or 吗, 呢,
    please), or a clause opens with a question word and a verb ("How do", "Is it", 为什么) or a request
    ("Tell me", "Write", 帮我, 推荐). A rule of thumb: a rhetorical question in a review counts too."""
    return bool(_ENDS_ASKING.search(text) or _EN_ASKING.search(text) or _ZH_ASKING.search(text))


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def clean_text(text: str) -> str:
    """The input as the model should see it; empty or whitespace-only input is refused."""
    if not isinstance(text, str):
        raise InputError("text must be a string")
    text = text.replace("\x00", "").strip()
    if not text:
        raise InputError("empty input: give some text to analyse")
    return text
