"""Ctrl-C and SIGTERM held over a stretch of code where an exception cannot surface, then delivered.

A KeyboardInterrupt raised inside a callback that Python runs for C code cannot leave it: Python
prints "Exception ignored" and the interrupt is lost. That happens in importlib's weakref callback
while modules import (the console script's start-up) and in llama.cpp's log callback while a model
loads. Over such a stretch the handlers only note a signal; at its end the handlers in place before
are restored and the first signal noted is raised again, so it is handled exactly as it would have
been, just late. Built-in modules only: the console script enters this before anything heavy is
imported (`_signal` is the already loaded core of `signal`, which would import enum first).
"""

from __future__ import annotations

import _signal


class held_signals:
    """Context manager: `with held_signals(): ...` (a class, like contextlib.suppress, so that no
    module beyond built-ins is needed). Off the main thread, where handlers cannot be set, it holds
    nothing: signals are handled by the main thread then anyway."""

    def __enter__(self) -> held_signals:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}
        try:
            for signum in (_signal.SIGINT, _signal.SIGTERM):
                previous = _signal.getsignal(signum)
                if previous is not None:  # None: a handler not set from Python, left alone
                    self._previous[signum] = previous  # first: a signal right after the swap must find it
                    _signal.signal(signum, self._note)
        except ValueError:  # not the main thread: the first swap failed, nothing to restore
            self._previous.clear()
        return self

    def _note(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            _signal.signal(signum, handler)
        if self.received:
            _signal.raise_signal(self.received[0])  # runs the restored handler here, now
