"""One reply's bookkeeping, the same whether it is decoded alone (Engine.stream) or in a chat slot
(Streams.step): its token budget, the UTF-8 decoding of its pieces, its stop texts, each token's
log-probabilities, and why it stopped."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """One token of a reply with its log-probability under the model (before sampling settings and
    grammar), and the most likely tokens at its place with theirs."""

    token: str
    bytes: list[int]
    logprob: float
    top: list[TokenLogprob] = field(default_factory=list)

    def to_dict(self) -> dict:
        """OpenAI's shape: token, logprob, bytes, top_logprobs."""
        return {
            "token": self.token,
            "logprob": round(self.logprob, 6),
            "bytes": self.bytes,
            "top_logprobs": [{"token": t.token, "logprob": round(t.logprob, 6), "bytes": t.bytes} for t in self.top],
        }


@dataclass
class Generation:
    """What one reply produced: tokens, and why it stopped ("stop": end of turn or a stop text,
    "length": the max_tokens or context budget ran out; None while it runs or if it was closed)."""

    prompt_tokens: int = 0
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None  # with logprobs asked for: every token handed out so far
    resampled: int = 0  # tokens a grammar had to be applied to in full


class Reply:
    """Turns a reply's sampled tokens into text, one at a time, and notices when it ends.

    With stop texts, text that could be the start of one is held back until it is clearly not: a
    stop text is never handed out, and the reply ends before it."""

    def __init__(
        self,
        prompt_tokens: int,
        budget: int,
        piece: Callable[[int], bytes],
        end_of_turn: frozenset[int],
        stop: Sequence[str] = (),
        logprobs: bool = False,
    ) -> None:
        self.generation = Generation(prompt_tokens=prompt_tokens, logprobs=[] if logprobs else None)
        self.budget = budget
        self._piece = piece
        self._end_of_turn = end_of_turn
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span tokens
        self._stops = tuple(s for s in stop if s)
        self._held = ""  # text not handed out yet: it may begin a stop text
        self._pending: list[tuple[TokenLogprob | None, int]] = []  # entries of the held text, with their length
        self._released: list[TokenLogprob] = []

    @property
    def done(self) -> bool:
        return self.generation.finish_reason is not None

    def take(self, token: int, scores: tuple[float, list[tuple[int, float]]] | None = None) -> str:
        """The text `token` adds (maybe empty: part of a character, or held back). An end-of-turn token
        ends the reply and adds none of its own; the budget's last token, or a stop text, ends it."""
        generation = self.generation
        if token in self._end_of_turn:
            generation.finish_reason = "stop"
            return self._flush(self._decoder.decode(b"", final=True))
        generation.tokens += 1
        text = self._decoder.decode(self._piece(token))
        if generation.tokens == self.budget:
            generation.finish_reason = "length"
            text += self._decoder.decode(b"", final=True)
        entry = self._entry(token, scores) if scores is not None and generation.logprobs is not None else None
        if not self._stops:
            self._release(entry)
            return text
        self._pending.append((entry, len(text)))
        self._held += text
        cut = min((i for i in (self._held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            generation.finish_reason = "stop"
            out = self._emit(cut)
            self._held, self._pending = "", []
            return out
        if self.done:
            return self._flush("")
        return self._emit(len(self._held) - self._partial_stop())

    def drain(self) -> list[TokenLogprob]:
        """The log-probabilities of the tokens whose text was handed out since the last drain."""
        released, self._released = self._released, []
        return released

    # -- internals ------------------------------------------------------------------------------

    def _partial_stop(self) -> int:
        """Length of the longest end of the held text that begins a stop text."""
        held = self._held
        for length in range(min(len(held), max(map(len, self._stops)) - 1), 0, -1):
            if any(stop.startswith(held[-length:]) for stop in self._stops):
                return length
        return 0

    def _emit(self, count: int) -> str:
        """Hand out the first `count` characters of the held text, and the entries of their tokens."""
        out, self._held = self._held[:count], self._held[count:]
        while self._pending:
            entry, length = self._pending[0]
            if length <= count:
                self._pending.pop(0)
                self._release(entry)
                count -= length
            elif count > 0:  # a token only partly handed out: its entry goes now, its rest stays held
                self._release(entry)
                self._pending[0] = (None, length - count)
                break
            else:
                break
        return out

    def _flush(self, text: str) -> str:
        out = self._held + text
        for entry, _ in self._pending:
            self._release(entry)
        self._held, self._pending = "", []
        return out

    def _release(self, entry: TokenLogprob | None) -> None:
        if entry is not None:
            self._released.append(entry)
            self.generation.logprobs.append(entry)

    def _entry(self, token: int, scores: tuple[float, list[tuple[int, float]]]) -> TokenLogprob:
        logprob, top = scores
        return TokenLogprob(*self._text(token), logprob, [TokenLogprob(*self._text(t), lp) for t, lp in top])

    def _text(self, token: int) -> tuple[str, list[int]]:
        raw = self._piece(token)
        return raw.decode("utf-8", "replace"), list(raw)
