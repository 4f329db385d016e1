"""`edgeqwen chat-check`: chat replies judged for language, parroting, loops and memory, with their speed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (
    CtxOption, JsonReportOption, LimitOption, ModelOption, PromptsOption, SeedOption, ThreadsOption,
    open_model, write_report,
)


def chat_check(
    data: Annotated[list[Path], typer.Argument(help="Prompt files: JSON Lines with lang and turns (docs/evaluation.md).")],
    sampling: Annotated[str, typer.Option(
        "--sampling", help="greedy, sampled (the role's own settings) or both.")] = "both",
    max_tokens: Annotated[Optional[int], typer.Option(
        "--max-tokens", min=1, help="Cap each reply (default: the role's max_tokens).")] = None,
    limit: LimitOption = None,
    seed: SeedOption = 0,
    json_out: JsonReportOption = None,
    model: ModelOption = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
) -> None:
    """Judge the chat role's replies to prompt files: language, parroting, loops, empty or cut replies, memory; first-token latency and decode speed.

    \b
    Examples:
      edgeqwen chat-check scripts/data/chat.eval.jsonl --json chat.json   # greedy and the role's own sampling
      edgeqwen chat-check my_prompts.jsonl --sampling greedy --max-tokens 128 -m models/x.gguf
    """
    from ..api import check_choice
    from ..chat_check import MODES, format_report, read_prompts, run_chat_check
    from ..evaluate import Progress

    modes = MODES if check_choice("--sampling", sampling, (*MODES, "both")) == "both" else (sampling,)
    items = read_prompts(data, limit)  # bad prompt files fail before the model loads
    eq = open_model(model, ctx=ctx, threads=threads, prompts=prompts)
    bar = Progress(len(modes) * sum(len(item.turns) for item in items), enabled=True)
    try:
        result = run_chat_check(eq, items, modes=modes, max_tokens=max_tokens, seed=seed, on_reply=bar.advance)
    finally:
        bar.close()
    model_name = eq.model_info.path.name
    typer.echo(f"data: {', '.join(map(str, data))}  ({len(items)} prompts, model {model_name}, role chat)")
    typer.echo(format_report(result))
    write_report(json_out, {"data": [str(p) for p in data], "model": model_name, **result})
