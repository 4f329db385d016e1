"""Classification head files: their format, which head fits a role and model, and scoring with one.

A classify role may name a head file (`head: route.head.npz`, beside the role's YAML). A head is a
logistic regression over either the model's final hidden state, folded into weights over the
next-token logits (llama.cpp's logits are W @ h, so a head on h is a head on the logits and costs one
matrix-vector product), or over a middle block's output (mean over the input's tokens, and the last
token), which the engine copies out mid-decode. It may be blended with the role's label logits.

A head is only valid for the model and the prompt it was trained with: the file records the model's
identity (name, architecture, n_embd, n_vocab, file size) and a fingerprint of the role's prompt.
When either differs, the role falls back to its label logits with a one-time warning, never applying
weights of the wrong shape or meaning. Training is head_training.py; measurements are in
docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RoleError
from .hashing import recorded_sha256
from .numeric import log_softmax

HEAD_FORMAT = 3  # 1: weights over the hidden state (retired: it cost a second decode); 2: no layer heads
READABLE_FORMATS = (2, 3)
log = logging.getLogger("edgeqwen.head")
_warned: set[tuple[str, str]] = set()


def model_identity(engine: Any) -> dict[str, Any]:
    """What ties a head to a model file: cheap to compute at load (no hash of the whole file)."""
    info = engine.info
    identity = {
        "name": info.name,
        "architecture": info.architecture,
        "n_embd": int(engine.n_embd),
        "n_vocab": int(engine.n_vocab),
        "file_size": int(info.file_size),
    }
    sha256 = recorded_sha256(Path(info.path))  # when a stamp records it (fetch and quantize write one)
    return {**identity, "sha256": sha256} if sha256 else identity


def prompt_fingerprint(role: Any) -> str:
    """sha256 of what shapes the hidden state the head reads: the system prompt, examples and template
    of the prompt it reads the text through (Role.head_prompt), and the role's labels."""
    prompt = role.head_prompt
    payload = json.dumps(
        {"prefix": prompt.prefix_messages(), "template": prompt.template, "labels": role.label_names},
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def text_key(text: str) -> str:
    """A short hash of a training text, so evaluation can leave training texts out."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Head:
    labels: tuple[str, ...]
    weight: np.ndarray  # (n_labels, n_vocab) over the next-token logits, or (n_labels, 2 n_embd) over layer_features
    bias: np.ndarray  # (n_labels,)
    blend: float  # weight of the head's log-probabilities against the label logits' (1: the head alone)
    model: dict[str, Any]
    prompt_sha256: str
    layer: int | None = None  # the block whose output the head reads; None: the final state, through the logits
    # A block head's rows end with the user's message (the role template's last token): the chat
    # template's end of turn and reply header are then never evaluated. False: they end after them.
    to_message: bool = False
    trained_on: frozenset[str] = frozenset()
    meta: dict[str, Any] = field(default_factory=dict)

    def scores(self, features: np.ndarray, label_scores: np.ndarray | None = None) -> np.ndarray:
        """Label scores (in `labels` order) from what the head reads (the next-token logits, or
        layer_features for a layer head), blended with the role's own label scores (its label
        tokens' logits) when `blend` < 1."""
        head = self.weight @ np.asarray(features, dtype=np.float64) + self.bias
        if self.blend >= 1 or label_scores is None:
            return head
        return blend_scores(head, label_scores, self.blend)

    @property
    def reads(self) -> str:
        """What the head reads, in words (reports)."""
        if self.layer is None:
            return "the final hidden state"
        return (f"block {self.layer}'s output (mean over the input, last token"
                f"{' of the message' if self.to_message else ''})")

    def reordered(self, labels: list[str]) -> "Head":
        order = [self.labels.index(name) for name in labels]
        return replace(self, labels=tuple(labels), weight=self.weight[order], bias=self.bias[order])

    def mismatch(self, model: dict[str, Any], prompt_sha256: str, labels: list[str]) -> str | None:
        """Why this head cannot serve the loaded model and role, or None when it can."""
        if sorted(self.labels) != sorted(labels):
            return f"its labels {list(self.labels)} are not the role's {labels}"
        differs = [key for key in ("architecture", "n_embd", "n_vocab", "name", "file_size")
                   if self.model.get(key) != model.get(key)]
        if self.model.get("sha256") and model.get("sha256") and self.model["sha256"] != model["sha256"]:
            differs.append("sha256")
        if differs:
            return (f"it was trained on another model ({self.model.get('name')}, n_embd {self.model.get('n_embd')}; "
                    f"differs in {', '.join(differs)})")
        if self.prompt_sha256 != prompt_sha256:
            return "the role's prompt changed since it was trained"
        return None


def save_head(path: str | Path, head: Head) -> None:
    """Write a head file; written under a temporary name and renamed, so an interruption leaves no half file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.part")
    try:
        with open(partial, "wb") as handle:
            _write_head(handle, head)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write_head(handle: Any, head: Head) -> None:
    np.savez(
        handle,
        format=np.array(HEAD_FORMAT),
        labels=np.array(head.labels, dtype=str),
        weight=head.weight.astype(np.float32),
        bias=head.bias.astype(np.float32),
        blend=np.array(head.blend),
        model=np.array(json.dumps(head.model)),
        prompt_sha256=np.array(head.prompt_sha256),
        layer=np.array(-1 if head.layer is None else head.layer),
        to_message=np.array(head.to_message),
        trained_on=np.array(sorted(head.trained_on), dtype=str),
        meta=np.array(json.dumps(head.meta, ensure_ascii=False)),
    )


def load_head(path: str | Path) -> Head:
    """Read a head file; a missing, broken or inconsistent file is a one-line RoleError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) not in READABLE_FORMATS:
                raise RoleError(f"{path}: head format {int(data['format'])} is not one of {READABLE_FORMATS}; retrain "
                                "it")
            layer = int(data["layer"]) if "layer" in data.files else -1
            head = Head(
                labels=tuple(str(x) for x in data["labels"]),
                weight=data["weight"].astype(np.float64),
                bias=data["bias"].astype(np.float64),
                blend=float(data["blend"]),
                model=json.loads(str(data["model"])),
                prompt_sha256=str(data["prompt_sha256"]),
                layer=None if layer < 0 else layer,
                to_message="to_message" in data.files and bool(data["to_message"]),
                trained_on=frozenset(str(x) for x in data["trained_on"]),
                meta=json.loads(str(data["meta"])),
            )
    except RoleError:
        raise
    except FileNotFoundError:
        raise RoleError(f"{path}: head file not found") from None
    except Exception as error:  # zip, npz key or JSON problems: all mean a broken file
        raise RoleError(f"{path}: not a valid head file ({type(error).__name__}: {error})") from None
    n_labels = head.weight.shape[0] if head.weight.ndim == 2 else 0
    if n_labels != len(head.labels) or n_labels < 2 or head.bias.shape != (n_labels,) or not 0 <= head.blend <= 1:
        raise RoleError(f"{path}: not a valid head file (inconsistent shapes or blend)")
    return head


