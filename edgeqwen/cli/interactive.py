"""The interactive session of `edgeqwen run` with no text: a prompt, a running conversation, slash commands."""

from __future__ import annotations

import typer

from ..api import TASKS, EdgeQwen
from ..errors import InputError
from .answer import answer

HELP = """commands: /task auto|sentiment|chat|both   /reset (forget the conversation)   /help   /quit (or Ctrl-D)
Ctrl-C stops a reply that is streaming."""


def interactive(eq: EdgeQwen, task: str, json_output: bool) -> None:
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
                answer(eq, line, task, json_output, False, conversation)
            except KeyboardInterrupt:
                typer.echo("\n[reply stopped]")
            except InputError as error:
                typer.echo(f"error: {error}")
