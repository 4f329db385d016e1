"""Task behaviour on top of the engine: classify roles pick a label, generate roles hold a conversation.

Prompts come from Role.messages (roles.py) and are fitted into the context window here: inputs
too long are truncated, and old conversation turns are dropped before llama.cpp could overflow.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import Engine, SamplingParams, common_prefix_length
from .errors import InputError, RoleError
from .grammar import label_grammar
from .head import Head, head_for, layer_features
from .roles import Message, Role

MIN_REPLY_TOKENS = 16  # a chat prompt is truncated rather than leave less room than this


def clean_text(text: str) -> str:
    """The input as the model should see it; empty or whitespace-only input is refused."""
    if not isinstance(text, str):
        raise InputError("text must be a string")
    text = text.replace("\x00", "").strip()
    if not text:
        raise InputError("empty input: give some text to analyse")
    return text


@dataclass(frozen=True)
class FittedPrompt:
    tokens: list[int]
    history: list[Message]
    truncated: bool
    fixed: int = 0  # leading tokens that are the role's fixed prefix, worth keeping in the cache


def fixed_prefix(engine: Engine, role: Role) -> list[int]:
    """Tokens every prompt of the role starts with: system prompt, examples, and the new user turn up to the input.

    Found as what the prompts for two unlike inputs share, so the template's own tokens before the
    input (e.g. "<|im_start|>user\nText:") are kept in the cache too.
    """
    first, second = (engine.chat_tokens(role.messages(probe)) for probe in ("A", "乙"))
    return first[: common_prefix_length(first, second)]


def fit_prompt(
    engine: Engine, role: Role, text: str, history: Sequence[Message] = (), reserve: int = 1, prefix: Sequence[int] = ()
) -> FittedPrompt:
    """Tokens for `text` after `history` that leave `reserve` tokens free: oldest turns go first, then the text's tail."""
    fitted = _fit(engine, role, text, list(history), reserve)
    prefix = list(prefix)
    fixed = len(prefix) if prefix and fitted.tokens[: len(prefix)] == prefix else 0
    return FittedPrompt(fitted.tokens, fitted.history, fitted.truncated, fixed)


def _fit(engine: Engine, role: Role, text: str, history: list[Message], reserve: int) -> FittedPrompt:
    while True:
        tokens = engine.chat_tokens(role.messages(text, history))
        if len(tokens) + reserve <= engine.n_ctx or not history:
            break
        history = history[2:]  # one user turn and its reply
    limit = engine.n_ctx - min(reserve, MIN_REPLY_TOKENS)
    if len(tokens) <= limit:
        return FittedPrompt(tokens, history, truncated=False)
    text_tokens = engine.tokenize(text)
    fixed = len(tokens) - len(text_tokens)
    room = limit - fixed - 4  # re-tokenizing the cut text may merge differently
    if room <= 0:
        raise InputError(f"role '{role.name}' needs {fixed} tokens of fixed prompt; n_ctx {engine.n_ctx} is too small")
    tokens = engine.chat_tokens(role.messages(engine.detokenize(text_tokens[:room]), history))
    return FittedPrompt(tokens, history, truncated=True)


def label_token_problem(engine: Engine, label: str) -> str | None:
    """Why the loaded model cannot produce `label` as plain text, or None.

    Role files are checked for chat markup such as <|im_end|> when they are read (roles.py); which
    other strings are control tokens is known only once the model is: Qwen2.5's <tool_call> is one,
    and llama.cpp matches it even in text tokenized without special tokens.
    """
    if engine.is_plain_text(label):
        return None
    return "is a control token of this model" if len(engine.tokenize(label, special=True)) == 1 else "contains a control token of this model"


def check_labels(engine: Engine, roles: Iterable[Role]) -> None:
    """Refuse a classify role with a label that is (or contains) a control token of the loaded model,
    in one line naming the role file and the field."""
    for role in roles:
        if role.kind != "classify":
            continue
        for index, name in enumerate(role.label_names):
            problem = label_token_problem(engine, name)
            if problem:
                raise RoleError(f"{role.source}: field 'labels.{index}.name': label {name!r} {problem}; pick plain words")


