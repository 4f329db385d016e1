"""What every command shares: its options (written once), the one-line error exit, and progress on stderr."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from .. import settings

ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", help=f"GGUF file. Default: ${settings.ENV_MODEL}, then the model in models/.")]
PromptsOption = Annotated[Optional[Path], typer.Option("--prompts", help="Directory of role YAML files; adds to and overrides the shipped roles.")]
ThreadsOption = Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")]
CtxOption = Annotated[int, typer.Option("--ctx", min=settings.MIN_N_CTX, help="Context window in tokens (KV cache memory grows with it).")]
RouterOption = Annotated[str, typer.Option("--router", help="How --task auto decides: llm (the route role) or rules (keyword + length, for comparison).")]
KvCacheOption = Annotated[str, typer.Option("--kv-cache", help="f16, or q8_0: about half the KV-cache memory (1 GB boards), slower on long prompts.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log and timings.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(error: Exception) -> NoReturn:
    """Print an error as one line and exit with its code (1, or 2 for bad input)."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def interrupted(message: str = "interrupted") -> NoReturn:
    """Ctrl-C (or SIGTERM, which the entry point turns into it): a line on stderr, exit 130."""
    typer.echo(f"\n{message}", err=True)
    raise typer.Exit(130)


def status(message: str) -> None:
    """Progress for people: on stderr, and only when someone is watching."""
    if sys.stderr.isatty():
        typer.echo(message, err=True)
