"""Text rules shared by several modules: an input cleaned, error details folded onto one line, which script a
text is in."""

from __future__ import annotations

import re

from .errors import InputError

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")


def script_language(text: str) -> str | None:
    """"zh" or "en" by script: a Han character counts as three Latin letters (a Chinese word is one or
    two characters, an English word about five letters), so a text is Chinese when 3 x Han >= letters;
    None for a text with neither."""
    han, latin = len(_HAN.findall(text)), len(_LATIN.findall(text))
    if han == latin == 0:
        return None
    return "zh" if 3 * han >= latin else "en"


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
