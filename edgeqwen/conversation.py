"""Generate roles: a multi-turn conversation whose reply streams, its history trimmed to fit n_ctx."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from .engine import Engine, SamplingParams
from .prompt_fit import clean_text, fit_prompt, fixed_prefix
from .roles import Message, Role
from .text import script_language


class Conversation:
    """A multi-turn chat with one generate role; history is trimmed to fit the context window."""

    def __init__(self, engine: Engine, role: Role, history: Sequence[Message] = ()) -> None:
        role.require_kind("generate")
        self.engine = engine
        self.role = role
        self.history: list[Message] = list(history)
        self._prefixes: dict[str | None, list[int]] = {}  # by the language of the message (roles.Role.system_for)
        self.last_truncated = False
        self.timings: dict[str, float] = {}  # of the last reply: total_ms, first_token_ms, prompt_tokens, reply_tokens
        self.finish_reason: str | None = None  # of the last reply: "stop" (end of turn), "length" (max_tokens or n_ctx), None (interrupted)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(**self.role.sampling.model_dump())

    def stream(self, text: str) -> Iterator[str]:
        """Yield the reply as it is generated; the turn joins the history even if interrupted."""
        text = clean_text(text)
        started = time.perf_counter()
        prompt = fit_prompt(self.engine, self.role, text, self.history, reserve=self.sampling.max_tokens, prefix=self._prefix(text))
        self.history, self.last_truncated = prompt.history, prompt.truncated
        pieces: list[str] = []
        first_token_at = None
        try:
            for piece in self.engine.stream(prompt.tokens, self.sampling, keep_prefix=prompt.fixed):
                first_token_at = first_token_at or time.perf_counter()
                pieces.append(piece)
                yield piece
        finally:
            self._record(text, "".join(pieces), started, first_token_at)

    def _prefix(self, text: str) -> list[int]:
        language = script_language(text) if self.role.system_by_language else None
        if language not in self._prefixes:
            self._prefixes[language] = fixed_prefix(self.engine, self.role, text)
        return self._prefixes[language]

    def reply(self, text: str) -> str:
        return "".join(self.stream(text))

    def reset(self) -> None:
        self.history = []

    def _record(self, text: str, reply: str, started: float, first_token_at: float | None) -> None:
        ended = time.perf_counter()
        generation = self.engine.last_generation
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        self.finish_reason = generation.finish_reason
        self.timings = {
            "total_ms": round((ended - started) * 1000, 2),
            "first_token_ms": round(((first_token_at or ended) - started) * 1000, 2),
            "prompt_tokens": generation.prompt_tokens,
            "reply_tokens": generation.tokens,
        }
