"""Generate roles: a multi-turn conversation whose reply streams, its history trimmed to fit n_ctx.

A turn is prepared (prompt fitted, history trimmed) apart from its generation, so a reply can come
from Conversation.stream (the engine's working sequence, one reply at a time) or from ChatStreams
(chat slots: several conversations' replies share each decode step), and is recorded the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

from .classifier import Classification
from .engine import EngineLike, Generation, Piece, SamplingParams, TokenLogprob
from .errors import InputError
from .json_schema import schema_grammar, schema_instruction
from .prompt_fit import FittedPrompt, fit_prompt, fixed_prefix
from .roles import Guidance, Message, Role
from .settings import CHAT_SLOTS
from .text import asks, clean_text, script_language


@dataclass
class Turn:
    """One user turn ready to generate: its prompt, and the reply as it comes."""

    text: str
    prompt: FittedPrompt
    started: float
    sampling: SamplingParams
    pieces: list[str] = field(default_factory=list)
    first_token_at: float | None = None

    def add(self, piece: str) -> None:
        self.first_token_at = self.first_token_at or time.perf_counter()
        self.pieces.append(piece)

    @property
    def reply(self) -> str:
        return "".join(self.pieces)


class Conversation:
    """A multi-turn chat with one generate (or extract) role; history is trimmed to fit the context window.

    `schema`: a JSON schema every reply matches (an extract role's own by default): the reply is
    decoded under a grammar made from it, and the system prompt shows it to the model. `stop`: texts
    that end a reply, never part of it. `logprobs`: None, or how many alternatives to give with each
    token's log-probability (`last_logprobs`). `logit_bias`: {token id: bias} added to those tokens'
    logits for every reply (-inf bans one); where the role's guidance keeps a reply off the message's
    own tokens (avoid_input), these values win for the same token."""

    def __init__(
        self, engine: EngineLike, role: Role, history: Sequence[Message] = (), *, schema: dict | bool | None = None,
        stop: Sequence[str] = (), logprobs: int | None = None, logit_bias: Mapping[int, float] | None = None,
    ) -> None:
        role.require_kind("generate")
        self.schema = schema if schema is not None else role.output_schema
        self._grammar = schema_grammar(self.schema) if self.schema is not None else None  # SchemaError first
        self.engine = engine
        self.role = _with_schema_prompt(role, self.schema) if self.schema is not None else role
        self.stop = tuple(stop)
        self.logprobs = logprobs
        self.logit_bias = _checked_bias(logit_bias or {}, engine.n_vocab)
        self.history: list[Message] = list(history)
        self._prefixes: dict[tuple, list[int]] = {}  # by guidance and the language of the message (Role.system_for)
        self._guided: dict[tuple[int, ...], Role] = {}  # the role as guided by each combination of guidance entries
        self.last_truncated = False
        self.timings: dict[str, float] = {}  # of the last reply: total_ms, first_token_ms, prompt_tokens, reply_tokens
        # of the last reply: "stop" (end of turn or a stop text), "length" (max_tokens or n_ctx), None (interrupted)
        self.finish_reason: str | None = None
        self.last_logprobs: list[TokenLogprob] | None = None  # of the last reply, with logprobs asked for

    @property
    def sampling(self) -> SamplingParams:
        settings = self.role.sampling.model_dump()
        if self._grammar is not None:
            # JSON repeats its own keys, quotes and commas: penalties against repeats only push the model
            # off what the grammar wants next (and make the whole grammar apply more often).
            settings.update(repeat_penalty=1.0, dry_multiplier=0.0)
        return SamplingParams(**settings, grammar=self._grammar, stop=self.stop, logprobs=self.logprobs,
                              logit_bias=tuple(sorted(self.logit_bias.items())))

    def prepare(self, text: str, known: Sequence[Classification] = ()) -> Turn:
        """The prompt for a reply to `text` (the history trimmed to fit); `record` adds the turn afterwards.

        `known`: classifications of `text` by other roles (e.g. its sentiment); the role's `guidance` for
        their labels shapes the reply (e.g. an apology and a question after a negative review), unless the
        text asks a question or makes a request (text.asks): that is answered as it would be without them."""
        text = clean_text(text)
        started = time.perf_counter()
        role, key = self._role_for(() if asks(text) else known)  # guidance answers statements, not questions
        prefix = self._prefix(role, key, text)
        sampling = self.sampling
        prompt = fit_prompt(self.engine, role, text, self.history, reserve=sampling.max_tokens, prefix=prefix)
        self.history, self.last_truncated = prompt.history, prompt.truncated
        language = script_language(text)
        avoid = max((self.role.guidance[index].avoid_input.get(language, 0.0) for index in key), default=0.0)
        if avoid:
            merged = {**self._input_bias(text, prefix, avoid), **self.logit_bias}  # the caller's bias wins
            sampling = replace(sampling, logit_bias=tuple(sorted(merged.items())))
        return Turn(text, prompt, started, sampling)

    def stream(self, text: str, known: Sequence[Classification] = ()) -> Iterator[str]:
        """Yield the reply as it is generated; the turn joins the history even if interrupted."""
        turn = self.prepare(text, known)
        try:
            for piece in self.engine.stream(turn.prompt.tokens, turn.sampling, keep_prefix=turn.prompt.fixed):
                turn.add(piece)
                yield piece
        finally:
            self.record(turn, self.engine.last_generation)

    def reply(self, text: str, known: Sequence[Classification] = ()) -> str:
        return "".join(self.stream(text, known))

    def _role_for(self, known: Sequence[Classification]) -> tuple[Role, tuple[int, ...]]:
        entries: list[Guidance] = self.role.guidance_for((c.role, c.label, c.confidence) for c in known)
        key = tuple(self.role.guidance.index(entry) for entry in entries)
        if key not in self._guided:
            self._guided[key] = self.role.guided(entries)
        return self._guided[key], key

    def _input_bias(self, text: str, prefix: Sequence[int], avoid: float) -> dict[int, float]:
        """-`avoid` for each token of `text` the role's fixed prompt does not use: the message's own words,
        not the words of a reply (thanks, you, a question), which the examples use."""
        return {token: -avoid for token in set(self.engine.tokenize(text)) - set(prefix)}

    def _prefix(self, role: Role, key: tuple[int, ...], text: str) -> list[int]:
        language = script_language(text) if role.by_language else None
        if (key, language) not in self._prefixes:
            self._prefixes[key, language] = fixed_prefix(self.engine, role, text)
        return self._prefixes[key, language]

    def reset(self) -> None:
        self.history = []

    def record(self, turn: Turn, generation: Generation) -> None:
        """Add a generated (or interrupted) turn to the history, with its finish reason and timings."""
        ended = time.perf_counter()
        self.history += [{"role": "user", "content": turn.text}, {"role": "assistant", "content": turn.reply}]
        self.finish_reason = generation.finish_reason
        self.last_logprobs = generation.logprobs
        self.timings = {
            "total_ms": round((ended - turn.started) * 1000, 2),
            "first_token_ms": round(((turn.first_token_at or ended) - turn.started) * 1000, 2),
            "prompt_tokens": generation.prompt_tokens,
            "reply_tokens": generation.tokens,
        }
        if self._grammar is not None:
            self.timings["grammar_resampled"] = generation.resampled


def _checked_bias(bias: Mapping[int, float], n_vocab: int) -> dict[int, float]:
    for token, value in bias.items():
        if not 0 <= token < n_vocab:
            raise InputError(f"logit_bias: token id {token} is not in the model's vocabulary (0 to {n_vocab - 1})")
        if math.isnan(value) or value == math.inf:  # +inf would leave llama.cpp's softmax nothing but NaN
            raise InputError(f"logit_bias: the bias of token {token} must be a number below +inf, not {value}")
    return {int(token): float(value) for token, value in bias.items()}


def _with_schema_prompt(role: Role, schema: dict | bool) -> Role:
    """`role` with the schema shown in every system prompt, so the model means to write what the grammar allows."""
    note = schema_instruction(schema)
    return role.model_copy(update={
        "system": f"{role.system}\n\n{note}",
        "system_by_language": {language: f"{text}\n\n{note}" for language, text in role.system_by_language.items()},
    })


class ChatStreams:
    """Replies of several conversations generated together, in a fixed number of chat slots: every
    step() decodes one token of each active reply, and the prompts of replies just started, in one
    batch (engine Streams). Each reply keeps its own sampler, budget and history; a reply that ends or
    is closed frees its slot at once."""

    def __init__(self, engine: EngineLike, slots: int = CHAT_SLOTS) -> None:
        self._streams = engine.streams(slots)
        self._turns: dict[int, tuple[Conversation, Turn]] = {}

    @property
    def slots(self) -> int:
        return self._streams.slots

    @property
    def active(self) -> int:
        return self._streams.active

    @property
    def free(self) -> int:
        return self._streams.free

    def start(self, conversation: Conversation, turn: Turn) -> int | None:
        """Start generating a prepared turn (its prompt is evaluated by the next step()); its handle, or
        None while no slot or too few KV cells are free."""
        prompt = turn.prompt
        handle = self._streams.start(prompt.tokens, turn.sampling, keep_prefix=prompt.fixed)
        if handle is not None:
            self._turns[handle] = (conversation, turn)
        return handle

    def step(self) -> dict[int, Piece]:
        """One token of every active reply: handle -> Piece (text, the logprobs of the tokens that text
        comes from if its conversation asked for them, and finish_reason on its last step, when its
        conversation has recorded the turn). A reply under a schema or with stop texts has them applied
        here as when it streams alone."""
        try:
            pieces = self._streams.step()
        except BaseException:
            self.close_all()
            raise
        for handle, piece in pieces.items():
            conversation, turn = self._turns[handle]
            if piece.text:
                turn.add(piece.text)
            if piece.generation is not None:
                del self._turns[handle]
                conversation.record(turn, piece.generation)
        return pieces

    def close(self, handle: int) -> None:
        """Stop a reply (its client went away); what it said so far joins its history."""
        generation = self._streams.close(handle)
        conversation, turn = self._turns.pop(handle, (None, None))
        if conversation is not None:
            conversation.record(turn, generation or Generation())

    def end(self, handle: int) -> Piece:
        """End a reply now as if its token budget ran out (finish_reason "length"), e.g. at a server's
        time limit; what it said so far joins its history. Returns its last Piece (no new text)."""
        generation = self._streams.close(handle) or Generation()
        generation.finish_reason = "length"
        conversation, turn = self._turns.pop(handle)
        conversation.record(turn, generation)
        return Piece("", "length", generation)

    def close_all(self) -> None:
        for handle in list(self._turns):
            self.close(handle)
