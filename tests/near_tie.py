"""Greedy replies compared across batch shapes: equal, or parted only where the model was torn.

llama.cpp's sums round differently when the same tokens are evaluated in another batch (other
sequences beside them, other cell positions), so a greedy choice between two almost equal logits can
flip. A leak or a wrong sequence would part replies at a token the model was sure of; a flip parts
them only at a near tie.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

NEAR_TIE = 0.5  # logits; a flip from rounding needs the two best within this


def first_difference(engine, prompt: Sequence[int], alone: str, other: str) -> tuple[str, float] | None:
    """None if the replies are equal; else the text both share and the alone path's margin between
    its two best next tokens where they part."""
    if alone == other:
        return None
    shared = len(os.path.commonprefix([alone, other]))
    context: list[int] = []
    for token in engine.tokenize(alone):
        if not alone[:shared].startswith(engine.detokenize(context + [token]).rstrip("\ufffd")):
            break  # this token reaches past the shared text
        context.append(token)
    logits = engine.next_token_logits(list(prompt) + context)
    best, second = np.sort(logits)[-2:][::-1]
    return alone[:shared], float(best - second)


def assert_same_or_near_tie(engine, prompt: Sequence[int], alone: str, other: str) -> None:
    difference = first_difference(engine, prompt, alone, other)
    if difference is not None:
        shared, margin = difference
        assert margin < NEAR_TIE, (f"replies part after {shared!r} where the model was sure (margin {margin:.2f}): "
                                   f"{alone!r} / {other!r}")
