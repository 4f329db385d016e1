"""Classify roles: one label of the role's fixed set for a text, with its confidence.

The label comes from a trained head (head.py) when the role has one that fits the model, else from
the label tokens' logits (one evaluation), else from grammar-constrained decoding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import EngineLike, common_prefix_length
from .errors import RoleError
from .grammar import label_grammar
from .head import Head, head_for, layer_features
from .numeric import softmax
from .prompt_fit import FittedPrompt, fit_prompt, fixed_prefix
from .roles import Role
from .text import clean_text


def label_token_problem(engine: EngineLike, label: str) -> str | None:
    """Why the loaded model cannot produce `label` as plain text, or None.

    Role files are checked for chat markup such as <|im_end|> when they are read (roles.py); which
    other strings are control tokens is known only once the model is: Qwen2.5's <tool_call> is one,
    and llama.cpp matches it even in text tokenized without special tokens.
    """
    if engine.is_plain_text(label):
        return None
    return ("is a control token of this model" if len(engine.tokenize(label, special=True)) == 1
            else "contains a control token of this model")


def check_labels(engine: EngineLike, roles: Iterable[Role]) -> None:
    """Refuse a classify role with a label that is (or contains) a control token of the loaded model,
    in one line naming the role file and the field."""
    for role in roles:
        if role.kind != "classify":
            continue
        for index, name in enumerate(role.label_names):
            problem = label_token_problem(engine, name)
            if problem:
                raise RoleError(f"{role.source}: field 'labels.{index}.name': label {name!r} {problem}; pick plain "
                                "words")


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


@dataclass
class Read:
    """What the model gave for one prompt of a classify role (Classifier.read_many)."""

    layers: dict[int, np.ndarray]  # block -> head.layer_features of its output
    logits: np.ndarray | None  # next-token logits
    label_scores: np.ndarray  # the label tokens' calibrated logits (zeros without logits or single-token labels)


class Classifier:
    """Runs one classify role; the answer is always exactly one of the role's labels."""

    def __init__(self, engine: EngineLike, role: Role, *, use_head: bool = True, for_head: bool = False) -> None:
        role.require_kind("classify")
        check_labels(engine, [role])
        self.engine = engine
        self.role = role
        self._sequences = [engine.tokenize(name) for name in role.label_names]
        self._label_ids = [seq[0] for seq in self._sequences]  # each label's first token
        # One distinct token per label: the grammar-constrained greedy choice is the arg-max of
        # those tokens' logits, so one evaluation decides and no grammar is needed.
        self.single_token = (all(len(seq) == 1 for seq in self._sequences)
                             and len(set(self._label_ids)) == len(self._label_ids))
        if role.calibration != "none" and not self.single_token:
            raise RoleError(f"{role.source}: field 'calibration': needs labels that are single tokens for this model")
        self._grammar = None if self.single_token else label_grammar(role.label_names)
        # A trained head, when the role names one that fits this model and the prompt it reads.
        self.head: Head | None = head_for(engine, role) if use_head else None
        # Texts go through the prompt the head reads (also when reading features to train one: for_head),
        # which may be another role's (Role.head_prompt); the label logits need the role's own.
        self.prompt: Role = role.head_prompt if self.head is not None or for_head else role
        self._prefix = fixed_prefix(engine, self.prompt)
        self._reply_header = engine.reply_header_length()
        self._bias: np.ndarray | None = None

    def classify(self, text: str) -> Classification:
        return self.classify_many([text])[0]

    def classify_many(self, texts: Sequence[str]) -> list[Classification]:
        """One Classification per text, in order. Texts are evaluated together as far as the engine
        allows (Engine.evaluate_many); with a head that reads a middle block alone, llama.cpp stops
        after that block."""
        started = time.perf_counter()
        prompts = [fit_prompt(self.engine, self.prompt, clean_text(text), prefix=self._prefix) for text in texts]
        if self.head is None and not self.single_token:
            scored = [self._decode_label(prompt) for prompt in prompts]
        else:
            scored = [self._label_and_scores(self._head_scores(read) if self.head else read.label_scores)
                      for read in self._read(prompts)]
        each_ms = (time.perf_counter() - started) * 1000 / max(1, len(texts))
        return [self._result(label, scores, prompt, each_ms, len(texts))
                for (label, scores), prompt in zip(scored, prompts)]

    def shares_read_with(self, other: Classifier) -> bool:
        """Both decide by heads on blocks alone (no logits) and read texts through the same prompt, so
        one evaluation can serve both (classify_with)."""
        pair = (self, other)
        return (all(c.head is not None and c.head.layer is not None and c.head.blend == 1 for c in pair)
                and self.prompt is other.prompt and self.head.to_message == other.head.to_message)

    def classify_with(self, other: Classifier, text: str) -> tuple[Classification, Classification]:
        """This role's and `other`'s labels for `text` from one evaluation, stopped at the higher of
        their heads' blocks; shares_read_with(other) must hold."""
        if not self.shares_read_with(other):
            raise ValueError(f"roles '{self.role.name}' and '{other.role.name}' do not read texts alike")
        started = time.perf_counter()
        prompt = fit_prompt(self.engine, self.prompt, clean_text(text), prefix=self._prefix)
        (read,) = self._read([prompt], sorted({self.head.layer, other.head.layer}), logits=False,
                             to_message=self.head.to_message)
        each_ms = (time.perf_counter() - started) * 1000
        return self._from_read(read, prompt, each_ms), other._from_read(read, prompt, each_ms)

    def _from_read(self, read: Read, prompt: FittedPrompt, each_ms: float) -> Classification:
        label, scores = self._label_and_scores(self._head_scores(read))
        return self._result(label, scores, prompt, each_ms, 1)

    def read_many(self, texts: Sequence[str], layers: Sequence[int] = (), logits: bool = True,
                  to_message: bool = False) -> list[Read]:
        """What heads are trained on, per text: each block's layer features (with `to_message`, of the
        rows up to the end of the user's message), the next-token logits and the calibrated label
        scores (zeros when the labels are not single tokens)."""
        prompts = [fit_prompt(self.engine, self.prompt, clean_text(text), prefix=self._prefix) for text in texts]
        return self._read(prompts, layers, logits, to_message)

    def _read(self, prompts: list[FittedPrompt], layers: Sequence[int] | None = None, logits: bool | None = None,
              to_message: bool = False) -> list[Read]:
        """Read `prompts` for this role's head (or `layers` and `logits` if given), evaluated together
        where they share a start: the fixed prefix, or in the rare prompt whose input merges into the
        prefix's last token, what it shares of it."""
        if layers is None:
            layers = [self.head.layer] if self.head is not None and self.head.layer is not None else []
            logits = not layers or (self.head is not None and self.head.blend < 1 and self.single_token)
            to_message = self.head is not None and self.head.to_message
        if logits and self.single_token:
            self._calibration_bias()  # evaluated once, before the batch
        by_start: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_start.setdefault(prompt.fixed or common_prefix_length(self._prefix, prompt.tokens), []).append(index)
        # Rows read to the end of the user's message: the reply header after it is needed only for the
        # logits, so without them it is not evaluated at all.
        past_message = self._reply_header if to_message else 0
        unread = 0 if logits else past_message
        reads: list[Read | None] = [None] * len(prompts)
        for start, indices in by_start.items():
            results = self.engine.evaluate_many([prompts[i].tokens[: len(prompts[i].tokens) - unread]
                                                 for i in indices], start,
                                                layers=layers, logits=bool(logits))
            for index, result in zip(indices, results):
                label_scores = (self._label_scores(result.logits) if result.logits is not None and self.single_token
                                else np.zeros(len(self._sequences)))
                read_rows = {layer: rows[: len(rows) - (past_message - unread)]
                             for layer, rows in result.states.items()}
                reads[index] = Read({layer: layer_features(rows) for layer, rows in read_rows.items()}, result.logits,
                                    label_scores)
        return reads

    def _head_scores(self, read: Read) -> np.ndarray:
        features = read.logits if self.head.layer is None else read.layers[self.head.layer]
        return self.head.scores(features, read.label_scores if read.logits is not None and self.single_token else None)

    def _label_and_scores(self, scores: np.ndarray) -> tuple[str, np.ndarray]:
        return self.role.label_names[int(np.argmax(scores))], scores

    def _decode_label(self, prompt: FittedPrompt) -> tuple[str, np.ndarray]:
        """Labels of several tokens: greedy decoding under the label grammar, scored by each label's log-probability."""
        label = self.engine.constrained_choice(prompt.tokens, self._grammar, keep_prefix=prompt.fixed)
        return label, np.array([self.engine.sequence_logprob(prompt.tokens, seq, prompt.fixed)
                                for seq in self._sequences])

    def _result(self, label: str, scores: np.ndarray, prompt: FittedPrompt, each_ms: float,
                batch: int) -> Classification:
        probabilities = softmax(scores)
        return Classification(
            role=self.role.name,
            label=label,
            display=self.role.label(label).shown,
            confidence=float(probabilities[self.role.label_names.index(label)]),
            scores={name: float(p) for name, p in zip(self.role.label_names, probabilities)},
            truncated=prompt.truncated,
            timings={"total_ms": round(each_ms, 2), "prompt_tokens": len(prompt.tokens), "batch": batch},
        )

    def _label_scores(self, logits: np.ndarray) -> np.ndarray:
        """The label tokens' logits, minus the role's calibration bias."""
        return logits[self._label_ids].astype(np.float64) - self._calibration_bias()

    def _calibration_bias(self) -> np.ndarray:
        """Content-free calibration: the label preference the model shows for an empty input."""
        if self.role.calibration == "none":
            return np.zeros(len(self._sequences))
        if self._bias is None:
            prompts = [fit_prompt(self.engine, self.prompt, filler, prefix=self._prefix) for filler in ("N/A", "…")]
            neutral = [self.engine.next_token_logits(p.tokens, keep_prefix=p.fixed)[self._label_ids] for p in prompts]
            bias = np.mean(neutral, axis=0, dtype=np.float64)
            self._bias = bias - bias.mean()
        return self._bias
