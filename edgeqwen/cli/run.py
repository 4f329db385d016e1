"""`edgeqwen run`: one text, lines from stdin, or an interactive session, each answered by the right role."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .. import settings
from ..errors import InputError
from .options import (
    CtxOption,
    KvCacheOption,
    ModelOption,
    PromptsOption,
    RouterOption,
    ThreadsOption,
    VerboseOption,
    open_model,
)

if TYPE_CHECKING:
    from ..api import Conversation, EdgeQwen, RunResult

HELP = """commands: /task auto|sentiment|chat|both   /reset (forget the conversation)   /help   /quit (or Ctrl-D)
Ctrl-C stops a reply that is streaming."""


def run(
    text: Annotated[Optional[str], typer.Argument(
        help="Text to process; '-' reads one input per line from stdin; omit for an interactive session.")] = None,
    task: Annotated[str, typer.Option(
        "--task", "-t", help="auto: route each input; sentiment; chat; both: sentiment then chat.")] = "auto",
    json_output: Annotated[bool, typer.Option(
        "--json", help="One JSON object per input: task, label, confidence, reply, timings.")] = False,
    model: ModelOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
    prompts: PromptsOption = None,
    router: RouterOption = settings.ROUTER,
    kv_cache: KvCacheOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Answer with the right role: sentiment label or a streamed chat reply.

    \b
    Examples:
      edgeqwen run "这家餐厅的服务太差了"
      edgeqwen run --task chat "What can you do?"
      printf 'Great phone!\\nHow do I reset it?\\n' | edgeqwen run - --json
      edgeqwen run            # interactive session
    """
    from ..api import TASKS, check_choice
    from ..text import clean_text

    interactive_session = text is None and sys.stdin.isatty()
    check_choice("--task", task, TASKS)  # refused before the model loads
    if text not in (None, "-"):
        clean_text(text)
    eq = open_model(model, ctx=ctx, threads=threads, prompts=prompts, router=router, kv_cache=kv_cache, verbose=verbose)
    if verbose:
        typer.echo(f"memory plan: {eq.memory_plan.describe()}", err=True)
    if interactive_session:
        _interactive(eq, task, json_output)
    elif text is None or text == "-":
        _lines(eq, _stdin_lines(), task, json_output, verbose)
    else:
        _answer(eq, text, task, json_output, verbose)


def _answer(eq: EdgeQwen, text: str, task: str, json_output: bool, verbose: bool,
            conversation: Conversation | None = None) -> RunResult:
    """One answer: the reply streamed as it comes, the label line, or one JSON object."""
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


def _stdin_lines() -> Iterator[str]:
    # Invalid UTF-8 becomes U+FFFD instead of a UnicodeDecodeError traceback.
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    for line in stream:
        yield line.rstrip("\r\n")


def _lines(eq: EdgeQwen, lines: Iterator[str], task: str, json_output: bool, verbose: bool) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            typer.echo(f"warning: line {number}: empty, skipped", err=True)
            continue
        if not json_output:
            typer.echo(f"> {line}")
        try:
            _answer(eq, line, task, json_output, verbose)
        except InputError as error:
            typer.echo(f"error: line {number}: {error}", err=True)


def _interactive(eq: EdgeQwen, task: str, json_output: bool) -> None:
    """A prompt, a running conversation, slash commands; Ctrl-C stops a streaming reply, Ctrl-D leaves."""
    from ..api import TASKS

    conversation = eq.conversation()
    typer.echo(f"edgeqwen: task {task}. {HELP}", err=True)
    while True:
        try:
            line = input(f"[{task}] > ")
        except EOFError:
            typer.echo()
            return
        except KeyboardInterrupt:
            typer.echo()
            continue
        command, _, argument = line.strip().partition(" ")
        if command in ("/quit", "/exit"):
            return
        if command == "/help":
            typer.echo(HELP)
        elif command == "/reset":
            conversation.reset()
            typer.echo("conversation cleared")
        elif command == "/task":
            if argument.strip() in TASKS:
                task = argument.strip()
            else:
                typer.echo(f"choose one of: {', '.join(TASKS)}")
        elif command.startswith("/"):
            typer.echo(f"unknown command {command}; /help lists them")
        elif line.strip():
            try:
                _answer(eq, line, task, json_output, False, conversation)
            except KeyboardInterrupt:
                typer.echo("\n[reply stopped]")
            except InputError as error:
                typer.echo(f"error: {error}")
