"""The numbers behind a classification head: multinomial logistic regression in numpy, the L2 penalty
and the blend with the label logits chosen by cross-validation, a stratified split, and the final
hidden state recovered from the logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..evaluate import Item
from ..head import blend_scores
from ..numeric import softmax


def unstandardize(weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                  scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A regression over standardised features ((x - mean) / scale) as one over raw features."""
    per_unit = weight / scale
    return per_unit, bias - per_unit @ mean


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                 steps: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features, L2-penalised, full-batch gradient descent.

    Returns (weight, bias, mean, scale). The loss is convex, so plain gradient descent with a step
    size from the data's Lipschitz bound converges; a few hundred steps on a few hundred examples
    take well under a second.
    """
    mean, scale, z = standardise(x)
    n, d = z.shape
    onehot = np.eye(n_classes)[y]
    w = np.zeros((n_classes, d))
    b = np.zeros(n_classes)
    # Lipschitz constant of the gradient: ||Z||^2 / (2n) for softmax, plus the penalty.
    step = 1.0 / (np.linalg.norm(z, 2) ** 2 / (2 * n) + l2 + 1e-9)
    for _ in range(steps):
        g = (softmax(z @ w.T + b) - onehot) / n
        w -= step * (g.T @ z + l2 * w)
        b -= step * g.sum(axis=0)
    return w, b, mean, scale


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, standardised rows) of the features, as every head is fitted."""
    x = np.asarray(x, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    return mean, scale, (x - mean) / scale


def fold_parts(n: int, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """The row indices of each cross-validation fold: a seeded shuffle cut into `folds` parts."""
    return np.array_split(np.random.default_rng(seed).permutation(n), min(folds, n))


def predict_logistic(x: np.ndarray, w: np.ndarray, b: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.argmax(((np.asarray(x, dtype=np.float64) - mean) / scale) @ w.T + b, axis=1)


def choose_l2(x: np.ndarray, y: np.ndarray, n_classes: int, grid=(0.001, 0.01, 0.1, 1.0), folds: int = 5,
              seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick the penalty by k-fold cross-validation on the training split only."""
    parts = fold_parts(len(y), folds, seed)
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
    parts = fold_parts(len(y), folds, seed)
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

    def fold(self, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray,
             scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A head over standardised hidden states as (weight over the logits, bias)."""
        per_unit, raw_bias = unstandardize(weight, bias, mean, scale)
        through_gram = np.linalg.solve(self.gram, per_unit.T)
        return (self.output @ through_gram.astype(np.float32)).T.astype(np.float64), raw_bias


def split_items(items: Sequence[Item], train_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Fixed-seed split, stratified by (lang, gold): indices of the training and held-out parts."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item.lang, item.gold), []).append(i)
    train: list[int] = []
    for key in sorted(groups, key=str):
        members = np.array(groups[key])
        rng.shuffle(members)
        train += members[: int(round(len(members) * train_fraction))].tolist()
    train_set = set(train)
    return sorted(train_set), [i for i in range(len(items)) if i not in train_set]
