"""The `edgeqwen` command: parses arguments, calls the Python API, prints. No logic of its own."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from .api import TASKS, EdgeQwen, RunResult
from .engine import DEFAULT_N_CTX
from .errors import EdgeQwenError, InputError
from .models import inspect_gguf
from .roles import load_roles
from .router import STRATEGIES

app = typer.Typer(
    help="One small Qwen model (4-bit GGUF via llama.cpp) for sentiment analysis and chat on CPU-only devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

INTERACTIVE_HELP = """commands: /task auto|sentiment|chat|both   /reset (forget the conversation)   /help   /quit (or Ctrl-D)
Ctrl-C stops a reply that is streaming."""

ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", help="GGUF file. Default: $EDGEQWEN_MODEL, then the model in models/.")]
PromptsOption = Annotated[Optional[Path], typer.Option("--prompts", help="Directory of role YAML files; adds to and overrides the shipped roles.")]


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def _status(message: str) -> None:
    """Progress for people: on stderr, and only when someone is watching."""
    if sys.stderr.isatty():
        typer.echo(message, err=True)


@app.command()
def run(
    text: Annotated[Optional[str], typer.Argument(help="Text to process; '-' reads one input per line from stdin; omit for an interactive session.")] = None,
    task: Annotated[str, typer.Option("--task", "-t", help="auto: route each input; sentiment; chat; both: sentiment then chat.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per input: task, label, confidence, reply, timings.")] = False,
    model: ModelOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=64, help="Context window in tokens (KV cache memory grows with it).")] = DEFAULT_N_CTX,
    prompts: PromptsOption = None,
    router: Annotated[str, typer.Option("--router", help="How --task auto decides: llm (the route role) or rules (keyword + length, for comparison).")] = "llm",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log and timings.")] = False,
) -> None:
    """Answer with the right role: sentiment label or a streamed chat reply.

    \b
    Examples:
      edgeqwen run "这家餐厅的服务太差了"
      edgeqwen run --task chat "What can you do?"
      printf 'Great phone!\\nHow do I reset it?\\n' | edgeqwen run - --json
      edgeqwen run            # interactive session
    """
    if task not in TASKS:
        _fail(InputError(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}"))
    if router not in STRATEGIES:
        _fail(InputError(f"unknown --router {router!r}; choose one of {', '.join(STRATEGIES)}"))
    if text is not None and text != "-" and not text.strip():
        _fail(InputError("empty input: give some text to analyse"))
    interactive = text is None and sys.stdin.isatty()
    try:
        _status("loading model…")
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router=router, verbose=verbose)
        if interactive:
            _interactive(eq, task, json_output)
        elif text is None or text == "-":
            _batch(eq, _stdin_lines(), task, json_output, verbose)
        else:
            _answer(eq, text, task, json_output, verbose)
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130)


def _stdin_lines() -> Iterator[str]:
    # Invalid UTF-8 becomes U+FFFD instead of a UnicodeDecodeError traceback.
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    for line in stream:
        yield line.rstrip("\r\n")


def _batch(eq: EdgeQwen, lines: Iterator[str], task: str, json_output: bool, verbose: bool) -> None:
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


def _answer(eq: EdgeQwen, text: str, task: str, json_output: bool, verbose: bool, conversation=None) -> RunResult:
    stream = None if json_output else _print_piece
    result = eq.run(text, task, conversation=conversation, on_text=stream)
    if json_output:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return result
    if result.reply is not None:
        typer.echo()
    if result.sentiment is not None:
        _print_sentiment(result)
    if result.sentiment is not None and result.sentiment.truncated:
        typer.echo("warning: input truncated to fit the context window (--ctx)", err=True)
    if verbose:
        route = f"route={result.route.task} ({result.route.strategy}) " if result.route else ""
        typer.echo(f"[{route}timings {result.timings}]", err=True)
    return result


def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _print_sentiment(result: RunResult) -> None:
    s = result.sentiment
    typer.echo(f"sentiment: {s.display} (confidence {s.confidence:.2f})")


def _interactive(eq: EdgeQwen, task: str, json_output: bool) -> None:
    conversation = eq.conversation()
    typer.echo(f"edgeqwen: task {task}. {INTERACTIVE_HELP}", err=True)
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
            typer.echo(INTERACTIVE_HELP)
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


@app.command()
def roles(prompts: PromptsOption = None) -> None:
    """List the roles found (shipped ones and those in --prompts DIR)."""
    try:
        found = load_roles(prompts)
    except EdgeQwenError as error:
        _fail(error)
    for role in found.values():
        labels = f" labels: {', '.join(role.label_names)}" if role.labels else ""
        typer.echo(f"{role.name:<12} {role.kind:<9} {role.description}{labels}")
        typer.echo(f"{'':<12} {role.source}")


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="A GGUF file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Print a GGUF file's metadata: architecture, size, quantization, context length, chat template."""
    try:
        gguf = inspect_gguf(model, expect_arch=None)
    except EdgeQwenError as error:
        _fail(error)
    fields = gguf.as_dict()
    if json_output:
        typer.echo(json.dumps(fields, ensure_ascii=False, indent=2, default=str))
        return
    for key, value in fields.items():
        typer.echo(f"{key:<18} {value}")


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Default: this machine only; 0.0.0.0 opens it to the network (set --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 8080,
    model: ModelOption = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="EDGEQWEN_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health (or set $EDGEQWEN_API_KEY).")] = None,
    prompts: PromptsOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=64, help="Context window in tokens.")] = DEFAULT_N_CTX,
    router: Annotated[str, typer.Option("--router", help="How task auto decides: llm or rules.")] = "llm",
    queue_size: Annotated[int, typer.Option("--queue-size", min=0, help="Requests that may wait behind the running one; more get 503 + Retry-After.")] = 8,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Largest request body (413 above).")] = 256 * 1024,
    max_text_chars: Annotated[int, typer.Option("--max-text-chars", min=1, help="Longest text or message (422 above).")] = 16_000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log.")] = False,
) -> None:
    """Serve an OpenAI-compatible API and a web page (needs the extra: pip install 'edgeqwen\\[serve]').

    \b
    Examples:
      edgeqwen serve                         # http://127.0.0.1:8080/ (page), /v1/chat/completions, ...
      edgeqwen serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
    """
    if router not in STRATEGIES:
        _fail(InputError(f"unknown --router {router!r}; choose one of {', '.join(STRATEGIES)}"))
    try:
        from .server.app import ServerConfig, serve as run_server  # the optional extra: imported only here
    except ImportError as error:
        _fail(EdgeQwenError(f"edgeqwen serve needs the server extra ({error.name or error} is missing): pip install 'edgeqwen[serve]'"))
    config = ServerConfig(
        host=host, port=port, model=str(model) if model else None, api_key=api_key or None,
        prompts=str(prompts) if prompts else None, threads=threads, ctx=ctx, router=router, queue_size=queue_size,
        max_body_bytes=max_body_bytes, max_text_chars=max_text_chars, log_level=log_level, verbose=verbose,
    )
    try:
        run_server(config)
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        raise typer.Exit(130)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
