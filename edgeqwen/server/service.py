"""The model work behind each endpoint. Every function here runs on the inference thread (worker.py).

They use the public Python API (EdgeQwen, Conversation, ChatStreams, Classification). A chat reply
goes on in a chat slot: the function prepares its prompt and returns a SlotRequest, and the worker
starts it when a slot is free and hands each piece to `job.emit` (which raises `Cancelled` when the
client has gone: the worker then frees the slot). Classifications are batch jobs: the worker runs
waiting texts of one role together through `classify_texts`, and `labels` / `label_reply` give each
job its answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..api import Classification, Conversation, EdgeQwen, Message, Role, RunResult, Turn
from .worker import Job, SlotRequest


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


def generate(eq: EdgeQwen, spec: ChatSpec, job: Job) -> SlotRequest:
    """A reply of a generate role, to run in a chat slot; each text piece goes to `job.emit`."""
    conversation = eq.conversation(spec.role, spec.history)
    turn = conversation.prepare(spec.text)
    return SlotRequest(start=lambda streams: streams.start(conversation, turn), done=lambda piece: _generated(conversation, turn))


def _generated(conversation: Conversation, turn: Turn) -> Generated:
    timings = conversation.timings
    # The conversation records why the engine stopped: the end-of-turn token ("stop") or the token budget ("length").
    finish = conversation.finish_reason or "stop"
    return Generated(turn.reply, finish, int(timings.get("prompt_tokens", 0)), int(timings.get("reply_tokens", 0)), dict(timings))


def classify_texts(eq: EdgeQwen, role: str):
    """What the worker runs for a batch of texts of one classify role (one classify_many call)."""
    return lambda texts: eq.classify_many(texts, role)


def labels(job: Job, results: list[Classification]) -> list[dict]:
    """A /v1/classify job's answer: one classification per text, in order."""
    return [_classification(result) for result in results]


def label_reply(job: Job, results: list[Classification]) -> Generated:
    """A classify role answering a chat request: the reply is exactly one label."""
    (result,) = results
    job.emit(result.label)
    return Generated(
        reply=result.label,
        finish_reason="stop",
        prompt_tokens=int(result.timings.get("prompt_tokens", 0)),
        completion_tokens=1,
        timings=dict(result.timings),
        classification=_classification(result),
    )


def run(eq: EdgeQwen, text: str, task: str, history: list[Message], job: Job) -> RunResult | SlotRequest:
    """`EdgeQwen.run` with each step streamed as it finishes; the reply, if one is due, goes on in a chat slot.

    Events: ("route", {...}), ("sentiment", {...}), ("delta", "text piece").
    """

    def step(kind: str, value) -> None:
        job.emit((kind, value.to_dict() if kind == "route" else _classification(value)))

    started = time.perf_counter()
    job.check()
    result = eq.run(text, task, on_step=step, chat=False)
    if result.task not in ("chat", "both"):
        return result
    conversation = eq.conversation(history=history)
    turn = conversation.prepare(text)

    def done(piece) -> RunResult:
        result.reply = turn.reply
        result.timings.update({f"chat_{k}": v for k, v in conversation.timings.items()})
        result.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    return SlotRequest(start=lambda streams: streams.start(conversation, turn), item=lambda piece: ("delta", piece), done=done)


def _classification(result) -> dict:
    data = result.to_dict()
    data["confidence"] = round(data["confidence"], 4)
    data["scores"] = {name: round(p, 4) for name, p in data["scores"].items()}
    return data
