"""Softmax and its relatives over numpy arrays, written once for every module that scores labels."""

from __future__ import annotations

import numpy as np


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """log of softmax over the last axis (rows or one vector), in float64."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(scores: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis."""
    return np.exp(log_softmax(scores))


def logsumexp(values: np.ndarray) -> float:
    """log(sum(exp(values))) of one vector, without overflow."""
    values = np.asarray(values, dtype=np.float64)
    peak = float(values.max())
    return peak + float(np.log(np.exp(values - peak).sum()))
