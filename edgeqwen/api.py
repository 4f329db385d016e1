"""The public Python API: one model loaded once, every role available by name."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from .classifier import Classification, Classifier, check_labels
from .conversation import ChatStreams, Conversation, Turn
from .engine import Engine, EngineLike
from .errors import EdgeQwenError, InputError
from .gguf_info import GGUFInfo
from .grammar import label_grammar
from .head import model_identity
from .memory_plan import MemoryPlan
from .model_paths import resolve_model
from .prompt_fit import fixed_prefix
from .roles import Message, Role, load_roles, pick_role
from .router import STRATEGIES, RouteDecision, Router
from .settings import CHAT_SLOTS, KV_CACHE_TYPES, ROUTER  # names: __init__ imports this
from .settings import cache_dir as settings_cache_dir

# The door faces (CLI, server, Ray) go through: EdgeQwen and the types its methods take and return.
__all__ = ["TASKS", "ChatStreams", "Classification", "Classifier", "Conversation", "EdgeQwen", "Message", "Role",
           "RouteDecision", "RunResult", "Turn", "check_choice", "load_roles"]

TASKS = ("auto", "sentiment", "chat", "both")


def check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    """`value`, or an InputError naming the choices: one rule for every option with a fixed set of values."""
    if value not in choices:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


@dataclass
class RunResult:
    """What `EdgeQwen.run` did with one input."""

    text: str
    task: str
    route: RouteDecision | None = None
    sentiment: Classification | None = None
    reply: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # What the reply is told about the text (Conversation.prepare's `known`): the sentiment label in
    # both-mode, or the one the route's evaluation gave with a chat route. Not part of to_dict().
    known: list[Classification] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "task": self.task,
            "route": self.route.to_dict() if self.route else None,
            "label": self.sentiment.label if self.sentiment else None,
            "display": self.sentiment.display if self.sentiment else None,
            "confidence": round(self.sentiment.confidence, 4) if self.sentiment else None,
            "reply": self.reply,
            "truncated": bool(self.sentiment and self.sentiment.truncated),
            "timings": self.timings,
        }


class EdgeQwen:
    """One small Qwen model doing several jobs.

    >>> eq = EdgeQwen()                                # model from EDGEQWEN_MODEL or models/
    >>> eq.sentiment("这家餐厅的服务太差了").label
    'negative'
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        n_ctx: int | None = None,
        threads: int | None = None,
        prompts_dir: str | os.PathLike | None = None,
        router: str = ROUTER,
        kv_cache: str | None = None,
        prefix_cache: bool | str | os.PathLike = True,
        verbose: bool = False,
        engine: EngineLike | None = None,
    ) -> None:
        """`engine`: run on this engine instead of loading `model` (anything that satisfies
        edgeqwen.engine.EngineLike; the test suite's deterministic engine, for instance)."""
        check_choice("router", router, STRATEGIES)  # everything that can be refused is, before the slow load
        if kv_cache is not None:
            check_choice("KV cache type", kv_cache, KV_CACHE_TYPES)
        self.roles: dict[str, Role] = load_roles(prompts_dir)
        cache_dir = settings_cache_dir() / "prefixes" if prefix_cache is True else (prefix_cache or None)
        self.engine: EngineLike = engine or Engine(
            resolve_model(model), n_ctx=n_ctx, n_threads=threads, kv_type=kv_cache, prefix_cache_dir=cache_dir,
            verbose=verbose,
        )
        check_labels(self.engine, self.roles.values())  # labels that are control tokens of this model
        self._classifiers: dict[str, Classifier] = {}
        self.router = Router(router, self._classifier("route") if router == "llm" else None)

    # -- classify roles -------------------------------------------------------------------------

    def classify(self, text: str, role: str = "sentiment") -> Classification:
        """One label of a classify role, with its confidence (softmax over the role's labels)."""
        return self._classifier(role).classify(text)

    def classify_many(self, texts: Sequence[str], role: str = "sentiment") -> list[Classification]:
        """One Classification per text, in order, the texts evaluated together (faster per text than
        one at a time; the labels are the same).

        >>> [c.label for c in eq.classify_many(["Great phone!", "屏幕太暗了"])]
        ['positive', 'negative']
        """
        return self._classifier(role).classify_many(texts)

    def reload_heads(self) -> None:
        """Use head files written since the model loaded (by `edgeqwen heads` or train_model_heads)."""
        self._classifiers.clear()
        self.router = Router(self.router.strategy, self._classifier("route") if self.router.strategy == "llm" else None)

    def sentiment(self, text: str) -> Classification:
        return self.classify(text, "sentiment")

    def route(self, text: str) -> RouteDecision:
        return self.router.route(text)

    # -- generate roles -------------------------------------------------------------------------

    def conversation(
        self, role: str | Role = "chat", history: Sequence[Message] = (), sampling: Mapping[str, Any] | None = None,
        *, schema: dict | bool | None = None, stop: Sequence[str] = (), logprobs: int | None = None,
        logit_bias: Mapping[int, float] | None = None,
    ) -> Conversation:
        """A multi-turn chat that keeps its history (trimmed to fit n_ctx); `role` is a generate or extract
        role's name or a Role (e.g. one with another system prompt: `role.with_system(...)`); `sampling`
        overrides the role's sampling settings, e.g. {"temperature": 0, "max_tokens": 64}; `schema`
        constrains every reply to a JSON schema (an extract role's own by default; SchemaError names what
        is not supported); `stop` ends a reply before any of these texts; `logprobs` (0-20) gives each
        token's log-probability and that many alternatives (`conversation.last_logprobs`, and in chat
        slots each piece's `logprobs`); `logit_bias` ({token id: bias}, ids below `n_vocab`) is added to
        those tokens' logits before anything else picks one (-inf bans a token).

        >>> eq.conversation(eq.roles["chat"].with_system("Answer in one word.")).reply("Sky colour?")
        'Blue.'
        """
        chosen = self._role(role, "generate")
        if sampling:
            chosen = chosen.model_copy(update={"sampling": chosen.sampling.model_copy(update=dict(sampling))})
        return Conversation(self.engine, chosen, history, schema=schema, stop=stop, logprobs=logprobs,
                            logit_bias=logit_bias)

    def chat_streams(self, slots: int = CHAT_SLOTS) -> ChatStreams:
        """Chat slots on this model: several conversations' replies generated together, one token of
        each per decode step (`start(conversation, conversation.prepare(text))`, then `step()`: new
        prompts are evaluated by the next step, in the same decode); for a server that answers several
        chats at once. Classify calls may run between steps."""
        return ChatStreams(self.engine, slots)

    def chat(
        self, message: str | Sequence[Message], *, stream: bool = False, role: str = "chat",
        schema: dict | bool | None = None, stop: Sequence[str] = (),
    ) -> str | Iterator[str]:
        """A reply to one message, or to a list of {"role", "content"} messages ending with a user turn.
        With `schema` the reply is JSON text that matches it (a grammar constrains every token); `stop`
        ends the reply before any of those texts.

        >>> json.loads(eq.chat("Alice is 31.", schema={"type": "object", "properties": {"age": {"type": "integer"}},
        ...                                             "required": ["age"]}))
        {'age': 31}
        """
        conversation = self._conversation_for(message, role, schema=schema, stop=stop)
        text = message if isinstance(message, str) else message[-1]["content"]
        return conversation.stream(text) if stream else conversation.reply(text)

    def extract(self, text: str, role: str) -> Any:
        """The fields an extract role pulls out of `text`: its reply, parsed (it always matches the role's
        schema, unless the role's max_tokens cut it short: then an EdgeQwenError says so)."""
        conversation = Conversation(self.engine, self._role(role, "extract"))
        reply = conversation.reply(text)
        if conversation.finish_reason == "length":
            raise EdgeQwenError(
                f"role {role!r}: the reply reached max_tokens before its JSON was complete; raise the role's max_tokens"
            )
        return json.loads(reply)

    # -- routed run -----------------------------------------------------------------------------

    def run(
        self,
        text: str,
        task: str = "auto",
        *,
        conversation: Conversation | None = None,
        on_text: Callable[[str], None] | None = None,
        on_step: Callable[[str, RouteDecision | Classification], None] | None = None,
        chat: bool = True,
    ) -> RunResult:
        """Route `text` (task="auto") or run the named task. A route the router is unsure of (its
        confidence below the route role's `abstain_below`, off by default) runs both roles. The reply
        is told the sentiment label (`result.known`) when it is known: in both-mode, and with a chat
        route whose evaluation gave the label too; the chat role's `guidance` shapes it. With
        chat=False the reply is left to the caller (`result.task` says whether one is due; pass
        `result.known` to Conversation.prepare).

        `on_text` receives the reply as it streams; `on_step` receives ("route", RouteDecision) and
        ("sentiment", Classification) as each is decided. An exception raised by either stops the run
        at once, generation included.
        """
        check_choice("task", task, TASKS)
        notify = on_step or (lambda kind, value: None)
        started = time.perf_counter()
        result = RunResult(text=text, task=task)
        labelled = None  # the sentiment label, when the router's evaluation gave it too
        if task == "auto":
            result.route, labelled = self.router.route_with(self._classifier("sentiment"), text)
            result.task = task = "both" if result.route.abstained else result.route.task
            result.timings["route_ms"] = round((time.perf_counter() - started) * 1000, 2)
            notify("route", result.route)
        if task in ("sentiment", "both"):
            result.sentiment = labelled or self.sentiment(text)
            # 0 when the route's evaluation gave the label too: its time is in route_ms already
            result.timings["sentiment_ms"] = 0.0 if labelled else result.sentiment.timings["total_ms"]
            notify("sentiment", result.sentiment)
        result.known = [known for known in (result.sentiment or labelled,) if known is not None]
        if task in ("chat", "both") and chat:
            conversation = conversation or self.conversation()
            pieces = []
            with closing(conversation.stream(text, result.known)) as stream:  # closed at once if a callback raises
                for piece in stream:
                    pieces.append(piece)
                    if on_text:
                        on_text(piece)
            result.reply = "".join(pieces)
            result.timings.update({f"chat_{k}": v for k, v in conversation.timings.items()})
        result.timings["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    # -- the model underneath ------------------------------------------------------------------

    @property
    def model_info(self) -> GGUFInfo:
        """The model file's metadata (path, architecture, blocks, context length, ...), read from its GGUF."""
        return self.engine.info

    @property
    def memory_plan(self) -> MemoryPlan:
        """The context size and KV-cache type in use, and the memory estimate they were chosen by."""
        return self.engine.memory_plan

    @property
    def n_ctx(self) -> int:
        """The context window in tokens: the longest prompt + reply."""
        return self.engine.n_ctx

    @property
    def n_vocab(self) -> int:
        """Token ids of this model's vocabulary run from 0 to n_vocab - 1 (what a logit bias may name)."""
        return self.engine.n_vocab

    @property
    def readable_layers(self) -> range:
        """Transformer blocks whose output a classification head can read (all but the last)."""
        return self.engine.readable_layers

    def model_identity(self) -> dict[str, Any]:
        """What ties a trained head to this model file (name, sizes, sha256 when recorded)."""
        return model_identity(self.engine)

    def classifier(self, role: str | Role, *, use_head: bool = True, for_head: bool = False) -> Classifier:
        """A Classifier for a classify role (a name or a Role): use_head=False decides by the label
        logits alone (the role without its head); for_head=True reads texts through the prompt the
        role's head reads, for training one (Classifier.read_many)."""
        return Classifier(self.engine, self._role(role, "classify"), use_head=use_head, for_head=for_head)

    def prompt_tokens(self, role: str | Role, text: str | None = None) -> list[int]:
        """Tokens of a role's prompt for `text` in the model's chat template; with no text, the fixed
        prefix every prompt of the role starts with (kept in the cache once evaluated)."""
        chosen = self._role(role, None)
        return fixed_prefix(self.engine, chosen) if text is None else self.engine.chat_tokens(chosen.messages(text))

    def complete_choice(self, prompt: str, choices: Sequence[str]) -> str:
        """Greedy plain completion of `prompt` (no chat template) forced by a grammar to one of
        `choices`; the choice made (a baseline `edgeqwen eval --compare` scores)."""
        return self.engine.constrained_choice(self.engine.tokenize(prompt), label_grammar(list(choices))).strip()

    def bare_decode_rate(self, tokens: Sequence[int], n_tokens: int, streams: int = 1) -> float:
        """Tokens per second of llama.cpp's bare decode loop (greedy, no sampler chain) after `tokens`,
        `streams` copies decoded together: this machine's ceiling, which `edgeqwen bench` holds
        replies and chat slots against."""
        return self.engine.bare_decode_rate(tokens, n_tokens, streams)

    # -- helpers --------------------------------------------------------------------------------

    def _role(self, role: str | Role, kind: str | None) -> Role:
        if isinstance(role, Role):
            return role.require_kind(kind) if kind else role
        return pick_role(self.roles, role, kind)

    def _classifier(self, name: str) -> Classifier:
        if name not in self._classifiers:
            self._classifiers[name] = self.classifier(name)
        return self._classifiers[name]

    def _conversation_for(self, message: str | Sequence[Message], role_name: str, **options: Any) -> Conversation:
        role = self._role(role_name, "generate")
        if isinstance(message, str):
            return Conversation(self.engine, role, **options)
        messages = list(message)
        if not messages or messages[-1].get("role") != "user":
            raise InputError("messages must end with a user message")
        if messages[0].get("role") == "system":
            role = role.with_system(messages[0]["content"])
            messages = messages[1:]
        return Conversation(self.engine, role, messages[:-1], **options)
