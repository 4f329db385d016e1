"""One unit of model work as the inference thread sees it (Job), and what a job can end with besides its value.

A Job is created on the event loop and run on the inference thread (worker.py). Thread side: the
job's function calls `job.emit(item)` for each streamed item (raises `Cancelled` once the job is
cancelled) and `job.check()` between steps; it may return a `SlotRequest` to go on in a chat slot.
Event-loop side: `await job.result()` or `async for item in job.items()`. A job may have a deadline
(the server's --request-timeout, counted from its arrival).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any


class Cancelled(Exception):
    """The job's client went away (or the server is stopping): stop working on it."""


class QueueFull(Exception):
    """The wait queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(f"the model is busy ({waiting} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after
        self.waiting = waiting


class TimedOut(Exception):
    """The job reached its deadline: still waiting for the model (`started` False: retry after
    `retry_after` seconds), or in the middle of work that cannot be cut short (a classification)."""

    def __init__(self, limit: float, started: bool, retry_after: int = 1) -> None:
        where = "in the middle of its work" if started else "before the model was free for it"
        super().__init__(f"the request reached this server's time limit of {limit:g} s (--request-timeout) {where}")
        self.limit, self.started, self.retry_after = limit, started, retry_after


@dataclass
class SlotRequest:
    """What a job's function returns to go on in a chat slot: `start(streams)` starts its stream (its
    handle, or None while it does not fit), `item(piece)` is what job.emit gets for each piece that
    hands out text or logprobs, and `done(piece)` the job's value from its last piece."""

    start: Callable[[Any], int | None]
    item: Callable[[Any], Any] = lambda piece: piece.text
    done: Callable[[Any], Any] = lambda piece: None


class Job:
    """One unit of model work, created on the event loop and run on the inference thread.

    kind: "call" (fn runs alone), "chat" (fn returns a SlotRequest when a slot is free) or "batch"
    (run_many over `inputs`, together with other waiting batch jobs of the same `key`)."""

    def __init__(
        self,
        fn: Callable[[Job], Any],
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[Job], None] = lambda job: None,
        *,
        kind: str = "call",
        key: Any = None,
        inputs: Sequence[Any] = (),
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.kind, self.key, self.inputs = kind, key, list(inputs)
        self.wants_slot = kind == "chat"  # it will wait for a chat slot (a chat, or a /v1/run that may chat)
        self.state = "waiting"  # → running → done, or → abandoned (cancelled or timed out while it waited)
        self.cancelled = threading.Event()
        self._on_cancel = on_cancel
        self.emitted = 0
        self.value: Any = None
        self.request: SlotRequest | None = None
        self.done: Callable[[Job, list], Any] = lambda job, results: results  # a batch job's value from its results
        self.arrived = time.monotonic()
        self.deadline: float | None = None  # time.monotonic() by which it must be answered
        self.timer: asyncio.TimerHandle | None = None  # the event loop's call at the deadline
        self.started = 0.0
        self.created = time.perf_counter()
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._first: tuple[str, Any] | None = None  # an event seen by first(), still to be taken by items()

    # -- inference thread -------------------------------------------------------------------------

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

    def overdue(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def emit(self, item: Any) -> None:
        """Hand one streamed item to the event loop; raises Cancelled once nobody wants it."""
        self.check()
        self.emitted += 1
        self._post("item", item)

    def _post(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is stopping
            self.cancelled.set()

    # -- event loop -------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Stop this job: if still waiting it leaves the queue at once; if running it stops at the next token."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self._on_cancel(self)

    async def first(self) -> None:
        """Wait until the job has streamed its first item or ended, taking nothing; raises the job's
        exception if it failed first. A streamed response waits for this before its 200, so a request
        refused while it waited (TimedOut) still gets its HTTP error."""
        if self._first is None:
            self._first = await self._events.get()
        if self._first[0] == "error":
            if self.timer is not None:
                self.timer.cancel()
            raise self._first[1]

    async def items(self) -> AsyncIterator[Any]:
        """The streamed items, then returns; raises the job's exception if it failed."""
        try:
            while True:
                if self._first is not None:
                    (kind, value), self._first = self._first, None
                else:
                    kind, value = await self._events.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    self.value = value
                    return
        finally:
            if self.timer is not None:
                self.timer.cancel()
            self.cancel()  # no-op if finished; frees the engine if the consumer went away

    async def result(self) -> Any:
        """The job's return value (streamed items, if any, are dropped)."""
        async for _ in self.items():
            pass
        return self.value
