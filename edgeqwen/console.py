"""The `edgeqwen` console script: signal handling first, then the CLI.

Importing the CLI pulls in typer, pydantic, numpy and llama.cpp, which takes a while on a small
board. A Ctrl-C or `kill` in that time must end the way one during a command does: exit code 130 (SIGINT)
or 143 (SIGTERM), one line on stderr at most, no traceback. So this module imports nothing but
built-in modules (`_signal` is the already loaded core of `signal`, which would import enum and
functools first) and takes over before anything heavy is imported; `edgeqwen/__init__.py` is lazy
for the same reason. The imports run with signals held (edgeqwen.signals): raised at once, a
KeyboardInterrupt can land in importlib's weakref callback, where Python drops it, and the command
then ran to the end (seen in CI). What remains unguarded is the interpreter's own start-up and the
import of this module, a few milliseconds: a SIGINT there ends Python's default way.
"""

from __future__ import annotations

import _signal
import sys

from .signals import held_signals

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: start-up time is the point here
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATED = 128 + _signal.SIGTERM  # 143


def main() -> None:
    """Entry point of the `edgeqwen` command (pyproject.toml, [project.scripts]) and of `python -m edgeqwen`."""
    terminated: list[int] = []
    try:
        catch_sigterm(terminated)
        with held_signals():  # a signal during the imports is delivered once they finish
            from .cli import app
    except KeyboardInterrupt:
        _interrupted(terminated)
    run(app, terminated)


def catch_sigterm(terminated: list[int] | None = None) -> list[int]:
    """Make `kill` (SIGTERM) raise KeyboardInterrupt, as Ctrl-C does; the returned list records that it came."""
    terminated = [] if terminated is None else terminated

    def _terminate(signum: int, frame: object) -> None:
        terminated.append(signum)
        raise KeyboardInterrupt

    _signal.signal(_signal.SIGTERM, _terminate)
    return terminated


def run(app: Callable[[], object], terminated: list[int]) -> None:
    """Run the typer app. The commands' KeyboardInterrupt handling runs for SIGTERM too (partial
    output kept, temporary files removed); the exit code then says which signal it was."""
    try:
        app(prog_name="edgeqwen")  # the same usage line whether entered as the script or as python -m edgeqwen
    except KeyboardInterrupt:  # outside typer's own handling: while it builds the command, or after
        _interrupted(terminated)
    except SystemExit as done:
        if terminated and done.code not in (0, None):
            raise SystemExit(TERMINATED) from None
        raise
    finally:
        _forget_interrupts_left_in_string_code()


def _forget_interrupts_left_in_string_code() -> None:
    """Keep a caught Ctrl-C from turning `python -m edgeqwen`'s exit code into a death by SIGINT.

    CPython marks an interrupt as unhandled when it leaves code run from a string (dataclasses and
    namedtuple build their methods that way while modules import), even if a command catches it
    afterwards; under `python -m` the interpreter then kills itself with SIGINT once it has exited,
    and the caller sees -2 instead of 130. Running string code resets that mark."""
    eval("None")


def _interrupted(terminated: list[int]) -> NoReturn:
    sys.stderr.write("interrupted\n")
    raise SystemExit(TERMINATED if terminated else INTERRUPTED) from None
