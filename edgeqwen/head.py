"""Classification heads: a small logistic regression over the model's final hidden state (applied
through the next-token logits) or over a middle block's output.

A classify role may name a head file (`head: route.head.npz`, beside the role's YAML). The head is
trained on the hidden state h the model computes at the end of the role's prompt, but it is stored and
applied as weights over the logits: llama.cpp's logits are W @ h (the output layer, no bias), so h is
the least-squares solution of W h = logits, and the regression folds into one (n_labels, n_vocab)
matrix. A head then costs one matrix-vector product (under a millisecond) on the logits the label
decision computes anyway. Reading the hidden state itself needs embeddings on, with which llama.cpp
outputs every token of a batch, so the last token had to be decoded alone: +15 % per call, measured.
A head may be blended with the role's label logits, at a weight chosen by cross-validation on the
training texts.

A head may instead read a middle block's output (`edgeqwen eval --train-head ... --head-layer N`):
the mean of its rows over the input's tokens and its last row, which llama.cpp computes anyway and
the engine copies out mid-decode. On the stand-in, the router's head reads better there than at the
final state, which is shaped for predicting the next token.

A head is only valid for the model and the prompt it was trained with: the file records the model's
identity (name, architecture, n_embd, n_vocab, file size) and a fingerprint of the role's prompt. When
either differs, the role falls back to its label logits with a one-time warning, never applying
weights of the wrong shape or meaning. Heads are trained with numpy only (`edgeqwen eval --train-head`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RoleError

HEAD_FORMAT = 3  # 1: weights over the hidden state (retired: it cost a second decode); 2: no layer heads
READABLE_FORMATS = (2, 3)
log = logging.getLogger("edgeqwen.head")
_warned: set[tuple[str, str]] = set()


def model_identity(engine: Any) -> dict[str, Any]:
    """What ties a head to a model file: cheap to compute at load (no hash of the whole file)."""
    info = engine.info
    return {
        "name": info.name,
        "architecture": info.architecture,
        "n_embd": int(engine.n_embd),
        "n_vocab": int(engine.n_vocab),
        "file_size": int(info.file_size),
    }


def prompt_fingerprint(role: Any) -> str:
    """sha256 of what shapes the hidden state: system prompt, examples, template and labels."""
    payload = json.dumps(
        {"prefix": role.prefix_messages(), "template": role.template, "labels": role.label_names},
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
        return "the final hidden state" if self.layer is None else f"block {self.layer}'s output (mean over the input, last token)"

    def reordered(self, labels: list[str]) -> "Head":
        order = [self.labels.index(name) for name in labels]
        return replace(self, labels=tuple(labels), weight=self.weight[order], bias=self.bias[order])

    def mismatch(self, model: dict[str, Any], prompt_sha256: str, labels: list[str]) -> str | None:
        """Why this head cannot serve the loaded model and role, or None when it can."""
        if sorted(self.labels) != sorted(labels):
            return f"its labels {list(self.labels)} are not the role's {labels}"
        differs = [key for key in ("architecture", "n_embd", "n_vocab", "name", "file_size") if self.model.get(key) != model.get(key)]
        if differs:
            return f"it was trained on another model ({self.model.get('name')}, n_embd {self.model.get('n_embd')}; differs in {', '.join(differs)})"
        if self.prompt_sha256 != prompt_sha256:
            return "the role's prompt changed since it was trained (retrain it with edgeqwen eval --train-head)"
        return None


def save_head(path: str | Path, head: Head) -> None:
    np.savez(
        Path(path),
        format=np.array(HEAD_FORMAT),
        labels=np.array(head.labels, dtype=str),
        weight=head.weight.astype(np.float32),
        bias=head.bias.astype(np.float32),
        blend=np.array(head.blend),
        model=np.array(json.dumps(head.model)),
        prompt_sha256=np.array(head.prompt_sha256),
        layer=np.array(-1 if head.layer is None else head.layer),
        trained_on=np.array(sorted(head.trained_on), dtype=str),
        meta=np.array(json.dumps(head.meta, ensure_ascii=False)),
    )


def load_head(path: str | Path) -> Head:
    """Read a head file; a missing, broken or inconsistent file is a one-line RoleError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) not in READABLE_FORMATS:
                raise RoleError(f"{path}: head format {int(data['format'])} is not one of {READABLE_FORMATS}; retrain it")
            layer = int(data["layer"]) if "layer" in data.files else -1
            head = Head(
                labels=tuple(str(x) for x in data["labels"]),
                weight=data["weight"].astype(np.float64),
                bias=data["bias"].astype(np.float64),
                blend=float(data["blend"]),
                model=json.loads(str(data["model"])),
                prompt_sha256=str(data["prompt_sha256"]),
                layer=None if layer < 0 else layer,
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
    model, `<model stem>.heads/` (`make heads MODEL=...` writes them there)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".heads")


def head_for(engine: Any, role: Any) -> Head | None:
    """The role's head that fits the loaded model and the role's prompt: first the one trained for
    this model file (in its heads folder), then the one beside the role. None when neither fits,
    warned once."""
    path = role_head_path(role)
    if path is None:
        return None
    for candidate in (model_heads_dir(engine.info.path) / path.name, path):
        if candidate == path or candidate.exists():
            head = load_head(candidate)
            reason = head.mismatch(model_identity(engine), prompt_fingerprint(role), role.label_names)
            if reason is None:
                reason = _shape_problem(head, engine)
            if reason is None:
                return head.reordered(role.label_names)
    if (str(path), reason) not in _warned:
        _warned.add((str(path), reason))
        log.warning(f"warning: {path}: head not used, {reason}; role '{role.name}' uses its label logits "
                    f"(train heads for this model: make heads MODEL={engine.info.path})")
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


