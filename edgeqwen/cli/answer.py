"""How `edgeqwen run` shows one answer: the reply streamed as it comes, the label line, or one JSON object."""

from __future__ import annotations

import json
import sys

import typer

from ..api import EdgeQwen, RunResult
from ..conversation import Conversation


def answer(eq: EdgeQwen, text: str, task: str, json_output: bool, verbose: bool, conversation: Conversation | None = None) -> RunResult:
    result = eq.run(text, task, conversation=conversation, on_text=None if json_output else _print_piece)
    if json_output:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return result
    if result.reply is not None:
        typer.echo()
    if result.sentiment is not None:
        typer.echo(f"sentiment: {result.sentiment.display} (confidence {result.sentiment.confidence:.2f})")
        if result.sentiment.truncated:
            typer.echo("warning: input truncated to fit the context window (--ctx)", err=True)
    if verbose:
        route = f"route={result.route.task} ({result.route.strategy}) " if result.route else ""
        typer.echo(f"[{route}timings {result.timings}]", err=True)
    return result


def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
