"""`edgeqwen run`: one text, lines from stdin, or an interactive session, each answered by the right role."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

from .. import settings
from ..api import TASKS, EdgeQwen, check_choice
from ..errors import EdgeQwenError, InputError
from ..prompt_fit import clean_text
from .answer import answer
from .interactive import interactive
from .options import CtxOption, KvCacheOption, ModelOption, PromptsOption, RouterOption, ThreadsOption, VerboseOption, fail, interrupted, status


def run(
    text: Annotated[Optional[str], typer.Argument(help="Text to process; '-' reads one input per line from stdin; omit for an interactive session.")] = None,
    task: Annotated[str, typer.Option("--task", "-t", help="auto: route each input; sentiment; chat; both: sentiment then chat.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per input: task, label, confidence, reply, timings.")] = False,
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
    interactive_session = text is None and sys.stdin.isatty()
    try:
        check_choice("--task", task, TASKS)  # refused before the model loads
        if text not in (None, "-"):
            clean_text(text)
        status("loading model…")
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router=router, kv_cache=kv_cache, verbose=verbose)
        if verbose:
            typer.echo(f"memory plan: {eq.engine.memory_plan.describe()}", err=True)
        if interactive_session:
            interactive(eq, task, json_output)
        elif text is None or text == "-":
            _lines(eq, _stdin_lines(), task, json_output, verbose)
        else:
            answer(eq, text, task, json_output, verbose)
    except EdgeQwenError as error:
        fail(error)
    except KeyboardInterrupt:
        interrupted()


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
            answer(eq, line, task, json_output, verbose)
        except InputError as error:
            typer.echo(f"error: line {number}: {error}", err=True)
