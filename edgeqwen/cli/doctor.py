"""`edgeqwen doctor`: this board's RAM, cores and CPU features, the llama.cpp build, and settings that fit."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from .. import settings
from .options import ModelOption


def doctor(
    model: ModelOption = None,
    ctx: Annotated[Optional[int], typer.Option("--ctx", min=settings.MIN_N_CTX, help=f"Check this context size too (default: {settings.N_CTX}).")] = None,
    ram_mb: Annotated[Optional[int], typer.Option("--ram-mb", min=1, help="Plan for a board with this much available RAM (MiB) instead of this one.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check this board: RAM, cores, CPU features, the llama.cpp build, and the --ctx/--threads that fit the model.

    \b
    Examples:
      edgeqwen doctor
      edgeqwen doctor --ram-mb 1024 --model models/qwen1.5-0.5b-chat-q4_k_m.gguf   # plan for a 1 GB board
    """
    from ..doctor import diagnose, format_report

    report = diagnose(model, ram_bytes=ram_mb * (1 << 20) if ram_mb else None, n_ctx=ctx)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        for line in format_report(report):
            typer.echo(line, err=line.startswith("warning:"))
    if report.model_error:
        raise typer.Exit(1)
