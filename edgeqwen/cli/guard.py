"""Errors and interrupts of every command, formatted once: one line on stderr and the exit code.

Commands raise EdgeQwenError (exit 1, or 2 for bad input) and let Ctrl-C through; `guarded` turns
both into one line each. A command whose interrupt leaves something worth saying (where the partial
results are, what to run next) says it with `interrupt_note` around the long work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

import typer

from ..errors import EdgeQwenError

INTERRUPTED = 130  # 128 + SIGINT; the console script turns it into 143 when SIGTERM was the cause
Command = TypeVar("Command", bound=Callable[..., object])
_notes: list[Callable[[], str]] = []  # innermost last


def guarded(command: Command) -> Command:
    """`command` with its errors and interrupts turned into one line and an exit code."""

    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def run(*args: object, **kwargs: object) -> object:
        try:
            return command(*args, **kwargs)
        except EdgeQwenError as error:
            fail(error)
        except KeyboardInterrupt:
            interrupted(_notes[-1]() if _notes else "interrupted")
        finally:
            _notes.clear()

    return run  # type: ignore[return-value]


@contextmanager
def interrupt_note(note: str | Callable[[], str]) -> Iterator[None]:
    """Within this block, an interrupt prints `note` (or what the callable returns then) instead of
    the bare "interrupted"."""
    _notes.append(note if callable(note) else lambda: note)
    try:
        yield
    except KeyboardInterrupt:
        raise  # the note stays for `guarded`, which prints it and clears the notes
    except BaseException:
        _notes.pop()
        raise
    _notes.pop()


def fail(error: Exception) -> NoReturn:
    """Print an error as one line and exit with its code (1, or 2 for bad input)."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def interrupted(message: str = "interrupted") -> NoReturn:
    """Ctrl-C (or SIGTERM, which the entry point turns into it): a line on stderr, exit 130."""
    typer.echo(f"\n{message}", err=True)
    raise typer.Exit(INTERRUPTED)