@dataclass
class Classification:
    """One label from a classify role, with its softmax probability over the role's labels."""

    role: str
    label: str
    display: str
    confidence: float
    scores: dict[str, float]
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier:
    """Runs one classify role; the answer is always exactly one of the role's labels."""

    def __init__(self, engine: Engine, role: Role, *, use_head: bool = True) -> None:
        if role.kind != "classify":
            raise RoleError(f"{role.source}: role '{role.name}' is a {role.kind} role, not classify")
        check_labels(engine, [role])
        self.engine = engine
        self.role = role
        self._sequences = [engine.tokenize(name) for name in role.label_names]
        self._label_ids = [seq[0] for seq in self._sequences]  # each label's first token
        # One distinct token per label: the grammar-constrained greedy choice is the arg-max of
        # those tokens' logits, so one evaluation decides and no grammar is needed.
        self.single_token = all(len(seq) == 1 for seq in self._sequences) and len(set(self._label_ids)) == len(self._label_ids)
        if role.calibration != "none" and not self.single_token:
            raise RoleError(f"{role.source}: field 'calibration': needs labels that are single tokens for this model")
        self._grammar = None if self.single_token else label_grammar(role.label_names)
        self._prefix = fixed_prefix(engine, role)
        self._bias: np.ndarray | None = None
        # A trained head over the final hidden state, when the role names one that fits this model.
        self.head: Head | None = head_for(engine, role) if use_head else None

    def classify(self, text: str) -> Classification:
        started = time.perf_counter()
        prompt = fit_prompt(self.engine, self.role, clean_text(text), prefix=self._prefix)
        if self.head is not None:
            features, logits = self._read(prompt, self.head.layer)
            scores = self.head.scores(features, self._label_scores(logits) if self.single_token else None)
            label = self.role.label_names[int(np.argmax(scores))]
        elif self.single_token:
            scores = self._label_scores(self.engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed))
            label = self.role.label_names[int(np.argmax(scores))]
        else:
            label = self.engine.constrained_choice(prompt.tokens, self._grammar, keep_prefix=prompt.fixed)
            scores = np.array([self.engine.sequence_logprob(prompt.tokens, seq, prompt.fixed) for seq in self._sequences])
        probabilities = _softmax(scores)
        elapsed = (time.perf_counter() - started) * 1000
        return Classification(
            role=self.role.name,
            label=label,
            display=self.role.label(label).shown,
            confidence=float(probabilities[self.role.label_names.index(label)]),
            scores={name: float(p) for name, p in zip(self.role.label_names, probabilities)},
            truncated=prompt.truncated,
            timings={"total_ms": round(elapsed, 2), "prompt_tokens": len(prompt.tokens)},
        )

    def features(self, text: str, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """What a head is trained on: the next-token logits at the end of the role's prompt (or, with
        `layer`, head.layer_features of that block), and the calibrated label scores at the same
        position (zeros when the labels are not single tokens)."""
        prompt = fit_prompt(self.engine, self.role, clean_text(text), prefix=self._prefix)
        features, logits = self._read(prompt, layer)
        return features, self._label_scores(logits) if self.single_token else np.zeros(len(self._sequences))

    def _read(self, prompt: FittedPrompt, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(what a head over `layer` reads, next-token logits) for a fitted prompt."""
        if layer is None:
            logits = self.engine.next_token_logits(prompt.tokens, keep_prefix=prompt.fixed)
            return logits, logits
        # States after the shared prefix, even in the rare prompt whose input merges into the prefix's last token.
        start = prompt.fixed or common_prefix_length(self._prefix, prompt.tokens)
        logits, states = self.engine.layer_states(prompt.tokens, layer, keep_prefix=start)
        return layer_features(states), logits

    def _label_scores(self, logits: np.ndarray) -> np.ndarray:
        """The label tokens' logits, minus the role's calibration bias."""
        return logits[self._label_ids].astype(np.float64) - self._calibration_bias()

    def _calibration_bias(self) -> np.ndarray:
        """Content-free calibration: the label preference the model shows for an empty input."""
        if self.role.calibration == "none":
            return np.zeros(len(self._sequences))
        if self._bias is None:
            prompts = [fit_prompt(self.engine, self.role, filler, prefix=self._prefix) for filler in ("N/A", "…")]
            neutral = [self.engine.next_token_logits(p.tokens, keep_prefix=p.fixed)[self._label_ids] for p in prompts]
            bias = np.mean(neutral, axis=0, dtype=np.float64)
            self._bias = bias - bias.mean()
        return self._bias


class Conversation:
    """A multi-turn chat with one generate role; history is trimmed to fit the context window."""

    def __init__(self, engine: Engine, role: Role, history: Sequence[Message] = ()) -> None:
        if role.kind != "generate":
            raise RoleError(f"{role.source}: role '{role.name}' is a {role.kind} role, not generate")
        self.engine = engine
        self.role = role
        self.history: list[Message] = list(history)
        self._prefix = fixed_prefix(engine, role)
        self.last_truncated = False
        self.timings: dict[str, float] = {}

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams(**self.role.sampling.model_dump())

    def stream(self, text: str) -> Iterator[str]:
        """Yield the reply as it is generated; the turn joins the history even if interrupted."""
        text = clean_text(text)
        started = time.perf_counter()
        prompt = fit_prompt(self.engine, self.role, text, self.history, reserve=self.sampling.max_tokens, prefix=self._prefix)
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

    def reply(self, text: str) -> str:
        return "".join(self.stream(text))

    def reset(self) -> None:
        self.history = []

    def _record(self, text: str, reply: str, started: float, first_token_at: float | None) -> None:
        ended = time.perf_counter()
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        self.timings = {
            "total_ms": round((ended - started) * 1000, 2),
            "first_token_ms": round(((first_token_at or ended) - started) * 1000, 2),
            "reply_tokens": len(self.engine.tokenize(reply)) if reply else 0,
        }


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()
