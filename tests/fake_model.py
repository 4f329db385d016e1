"""A stand-in for the model behind `edgeqwen serve`, for fast tests where the model is not the point.

FakeEdgeQwen has the shipped roles and the parts of EdgeQwen the server uses: classify_many labels
by a fixed rule, chats get real Conversations (prompt fitting included) over FakeEngine, a tokenizer
of one token per character in a ChatML-like template, and replies come from FakeStreams: chat slots
that say one word per step(), each step taking `step_seconds`, so a test can hold slots, fill the
queue and reach a deadline in well under a second. `serve_in_thread` serves create_app over it (or
over a real EdgeQwen) with uvicorn on a free loopback port in this process, configured as `edgeqwen
serve` configures it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

from edgeqwen.api import RunResult
from edgeqwen.classifier import Classification
from edgeqwen.conversation import Conversation
from edgeqwen.engine import Generation, Piece
from edgeqwen.roles import load_roles


class FakeEngine:
    """What prompt fitting asks of an engine: one token per character, ChatML-like markup."""

    def __init__(self, n_ctx: int = 2048) -> None:
        self.n_ctx = n_ctx
        self.info = SimpleNamespace(path="/models/fake-model.gguf")
        self.tokenized_chars = 0  # characters of message text tokenized so far

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        self.tokenized_chars += 0 if special else len(text)
        return [ord(c) % 50_000 + 10 for c in text]

    def detokenize(self, tokens) -> str:
        return "".join(chr(t - 10) for t in tokens)

    def chat_tokens(self, messages, *, add_generation_prompt: bool = True, known: dict | None = None) -> list[int]:
        known = {} if known is None else known
        tokens: list[int] = []
        for message in messages:
            if message["content"] not in known:
                known[message["content"]] = self.tokenize(message["content"])
            tokens += [1, len(message["role"]), *known[message["content"]], 2]
        return tokens + ([1, 3] if add_generation_prompt else [])


class FakeStreams:
    """Chat slots that reply `words`, one word per step(); like ChatStreams, a reply's turn is recorded when it ends."""

    def __init__(self, slots: int = 2, words: int = 5, step_seconds: float = 0.01) -> None:
        self.slots, self.words, self.step_seconds = slots, words, step_seconds
        self._replies: dict[int, dict] = {}
        self._next = 0
        self.started = 0

    @property
    def free(self) -> int:
        return self.slots - len(self._replies)

    @property
    def active(self) -> int:
        return len(self._replies)

    def start(self, conversation, turn) -> int | None:
        if not self.free:
            return None
        self._next += 1
        self.started += 1
        budget = min(self.words, conversation.sampling.max_tokens)
        self._replies[self._next] = {"conversation": conversation, "turn": turn, "said": 0, "budget": budget}
        return self._next

    def step(self) -> dict[int, Piece]:
        time.sleep(self.step_seconds)
        pieces = {}
        for handle, reply in list(self._replies.items()):
            reply["said"] += 1
            text = f"w{reply['said']} "
            reply["turn"].add(text)
            if reply["said"] < reply["budget"]:
                pieces[handle] = Piece(text)
                continue
            generation = self._finish(handle, "length" if reply["budget"] < self.words else "stop")
            pieces[handle] = Piece(text, generation.finish_reason, generation)
        return pieces

    def close(self, handle: int) -> None:
        if handle in self._replies:
            self._finish(handle, None)

    def end(self, handle: int) -> Piece:
        return Piece("", "length", self._finish(handle, "length"))

    def _finish(self, handle: int, reason: str | None) -> Generation:
        reply = self._replies.pop(handle)
        generation = Generation(
            prompt_tokens=len(reply["turn"].prompt.tokens), tokens=reply["said"], finish_reason=reason
        )
        reply["conversation"].record(reply["turn"], generation)
        return generation


class FakeEdgeQwen:
    """The parts of EdgeQwen the server uses, without a model."""

    def __init__(self, n_ctx: int = 2048, streams: FakeStreams | None = None, classify_seconds: float = 0.0) -> None:
        self.roles = load_roles(None)
        self.engine = FakeEngine(n_ctx)
        self.streams = streams or FakeStreams()
        self.classify_seconds = classify_seconds
        self.classified: list[str] = []

    @property
    def n_ctx(self) -> int:
        return self.engine.n_ctx

    def chat_streams(self, slots: int) -> FakeStreams:
        return self.streams

    def classify_many(self, texts, role: str = "sentiment") -> list[Classification]:
        time.sleep(self.classify_seconds * len(texts))
        self.classified += texts
        labels = self.roles[role].label_names
        return [
            Classification(role, labels[len(text) % 2], labels[len(text) % 2], 0.9, {label: 0.5 for label in labels})
            for text in texts
        ]

    def conversation(self, role: str = "chat", history=(), sampling=None) -> Conversation:
        return Conversation(self.engine, self.roles[role], history)

    def run(
        self, text: str, task: str = "auto", *, on_step=None, chat: bool = True, conversation=None, on_text=None
    ) -> RunResult:
        return RunResult(text=text, task="chat" if task == "auto" else task)


@contextmanager
def serve_in_thread(config=None, eq=None):
    """create_app over `eq` (a FakeEdgeQwen by default, or a real EdgeQwen) served by uvicorn as `edgeqwen
    serve` runs it, in this process; yields (port, the app's Server)."""
    from edgeqwen.server.app import ServerConfig, create_app, uvicorn_options
    from edgeqwen.server.launch import free_port
    import uvicorn

    config = dataclasses.replace(config or ServerConfig(), port=free_port())
    app = create_app(eq or FakeEdgeQwen(), config)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(dataclasses.replace(config, log_level="warning"))))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield config.port, app.state.server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
