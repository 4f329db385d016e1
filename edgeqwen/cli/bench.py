"""`edgeqwen bench`: speed and memory on this board, beside plain llama-cpp-python, as a table and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import ModelOption, ThreadsOption


def bench(
    model: ModelOption = None,
    threads: ThreadsOption = None,
    ctx: Annotated[Optional[int], typer.Option(
        "--ctx", min=256, help="Context window in tokens. Default: the memory plan's, as for every command.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Repeat the short-input set this many times.")] = 1,
    json_path: Annotated[Optional[Path], typer.Option("--json",
                                                      help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Measure load time, time to first result, sentiment/router latency, chat speed and peak RSS.

    Plain llama-cpp-python (a naive grammar call, raw decode) and the compute floor are measured in
    the same run, and the ratios printed, so figures compare on a noisy machine. Takes a few minutes.
    """
    from ..bench import format_table, run_benchmark
    from ..model_paths import resolve_model

    figures = run_benchmark(resolve_model(model), threads, ctx, repeats, log=lambda m: typer.echo(m, err=True))
    typer.echo(format_table(figures))
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))
