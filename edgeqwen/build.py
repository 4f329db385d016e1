"""The quantize build (`edgeqwen quantize`, `make quantize`): the converter's GGUF, then what makes it
ready to use: the shipped roles' heads trained for it and a sentiment smoke check, both recorded in
its manifest. The converter (convert/) imports no task code; this module joins it to the roles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .api import EdgeQwen
from .convert import QuantizeOptions, QuantizeResult, planned_output, run_quantize
from .convert.manifest import update_manifest
from .training.model_heads import HeadResult, format_summary, train_model_heads

Log = Callable[[str], None]
# (text, expected sentiment label): clear cases any working model gets right.
SMOKE_EXAMPLES = (
    ("这家餐厅的服务太差了，我再也不会来了。", "negative"),
    ("房间干净，早餐丰富，下次还会再来。", "positive"),
    ("The battery life is amazing and the screen is gorgeous.", "positive"),
    ("Terrible product: it broke after one day and support never answered.", "negative"),
)


@dataclass
class Build:
    """What the build produced: the converter's result, the heads trained, the smoke check's score."""

    quantized: QuantizeResult
    heads: list[HeadResult] = field(default_factory=list)
    smoke_correct: int | None = None

    @property
    def output(self) -> Path:
        return self.quantized.output


def build_model(options: QuantizeOptions, *, heads: bool = True, smoke: bool = True, log: Log = print) -> Build:
    """Fetch, convert, quantize and verify (run_quantize), then train the heads and run the smoke check."""
    build = Build(run_quantize(options, log=log))
    if heads:
        build.heads = train_heads(build.output, options.threads, options.progress, log)
    if smoke:
        build.smoke_correct = smoke_check(build.output, options.threads, log)
        if build.smoke_correct < len(SMOKE_EXAMPLES):
            log(f"warning: the sentiment smoke check got {build.smoke_correct}/{len(SMOKE_EXAMPLES)} right")
    return build


def interrupted_state(options: QuantizeOptions, started: float) -> str:
    """What an interrupt at this moment left behind, in one message: the model is renamed into place
    only once verified, so a file newer than the build's start is usable, though maybe without heads."""
    built = planned_output(options)
    if not built.is_file() or built.stat().st_mtime < started:  # none, or an older build
        return "interrupted: no model was written"
    return (f"interrupted: the model is ready at {built}, but its heads may not be; finish with:\n"
            f"  edgeqwen heads --model {built}")


def train_heads(model: Path, threads: int | None, progress: bool, log: Log) -> list[HeadResult]:
    """The shipped roles' heads for the new model, with a summary, recorded in its manifest."""
    log("[heads] training the classification heads for this model (edgeqwen heads)")
    eq = EdgeQwen(model, threads=threads, router="rules")
    results = train_model_heads(eq, progress=progress, log=log)
    update_manifest(model, heads=[result.to_dict() for result in results])
    for line in format_summary(results):
        log("  " + line)
    return results


def smoke_check(model: Path, threads: int | None = None, log: Log = print) -> int:
    """Label SMOKE_EXAMPLES with `model`, log each, record them in the manifest; returns how many were right."""
    eq = EdgeQwen(model, n_ctx=512, threads=threads)
    checks = []
    for text, expected in SMOKE_EXAMPLES:
        label = eq.sentiment(text)
        checks.append({"text": text, "expected": expected, "label": label.label,
                       "confidence": round(label.confidence, 3)})
        log(f"sentiment {'ok ' if label.label == expected else 'MISS'} {label.label:<8} {label.confidence:.2f}  {text}")
    correct = sum(c["label"] == c["expected"] for c in checks)
    update_manifest(model, sentiment_smoke_check={"correct": correct, "total": len(checks), "results": checks})
    return correct
