"""The sentiment smoke check after `edgeqwen quantize`: a freshly built model labels a few clear examples."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .api import EdgeQwen
from .convert.manifest import update_manifest

# (text, expected sentiment label): clear cases any working model gets right.
EXAMPLES = (
    ("这家餐厅的服务太差了，我再也不会来了。", "negative"),
    ("房间干净，早餐丰富，下次还会再来。", "positive"),
    ("The battery life is amazing and the screen is gorgeous.", "positive"),
    ("Terrible product: it broke after one day and support never answered.", "negative"),
)


def smoke_check(model: Path, threads: int | None = None, log: Callable[[str], None] = print) -> int:
    """Label EXAMPLES with `model`, log each, record them in the model's manifest; returns how many were right."""
    eq = EdgeQwen(model, n_ctx=512, threads=threads)
    checks = []
    for text, expected in EXAMPLES:
        label = eq.sentiment(text)
        checks.append({"text": text, "expected": expected, "label": label.label, "confidence": round(label.confidence, 3)})
        log(f"sentiment {'ok ' if label.label == expected else 'MISS'} {label.label:<8} {label.confidence:.2f}  {text}")
    correct = sum(c["label"] == c["expected"] for c in checks)
    update_manifest(model, sentiment_smoke_check={"correct": correct, "total": len(checks), "results": checks})
    return correct
