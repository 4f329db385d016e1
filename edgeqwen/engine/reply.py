"""One reply's bookkeeping, the same whether it is decoded alone (Engine.stream) or in a chat slot
(Streams.step): its token budget, the UTF-8 decoding of its pieces, and why it stopped."""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Generation:
    """What one reply produced: tokens, and why it stopped ("stop": end of turn, "length": the
    max_tokens or context budget ran out; None while it runs or if it was closed)."""

    prompt_tokens: int = 0
    tokens: int = 0
    finish_reason: str | None = None


class Reply:
    """Turns a reply's sampled tokens into text, one at a time, and notices when it ends."""

    def __init__(self, prompt_tokens: int, budget: int, piece: Callable[[int], bytes], end_of_turn: frozenset[int]) -> None:
        self.generation = Generation(prompt_tokens=prompt_tokens)
        self.budget = budget
        self._piece = piece
        self._end_of_turn = end_of_turn
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span tokens

    @property
    def done(self) -> bool:
        return self.generation.finish_reason is not None

    def take(self, token: int) -> str:
        """The text `token` adds (maybe empty: part of a character). An end-of-turn token ends the
        reply and adds none of its own; the budget's last token ends it after its text."""
        if token in self._end_of_turn:
            self.generation.finish_reason = "stop"
            return self._decoder.decode(b"", final=True)
        self.generation.tokens += 1
        text = self._decoder.decode(self._piece(token))
        if self.generation.tokens == self.budget:
            self.generation.finish_reason = "length"
            text += self._decoder.decode(b"", final=True)
        return text
