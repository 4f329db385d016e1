"""`edgeqwen doctor`: this board's RAM, cores and CPU features, the llama.cpp build, and settings that fit."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from .. import settings
from .options import KvCacheOption, ModelOption


def doctor(
    model: ModelOption = None,
    ctx: Annotated[Optional[int], typer.Option(
        "--ctx", min=settings.MIN_N_CTX,
        help="Plan with this context size (default: the largest that fits, up to 2048).",
    )] = None,
    kv_cache: KvCacheOption = None,
    ram_mb: Annotated[Optional[int], typer.Option("--ram-mb", min=1, help=(
        f"Plan for a board with this much RAM (MiB) instead of this one (as ${settings.ENV_MEMORY} does for every "
        "command)."))] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check this board: RAM, cores, CPU features, the llama.cpp build, and the --ctx/--kv-cache/--threads \
every command picks for the model here.

    \b
    Examples:
      edgeqwen doctor
      edgeqwen doctor --ram-mb 1024 --model models/qwen1.5-0.5b-chat-q4_k_m.gguf   # plan for a 1 GB board
    """
    from ..doctor import diagnose, format_report

    report = diagnose(model, ram_bytes=ram_mb * (1 << 20) if ram_mb else None, n_ctx=ctx, kv_cache=kv_cache)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        for line in format_report(report):
            typer.echo(line, err=line.startswith(("warning:", "error:")))
    if report.model_error or report.build_error:
        raise typer.Exit(1)
