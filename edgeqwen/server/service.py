"""The model work behind each endpoint. Every function here runs on the inference thread (worker.py).

They use the public Python API (EdgeQwen, Conversation, ChatStreams, Classification). A chat reply
goes on in a chat slot: the function prepares its prompt and returns a SlotRequest, and the worker
starts it when a slot is free and hands each piece to `job.emit` (which raises `Cancelled` when the
client has gone: the worker then frees the slot). Classifications are batch jobs: the worker runs
waiting texts of one role together through `classify_texts`, and `labels` / `label_reply` give each
job its answer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..api import Classification, Conversation, EdgeQwen, Message, Role, RunResult, Turn
from .worker import Job, SlotRequest


@dataclass
class ChatSpec:
    """A chat request resolved to a generate role (system prompt and sampling already applied)."""

    role: Role
    history: list[Message]
    text: str
    schema: Any = None  # a JSON schema the reply must match
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; n: each token's, with n alternatives
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> bias, added to its logit


@dataclass
class Delta:
    """One streamed piece of a chat reply: its text, and with logprobs asked for, its tokens' (OpenAI's shape)."""

    text: str
    logprobs: list[dict] | None = None


@dataclass
class Generated:
    reply: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    timings: dict[str, float] = field(default_factory=dict)
    classification: dict | None = None
    logprobs: list[dict] | None = None


def generate(eq: EdgeQwen, spec: ChatSpec, job: Job) -> SlotRequest:
    """A reply of a generate or extract role, to run in a chat slot; each piece goes to `job.emit` as a Delta."""
    conversation = eq.conversation(spec.role, spec.history, schema=spec.schema, stop=spec.stop, logprobs=spec.logprobs,
                                   logit_bias=spec.logit_bias)
    turn = conversation.prepare(spec.text)

    def delta(piece) -> Delta:  # a ChatStreams Piece
        return Delta(piece.text, [entry.to_dict() for entry in piece.logprobs] if spec.logprobs is not None else None)

    def done(piece) -> Generated:
        return _generated(conversation, turn)

    return SlotRequest(start=lambda streams: streams.start(conversation, turn), item=delta, done=done)


def _generated(conversation: Conversation, turn: Turn) -> Generated:
    timings = conversation.timings
    # Why the engine stopped: the end-of-turn token or a stop text ("stop"), or the token budget ("length").
    finish = conversation.finish_reason or "stop"
    logprobs = None if conversation.last_logprobs is None else [entry.to_dict() for entry in conversation.last_logprobs]
    tokens = int(timings.get("prompt_tokens", 0)), int(timings.get("reply_tokens", 0))
    return Generated(turn.reply, finish, *tokens, dict(timings), logprobs=logprobs)


def classify_texts(eq: EdgeQwen, role: str):
    """What the worker runs for a batch of texts of one classify role (one classify_many call)."""
    return lambda texts: eq.classify_many(texts, role)


def labels(job: Job, results: list[Classification]) -> list[dict]:
    """A /v1/classify job's answer: one classification per text, in order."""
    return [_classification(result) for result in results]


def label_reply(job: Job, results: list[Classification], logprobs: int | None = None) -> Generated:
    """A classify role answering a chat request: the reply is exactly one label; with `logprobs` (a
    number of alternatives) the label's probability and the other labels' come as its logprobs."""
    (result,) = results
    entries = label_logprobs(result, logprobs) if logprobs is not None else None
    job.emit(Delta(result.label, entries))
    return Generated(
        reply=result.label,
        finish_reason="stop",
        prompt_tokens=int(result.timings.get("prompt_tokens", 0)),
        completion_tokens=1,
        timings=dict(result.timings),
        classification=_classification(result),
        logprobs=entries,
    )


def label_logprobs(result: Classification, top: int) -> list[dict]:
    """The label as the reply's one token, in OpenAI's logprobs shape, the most likely labels as its alternatives."""

    def entry(label: str) -> dict:
        logprob = round(math.log(max(result.scores[label], 1e-300)), 6)
        return {"token": label, "logprob": logprob, "bytes": list(label.encode())}

    ranked = sorted(result.scores, key=lambda label: -result.scores[label])
    return [{**entry(result.label), "top_logprobs": [entry(label) for label in ranked[:top]]}]


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
    turn = conversation.prepare(text, result.known)  # the label, when known, shapes the reply (role guidance)

    def done(piece) -> RunResult:
        result.reply = turn.reply
        result.timings.update({f"chat_{k}": v for k, v in conversation.timings.items()})
        result.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    return SlotRequest(
        start=lambda streams: streams.start(conversation, turn), item=lambda piece: ("delta", piece.text), done=done
    )


def _classification(result) -> dict:
    data = result.to_dict()
    data["confidence"] = round(data["confidence"], 4)
    data["scores"] = {name: round(p, 4) for name, p in data["scores"].items()}
    return data