def role_head_path(role: Any) -> Path | None:
    return Path(role.source).parent / role.head if getattr(role, "head", None) else None


def model_heads_dir(model_path: str | Path) -> Path:
    """Where heads trained for one model file live, so they need no edit of the roles: beside the
    model, `<model stem>.heads/` (`edgeqwen heads` writes them there)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".heads")


def heads_command(model_path: str | Path, role: Any) -> str:
    """The command that trains `role`'s head for this model file."""
    data = "" if getattr(role, "training", None) else " --data LABELLED.jsonl"
    return f"edgeqwen heads --model {model_path} --role {role.name}{data}"


def head_for(engine: Any, role: Any) -> Head | None:
    """The role's head that fits the loaded model and the role's prompt: first the one trained for
    this model file (`<model stem>.heads/<role's head file>`), then the one beside the role. None
    when neither exists or fits; a misfit is warned once, with the command that trains a fitting one."""
    beside = role_head_path(role)
    candidates = [p for p in (model_heads_dir(engine.info.path) / role.head_file, beside)
                  if p is not None and p.exists()]
    reason = None
    for candidate in candidates:
        head = load_head(candidate)
        reason = head.mismatch(model_identity(engine), prompt_fingerprint(role),
                               role.label_names) or _shape_problem(head, engine)
        if reason is None:
            return head.reordered(role.label_names)
    if reason is not None and (str(candidates[0]), reason) not in _warned:
        _warned.add((str(candidates[0]), reason))
        log.warning(f"warning: {candidates[0]}: head not used, {reason}; role '{role.name}' uses its label logits "
                    f"(train its head for this model: {heads_command(engine.info.path, role)})")
    return None


def _shape_problem(head: Head, engine: Any) -> str | None:
    if head.layer is not None and head.layer not in engine.readable_layers:
        return f"it reads block {head.layer}, which this model ({engine.n_layer} blocks) cannot give"
    width = engine.n_vocab if head.layer is None else 2 * engine.n_embd
    if head.weight.shape[1] != width:
        return f"its width {head.weight.shape[1]} is not the {width} it reads from this model"
    return None


def layer_features(states: np.ndarray) -> np.ndarray:
    """What a layer head reads from a block's output rows (one per token after the role's fixed
    prefix): their mean, which sees the whole input, and the last row, where the prompt asks."""
    states = np.asarray(states, dtype=np.float64)
    return np.concatenate([states.mean(axis=0), states[-1]])


def blend_scores(head_scores: np.ndarray, label_scores: np.ndarray, blend: float) -> np.ndarray:
    """The head's and the label logits' log-probabilities, weighted `blend` and 1 - `blend` (rows or one vector)."""
    return blend * log_softmax(head_scores) + (1 - blend) * log_softmax(label_scores)
