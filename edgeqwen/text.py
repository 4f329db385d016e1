"""Text for one-line messages: any error detail folded onto one short line."""

from __future__ import annotations


def one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
