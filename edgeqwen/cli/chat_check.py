"""`edgeqwen chat-check`: chat replies judged for language, parroting, loops, memory, response and restatement."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    CtxOption,
    JsonReportOption,
    LimitOption,
    ModelOption,
    PromptsOption,
    SeedOption,
    ThreadsOption,
    open_model,
    write_report,
)


def chat_check(
    data: Annotated[list[Path], typer.Argument(
        help="Prompt files: JSON Lines with lang and turns (docs/evaluation.md).")],
    sampling: Annotated[str, typer.Option(
        "--sampling", help="greedy, sampled (the role's own settings) or both.")] = "both",
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", min=1, help="Cap each reply (default: the role's max_tokens).")] = None,
    label: Annotated[str, typer.Option("--label", help=(
        "off: each turn as --task chat; on: the sentiment label goes into the chat turn, as --task both; both."
    ))] = "both",
    kind: Annotated[Optional[list[str]], typer.Option(
        "--kind", help="Only prompts of this kind (repeatable), e.g. --kind review --kind statement.")] = None,
    limit: LimitOption = None,
    seed: SeedOption = 0,
    json_out: JsonReportOption = None,
    model: ModelOption = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
) -> None:
    """Judge the chat role's replies to prompt files: language, parroting, loops, empty or cut replies, memory,
    whether they respond to the person or restate them; first-token latency and decode speed.

    \b
    Examples:
      edgeqwen chat-check scripts/data/chat.eval.jsonl --json chat.json   # greedy and the role's own sampling
      edgeqwen chat-check my_prompts.jsonl --sampling greedy --max-tokens 128 -m models/x.gguf
      edgeqwen chat-check scripts/data/chat.heldout.jsonl --kind review --kind statement --label on
    """
    from ..api import check_choice
    from ..chat_check import LABELS, MODES, format_report, read_prompts, run_chat_check
    from ..evaluate import Progress

    modes = MODES if check_choice("--sampling", sampling, (*MODES, "both")) == "both" else (sampling,)
    labels = LABELS if check_choice("--label", label, (*LABELS, "both")) == "both" else (label,)
    items = read_prompts(data, limit, kind or ())  # bad prompt files fail before the model loads
    eq = open_model(model, ctx=ctx, threads=threads, prompts=prompts)
    bar = Progress(len(modes) * len(labels) * sum(len(item.turns) for item in items), enabled=True)
    try:
        result = run_chat_check(eq, items, modes=modes, labels=labels, max_tokens=max_tokens, seed=seed,
                                on_reply=bar.advance)
    finally:
        bar.close()
    model_name = eq.model_info.path.name
    typer.echo(f"data: {', '.join(map(str, data))}  ({len(items)} prompts, model {model_name}, role chat)")
    typer.echo(format_report(result))
    write_report(json_out, {"data": [str(p) for p in data], "model": model_name, **result})