def unstandardize(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A regression over standardised features ((x - mean) / scale) as one over raw features."""
    per_unit = weight / scale
    return per_unit, bias - per_unit @ mean


# -- training ---------------------------------------------------------------------------------


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, steps: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features, L2-penalised, full-batch gradient descent.

    Returns (weight, bias, mean, scale). The loss is convex, so plain gradient descent with a step
    size from the data's Lipschitz bound converges; a few hundred steps on a few hundred examples
    take well under a second.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    n, d = z.shape
    onehot = np.eye(n_classes)[y]
    w = np.zeros((n_classes, d))
    b = np.zeros(n_classes)
    # Lipschitz constant of the gradient: ||Z||^2 / (2n) for softmax, plus the penalty.
    step = 1.0 / (np.linalg.norm(z, 2) ** 2 / (2 * n) + l2 + 1e-9)
    for _ in range(steps):
        logits = z @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / n
        w -= step * (g.T @ z + l2 * w)
        b -= step * g.sum(axis=0)
    return w, b, mean, scale


def predict_logistic(x: np.ndarray, w: np.ndarray, b: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.argmax(((np.asarray(x, dtype=np.float64) - mean) / scale) @ w.T + b, axis=1)


def choose_l2(x: np.ndarray, y: np.ndarray, n_classes: int, grid=(0.001, 0.01, 0.1, 1.0), folds: int = 5, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick the penalty by k-fold cross-validation on the training split only."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    parts = np.array_split(order, min(folds, len(y)))
    results: dict[float, float] = {}
    for l2 in grid:
        correct = 0
        for k, held in enumerate(parts):
            train = np.concatenate([p for j, p in enumerate(parts) if j != k])
            if len(set(y[train])) < n_classes:
                continue
            w, b, mean, scale = fit_logistic(x[train], y[train], n_classes, l2)
            correct += int((predict_logistic(x[held], w, b, mean, scale) == y[held]).sum())
        results[l2] = correct / len(y)
    best = max(results, key=lambda l2: (results[l2], l2))  # ties: the stronger penalty
    return best, results


def choose_blend(x: np.ndarray, y: np.ndarray, label_scores: np.ndarray, n_classes: int, l2: float,
                 grid=(0.0, 0.25, 0.5, 0.75, 1.0), folds: int = 5, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick the head's weight against the label logits by k-fold cross-validation on the training
    split only: out-of-fold head scores, blended with the label scores at each weight in `grid`."""
    rng = np.random.default_rng(seed)
    parts = np.array_split(rng.permutation(len(y)), min(folds, len(y)))
    head_scores = np.zeros((len(y), n_classes))
    for k, held in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        w, b, mean, scale = fit_logistic(x[train], y[train], n_classes, l2)
        head_scores[held] = ((x[held] - mean) / scale) @ w.T + b
    results = {}
    for blend in grid:
        results[blend] = float((np.argmax(blend_scores(head_scores, label_scores, blend), axis=1) == y).mean())
    best = max(results, key=lambda blend: (results[blend], blend))  # ties: more of the head
    return best, results


class HiddenFromLogits:
    """Recovers the final hidden state from next-token logits, and folds a head trained on it into
    weights over the logits.

    `output` is the model's output layer W (n_vocab x n_embd, from models.output_matrix): logits =
    W @ hidden up to llama.cpp's rounding (it quantizes the hidden state for the product, about 1 %
    relative error here), so hidden = (W^T W)^-1 W^T logits. Training on this recovered state rather
    than on llama.cpp's own makes training and use see exactly the same numbers.
    """

    def __init__(self, output: np.ndarray, chunk: int = 16384) -> None:
        self.output = output
        n_embd = output.shape[1]
        self.gram = np.zeros((n_embd, n_embd))
        for start in range(0, output.shape[0], chunk):  # W^T W in float64 without a float64 copy of W
            rows = output[start:start + chunk].astype(np.float64)
            self.gram += rows.T @ rows

    def moments(self, logits: np.ndarray) -> np.ndarray:
        """W^T logits: n_embd numbers that keep all a head needs from one text's logits."""
        return self.output.T @ np.asarray(logits, dtype=np.float32)

    def hidden(self, moments: np.ndarray) -> np.ndarray:
        """The hidden states (rows) whose logits gave these moments (rows)."""
        return np.linalg.solve(self.gram, np.asarray(moments, dtype=np.float64).T).T

    def fold(self, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A head over standardised hidden states as (weight over the logits, bias)."""
        per_unit, raw_bias = unstandardize(weight, bias, mean, scale)
        through_gram = np.linalg.solve(self.gram, per_unit.T)
        return (self.output @ through_gram.astype(np.float32)).T.astype(np.float64), raw_bias


def blend_scores(head_scores: np.ndarray, label_scores: np.ndarray, blend: float) -> np.ndarray:
    """The head's and the label logits' log-probabilities, weighted `blend` and 1 - `blend` (rows or one vector)."""
    return blend * log_softmax(head_scores) + (1 - blend) * log_softmax(label_scores)


def log_softmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
