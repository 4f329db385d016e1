"""The model work behind each endpoint. Every function here runs on the inference thread (worker.py).

They use the public Python API (EdgeQwen, Conversation, Classification) and stream through
`job.emit`, which raises `Cancelled` when the client has gone: the `closing(...)` around each
generator then stops llama.cpp's generation at once.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field

from .. import settings
from ..api import EdgeQwen, RunResult
from ..conversation import Conversation
from ..roles import Message, Role
from .worker import Job


@dataclass
class ChatSpec:
    """A chat request resolved to a generate role (system prompt and sampling already applied)."""

    role: Role
    history: list[Message]
    text: str


@dataclass
class Generated:
    reply: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    classification: dict | None = None


def generate(eq: EdgeQwen, spec: ChatSpec, job: Job) -> Generated:
    """A streamed reply of a generate role; each text piece goes to `job.emit`."""
    conversation = Conversation(eq.engine, spec.role, spec.history)
    pieces: list[str] = []
    with closing(conversation.stream(spec.text)) as stream:
        for piece in stream:
            pieces.append(piece)
            job.emit(piece)
    timings = conversation.timings
    # The conversation records why the engine stopped: the end-of-turn token ("stop") or the token budget ("length").
    finish = conversation.finish_reason or "stop"
    return Generated("".join(pieces), finish, int(timings.get("prompt_tokens", 0)), int(timings.get("reply_tokens", 0)), dict(timings))


def classify_as_chat(eq: EdgeQwen, role: str, text: str, job: Job) -> Generated:
    """A classify role answering a chat request: the reply is exactly one label."""
    result = eq.classify(text, role)
    job.emit(result.label)
    return Generated(
        reply=result.label,
        finish_reason="stop",
        prompt_tokens=int(result.timings.get("prompt_tokens", 0)),
        completion_tokens=1,
        timings=dict(result.timings),
        classification=_classification(result),
    )


def classify_texts(eq: EdgeQwen, role: str, texts: list[str], job: Job) -> list[dict]:
    """One classification per text, in order, evaluated settings.BATCH_SIZE at a time; stops between
    batches if the client went away."""
    results = []
    for first in range(0, len(texts), settings.BATCH_SIZE):
        job.check()
        results += [_classification(result) for result in eq.classify_many(texts[first : first + settings.BATCH_SIZE], role)]
    return results


def run(eq: EdgeQwen, text: str, task: str, history: list[Message], job: Job) -> RunResult:
    """`EdgeQwen.run` with each step streamed as it finishes and the job's cancellation checked between steps.

    Events: ("route", {...}), ("sentiment", {...}), ("delta", "text piece").
    """

    def step(kind: str, value) -> None:
        job.emit((kind, value.to_dict() if kind == "route" else _classification(value)))

    job.check()
    return eq.run(text, task, conversation=eq.conversation(history=history),
                  on_text=lambda piece: job.emit(("delta", piece)), on_step=step)


def _classification(result) -> dict:
    data = result.to_dict()
    data["confidence"] = round(data["confidence"], 4)
    data["scores"] = {name: round(p, 4) for name, p in data["scores"].items()}
    return data
