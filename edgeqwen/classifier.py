"""Classify roles: one label of the role's fixed set for a text, with its confidence.

The label comes from a trained head (head.py) when the role has one that fits the model, else from
the label tokens' logits (one evaluation), else from grammar-constrained decoding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from .engine import Engine, common_prefix_length
from .errors import RoleError
from .grammar import label_grammar
from .head import Head, head_for, layer_features
from .numeric import softmax
from .prompt_fit import FittedPrompt, clean_text, fit_prompt, fixed_prefix
from .roles import Role


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
        role.require_kind("classify")
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
        probabilities = softmax(scores)
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
