"""Verify a quantized GGUF against the unquantized one: next-token distributions on fixed prompts.

Both files are loaded with llama.cpp through edgeqwen.engine.Engine. For each prompt (Chinese and
English, in the model's chat template) the next-token distribution is taken at every position; the
figures are the share of positions where both models put the same token first (top-1 agreement)
and the mean Kullback-Leibler divergence KL(unquantized || quantized) in nats.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeqwen.errors import VerificationError
from edgeqwen.numeric import log_softmax

PROMPTS: tuple[str, ...] = (
    "这家餐厅的服务太差了，我再也不会来了。",
    "请用两句话介绍一下长城。",
    "今天天气很好，我们去公园散步吧。",
    "机器学习和深度学习有什么区别？",
    "The battery life is amazing and the screen is gorgeous.",
    "What should I cook tonight? Give me one quick idea.",
    "Explain in one sentence why the sky is blue.",
    "The delivery was late and the box was damaged.",
)
# Largest mean KL (nats) accepted per type; measured figures on Qwen-0.5B models are well below.
KL_LIMITS: dict[str, float] = {"F16": 0.002, "Q8_0": 0.02, "Q5_K_M": 0.08, "Q4_K_M": 0.15, "Q4_0": 0.3}
VERIFY_N_CTX = 256
# Positions compared per prompt: the last ones, i.e. the user's text and the start of the answer
# (the system-prompt prefix before them is near-deterministic and would only inflate agreement).
POSITIONS_PER_PROMPT = 16


@dataclass
class Verification:
    prompts: int
    positions: int
    top1_agreement: float
    mean_kl: float
    max_kl: float
    kl_limit: float
    passed: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_token_logprobs(model_path: Path, prompts: tuple[str, ...] = PROMPTS, *, threads: int | None = None,
                        positions: int = POSITIONS_PER_PROMPT) -> list[np.ndarray]:
    """Per prompt, an array [positions, n_vocab] of float32 log-probabilities after each of its last prefixes."""
    from edgeqwen.engine import Engine

    engine = Engine(model_path, n_ctx=VERIFY_N_CTX, n_threads=threads)
    out: list[np.ndarray] = []
    for prompt in prompts:
        tokens = engine.chat_tokens([{"role": "user", "content": prompt}])
        rows = [log_softmax(engine.next_token_logits(tokens[:i])).astype(np.float32)
                for i in range(max(1, len(tokens) - positions + 1), len(tokens) + 1)]
        out.append(np.stack(rows))
    del engine
    return out


def compare(reference: list[np.ndarray], candidate: list[np.ndarray], qtype: str, seconds: float = 0.0) -> Verification:
    kls: list[np.ndarray] = []
    agree = 0
    total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        p_log, q_log = ref.astype(np.float64), cand.astype(np.float64)
        kls.append((np.exp(p_log) * (p_log - q_log)).sum(axis=1))
        agree += int((ref.argmax(axis=1) == cand.argmax(axis=1)).sum())
        total += ref.shape[0]
    kl = np.concatenate(kls)
    limit = KL_LIMITS.get(qtype, KL_LIMITS["Q4_0"])
    mean_kl = float(max(kl.mean(), 0.0))
    return Verification(
        prompts=len(reference), positions=total, top1_agreement=round(agree / total, 4),
        mean_kl=round(mean_kl, 6), max_kl=round(float(kl.max()), 6), kl_limit=limit,
        passed=bool(mean_kl <= limit), seconds=round(seconds, 2),
    )


def verify_quantized(reference_path: Path, quantized_path: Path, qtype: str, *, threads: int | None = None,
                     prompts: tuple[str, ...] = PROMPTS, strict: bool = True) -> Verification:
    """Compare the two files; raises VerificationError when the mean KL is over the limit (strict)."""
    started = time.perf_counter()
    reference = next_token_logprobs(reference_path, prompts, threads=threads)
    candidate = next_token_logprobs(quantized_path, prompts, threads=threads)
    result = compare(reference, candidate, qtype, time.perf_counter() - started)
    if strict and not result.passed:
        raise VerificationError(
            f"{qtype} model diverges from the unquantized one: mean KL {result.mean_kl:.4f} > limit {result.kl_limit} "
            f"(top-1 agreement {result.top1_agreement:.1%}); the output was not kept"
        )
    return result
