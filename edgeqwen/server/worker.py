"""One inference thread and a bounded wait queue in front of it.

llama.cpp's context is not thread-safe and one model cannot usefully run two prompts at once on a
small CPU, so every model call of the server runs here, one job at a time, on a single thread; the
event loop only waits for results. A job that cannot be admitted (the queue is full) is refused at
once with a `QueueFull` that says when to retry. A job whose client went away is cancelled: skipped
if it is still waiting, stopped at the next generated token if it is running.

Thread side: a job's function receives the `Job` and calls `job.emit(item)` for each streamed item
(raises `Cancelled` once the job is cancelled) and `job.check()` between steps.
Event-loop side: `await job.result()` for a whole answer, `async for item in job.items()` to stream.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import settings


class Cancelled(Exception):
    """The job's client went away (or the server is stopping): stop working on it."""


class QueueFull(Exception):
    """The wait queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(f"the model is busy ({waiting} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after
        self.waiting = waiting


class Job:
    """One unit of model work, created on the event loop and run on the inference thread."""

    def __init__(self, fn: Callable[[Job], Any], loop: asyncio.AbstractEventLoop, on_cancel: Callable[[Job], None] = lambda job: None) -> None:
        self.fn = fn
        self.loop = loop
        self.state = "waiting"  # → running → done, or waiting → abandoned (cancelled before it started)
        self.cancelled = threading.Event()
        self._on_cancel = on_cancel
        self.emitted = 0
        self.value: Any = None
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    # -- inference thread -------------------------------------------------------------------------

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()

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

    async def items(self) -> AsyncIterator[Any]:
        """The streamed items, then returns; raises the job's exception if it failed."""
        try:
            while True:
                kind, value = await self._events.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    self.value = value
                    return
        finally:
            self.cancel()  # no-op if finished; frees the engine if the consumer went away

    async def result(self) -> Any:
        """The job's return value (streamed items, if any, are dropped)."""
        async for _ in self.items():
            pass
        return self.value


class InferenceWorker:
    """Runs jobs one at a time on one thread; at most `queue_size` jobs wait behind the running one."""

    def __init__(self, queue_size: int = settings.QUEUE_SIZE) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        self.queue_size = queue_size
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._running: Job | None = None
        self._closed = False
        self._durations: deque[float] = deque(maxlen=32)
        self.counts = {"served": 0, "cancelled": 0, "failed": 0, "rejected": 0}
        self._thread = threading.Thread(target=self._loop, name="edgeqwen-inference", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue `fn(job)` for the inference thread, or raise QueueFull at once."""
        job = Job(fn, asyncio.get_running_loop(), self._abandon)
        with self._lock:
            if self._closed:
                raise QueueFull(self._retry_after_locked(), self._waiting)
            if self._waiting + (self._running is not None) >= self.queue_size + 1:
                self.counts["rejected"] += 1
                raise QueueFull(self._retry_after_locked(), self._waiting)
            self._waiting += 1
        self._jobs.put(job)
        return job

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "busy": self._running is not None,
                "waiting": self._waiting,
                "queue_size": self.queue_size,
                **self.counts,
                "mean_job_s": round(self._mean_duration(), 3),
            }

    def close(self) -> None:
        """Stop taking jobs, cancel the running and waiting ones, and end the thread."""
        with self._lock:
            self._closed = True
            running = self._running
        if running is not None:
            running.cancel()
        self._jobs.put(None)

    # -- internals --------------------------------------------------------------------------------

    def _abandon(self, job: Job) -> None:
        """A waiting job was cancelled: its place in the queue is free now, not when the thread reaches it."""
        with self._lock:
            abandoned = job.state == "waiting"
            if abandoned:
                job.state = "abandoned"
                self._waiting -= 1
                self.counts["cancelled"] += 1
        if abandoned:
            job._post("error", Cancelled())

    def _mean_duration(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else 2.0

    def _retry_after_locked(self) -> int:
        """Seconds until a slot is likely free: the jobs ahead times the mean job time."""
        ahead = self._waiting + (self._running is not None)
        return max(1, min(120, math.ceil(self._mean_duration() * max(1, ahead))))

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                if job.state == "abandoned":
                    continue
                job.state = "running"
                self._waiting -= 1
                self._running = job
                if self._closed:
                    job.cancelled.set()
            started = time.perf_counter()
            try:
                job.check()
                outcome, kind, value = "served", "result", job.fn(job)
            except Cancelled as error:
                outcome, kind, value = "cancelled", "error", error
            except BaseException as error:  # noqa: BLE001 - every failure goes back to its request
                outcome, kind, value = "failed", "error", error
            with self._lock:  # book-keeping first, so /health agrees with the answer the client gets
                job.state = "done"
                self._running = None
                self.counts[outcome] += 1
                if outcome == "served":
                    self._durations.append(time.perf_counter() - started)
            job._post(kind, value)
