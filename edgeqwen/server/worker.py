"""One inference thread that schedules every model call of the server, and a bounded wait queue in front of it.

llama.cpp's context is not thread-safe, so every model call runs on a single thread; the event loop
only waits for results. That thread is a scheduler: chat replies run in a fixed number of slots and
advance together, one token of each per decode step (ChatStreams), and between two steps it admits
waiting chats into free slots and runs the next other job. Classification jobs of one role that wait
together are run as one batch of texts. A job that cannot be admitted (the queue is full) is refused
at once with a `QueueFull` that says when to retry; a job in a slot counts as running, not waiting.
A job whose client went away is cancelled: skipped if still waiting, its slot freed at the next step.

Thread side: a job's function receives the `Job` and calls `job.emit(item)` for each streamed item
(raises `Cancelled` once the job is cancelled) and `job.check()` between steps; it may return a
`SlotRequest` to go on in a chat slot. Event-loop side: `await job.result()` or `async for item in job.items()`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import settings
from ..errors import CacheBusyError
from .metrics import Metrics


class Cancelled(Exception):
    """The job's client went away (or the server is stopping): stop working on it."""


class QueueFull(Exception):
    """The wait queue is full; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int, waiting: int) -> None:
        super().__init__(f"the model is busy ({waiting} requests waiting); retry in {retry_after} s")
        self.retry_after = retry_after
        self.waiting = waiting


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

    def __init__(self, fn: Callable[[Job], Any], loop: asyncio.AbstractEventLoop, on_cancel: Callable[[Job], None] = lambda job: None,
                 *, kind: str = "call", key: Any = None, inputs: Sequence[Any] = ()) -> None:
        self.fn = fn
        self.loop = loop
        self.kind, self.key, self.inputs = kind, key, list(inputs)
        self.state = "waiting"  # → running → done, or waiting → abandoned (cancelled before it started)
        self.cancelled = threading.Event()
        self._on_cancel = on_cancel
        self.emitted = 0
        self.value: Any = None
        self.request: SlotRequest | None = None
        self.done: Callable[[Job, list], Any] = lambda job, results: results  # a batch job's value from its results
        self.started = 0.0
        self.created = time.perf_counter()
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
    """The scheduler on one thread: `streams` (a ChatStreams, or None for no chat slots) runs chat
    jobs; at most `queue_size` jobs wait to start."""

    def __init__(
        self, queue_size: int = settings.QUEUE_SIZE, streams: Any = None, batch_size: int = settings.BATCH_SIZE,
        metrics: Metrics | None = None,
    ) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        self.metrics = metrics or Metrics()
        self.queue_size = queue_size
        self.streams = streams
        self.batch_size = batch_size
        self._wake = threading.Condition(threading.Lock())
        self._lock = self._wake  # one lock for the book-keeping and the thread's sleep
        self._queue: deque[Job] = deque()  # waiting to start, in order
        self._waiting = 0
        self._running: Job | None = None  # the job on the thread now, other than chat slots
        self._resumed: deque[Job] = deque()  # started, waiting for a slot (their SlotRequest)
        self._active: dict[int, Job] = {}  # stream handle -> its job
        self._deferred: deque[list[Job]] = deque()  # groups too big beside the slots' cells: run once they are empty
        self._closed = False
        self._durations: deque[float] = deque(maxlen=32)
        self.counts = {"served": 0, "cancelled": 0, "failed": 0, "rejected": 0, "classify_calls": 0, "classify_jobs": 0}
        self._thread = threading.Thread(target=self._loop, name="edgeqwen-inference", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Job], Any], *, chat: bool = False) -> Job:
        """Queue `fn(job)` for the inference thread (with chat=True, run when a slot is free: it returns
        a SlotRequest), or raise QueueFull at once."""
        return self._submit(Job(fn, asyncio.get_running_loop(), self._abandon, kind="chat" if chat and self.streams else "call"))

    def submit_batch(self, key: Any, items: Sequence[Any], run_many: Callable[[list], list],
                     done: Callable[[Job, list], Any] = lambda job, results: results) -> Job:
        """Queue `run_many(items)`, run together with the other waiting batch jobs of the same `key` (up
        to batch_size items in all, one run_many call); the job's value is `done(job, its own results)`,
        called on the inference thread (it may emit)."""
        job = Job(lambda job: run_many, asyncio.get_running_loop(), self._abandon, kind="batch", key=key, inputs=items)
        job.done = done
        return self._submit(job)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "busy": self._running is not None or bool(self._active or self._resumed),
                "waiting": self._waiting,
                "queue_size": self.queue_size,
                "slots": self.streams.slots if self.streams else 0,
                "streams": len(self._active),
                **self.counts,
                "mean_job_s": round(self._mean_duration(), 3),
            }

    def close(self) -> None:
        """Stop taking jobs, cancel the running and waiting ones, and end the thread."""
        with self._lock:
            self._closed = True
            running = [self._running, *self._active.values(), *self._resumed, *(job for group in self._deferred for job in group)]
            self._wake.notify()
        for job in running:
            if job is not None:
                job.cancel()

    # -- admission (event loop) ---------------------------------------------------------------------

    def _submit(self, job: Job) -> Job:
        with self._lock:
            if self._closed:
                raise QueueFull(self._retry_after_locked(), self._waiting)
            if not self._starts_now_locked(job) and self._waiting >= self.queue_size:
                self.counts["rejected"] += 1
                raise QueueFull(self._retry_after_locked(), self._waiting)
            self._waiting += 1
            self._queue.append(job)
            self._wake.notify()
        return job

    def _starts_now_locked(self, job: Job) -> bool:
        """Whether the thread takes `job` at once: a free slot for a chat, else a free thread."""
        waiting = [j for j in self._queue if j.state == "waiting"]
        if job.kind == "chat":
            return self.streams.free - len(self._resumed) - sum(j.kind == "chat" for j in waiting) > 0 and not self._deferred
        return self._running is None and not any(j.kind != "chat" for j in waiting)

    def _abandon(self, job: Job) -> None:
        """A waiting job was cancelled: its place in the queue is free now, not when the thread reaches it."""
        with self._lock:
            abandoned = job.state == "waiting"
            if abandoned:
                job.state = "abandoned"
                self._waiting -= 1
                self._queue.remove(job)
                self.counts["cancelled"] += 1
        if abandoned:
            job._post("error", Cancelled())

    def _mean_duration(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else 2.0

    def _retry_after_locked(self) -> int:
        """Seconds until a place is likely free: the jobs ahead times the mean job time."""
        ahead = self._waiting + (self._running is not None)
        return max(1, min(120, math.ceil(self._mean_duration() * max(1, ahead))))

    # -- the scheduler (inference thread) ----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not (self._active or self._resumed or self._deferred or self._runnable_locked()):
                    self._wake.wait()
                if self._closed and not self._active:
                    self._cancel_all_locked()
                    return
            self._admit()
            jobs = self._take()
            if jobs:
                self._run(jobs)
            if self._active:
                self._step()

    def _runnable_locked(self) -> bool:
        free = self.streams.free if self.streams else 0
        return any(j.state == "waiting" and (j.kind != "chat" or free) for j in self._queue)

    def _start_locked(self, job: Job) -> None:
        job.state = "running"
        job.started = time.perf_counter()
        self._waiting -= 1
        self._queue.remove(job)
        if self._closed:
            job.cancelled.set()

    def _take(self) -> list[Job]:
        """The next job(s) to run between steps: deferred ones once the slots are empty, else the first
        waiting job that is not a chat, with the waiting batch jobs of its key that fit beside it."""
        with self._lock:
            if self._deferred and not self._active:
                jobs = self._deferred.popleft()
                self._running = jobs[0]
                return jobs
            first = next((j for j in self._queue if j.state == "waiting" and j.kind != "chat"), None)
            if first is None:
                return []
            jobs, total = [first], len(first.inputs)
            if first.kind == "batch":
                for job in list(self._queue):
                    if job is not first and job.state == "waiting" and job.kind == "batch" and job.key == first.key and total + len(job.inputs) <= self.batch_size:
                        jobs.append(job)
                        total += len(job.inputs)
            for job in jobs:
                self._start_locked(job)
            self._running = first
            return jobs

    def _run(self, jobs: list[Job]) -> None:
        try:
            if jobs[0].kind == "batch":
                self._run_batch(jobs)
            else:
                self._run_call(jobs[0])
        finally:
            with self._lock:
                self._running = None

    def _run_call(self, job: Job) -> None:
        try:
            job.check()
            value = job.fn(job)
        except CacheBusyError as error:
            return self._defer([job]) if job.emitted == 0 and self._active else self._finish(job, "failed", error)
        except Cancelled as error:
            return self._finish(job, "cancelled", error)
        except BaseException as error:  # noqa: BLE001 - every failure goes back to its request
            return self._finish(job, "failed", error)
        if isinstance(value, SlotRequest) and not self.streams:
            self._finish(job, "failed", RuntimeError("this worker has no chat slots"))
        elif isinstance(value, SlotRequest):
            job.request = value
            self._resumed.append(job)
        else:
            self._finish(job, "served", value)

    def _run_batch(self, jobs: list[Job]) -> None:
        """One run_many call for the group (a job of more than batch_size items: one per batch); a job
        cancelled meanwhile just drops its results."""
        run_many = jobs[0].fn(jobs[0])
        items = [item for job in jobs for item in job.inputs]
        try:
            results = []
            for first in range(0, len(items), self.batch_size):
                if len(jobs) == 1:
                    jobs[0].check()
                results += run_many(items[first : first + self.batch_size])
                self.counts["classify_calls"] += 1
                self.metrics.classify_batch(len(items[first : first + self.batch_size]))
        except CacheBusyError as error:
            return self._defer(jobs) if self._active else [self._finish(job, "failed", error) for job in jobs]
        except Cancelled as error:
            return self._finish(jobs[0], "cancelled", error)
        except BaseException as error:  # noqa: BLE001
            if len(jobs) == 1:
                return self._finish(jobs[0], "failed", error)
            for job in jobs:  # one job's bad input must not fail the others
                self._run_batch([job])
            return
        self.counts["classify_jobs"] += len(jobs)
        for job in jobs:
            mine, results = results[: len(job.inputs)], results[len(job.inputs) :]
            try:
                job.check()
                value = job.done(job, mine)
            except Cancelled as error:
                self._finish(job, "cancelled", error)
            except BaseException as error:  # noqa: BLE001
                self._finish(job, "failed", error)
            else:
                self._finish(job, "served", value)

    def _defer(self, jobs: list[Job]) -> None:
        with self._lock:
            self._deferred.append(jobs)

    def _admit(self) -> None:
        """Waiting chats into free slots, in order; none while a deferred job waits for the slots to empty."""
        while self.streams and self.streams.free and not self._deferred:
            with self._lock:
                job = self._resumed[0] if self._resumed else next((j for j in self._queue if j.state == "waiting" and j.kind == "chat"), None)
                if job is None:
                    return
                if job.state == "waiting":
                    self._start_locked(job)
                    self._resumed.appendleft(job)
            try:
                job.check()
                job.request = job.request or job.fn(job)
                handle = job.request.start(self.streams)
            except BaseException as error:  # noqa: BLE001
                self._resumed.popleft()
                self._finish(job, "cancelled" if isinstance(error, Cancelled) else "failed", error)
                continue
            if handle is None:
                if self._active:
                    return  # too few free cells: it waits for a stream to end
                self._resumed.popleft()
                self._finish(job, "failed", CacheBusyError("the prompt does not fit the KV cache"))
                continue
            self._resumed.popleft()
            self._active[handle] = job

    def _step(self) -> None:
        """One decode step of every active chat; cancelled ones are freed first."""
        for handle, job in list(self._active.items()):
            if job.cancelled.is_set():
                self._end_stream(handle, "cancelled", Cancelled())
        if not self._active:
            return
        try:
            pieces = self.streams.step()
        except BaseException as error:  # noqa: BLE001 - the streams are closed; each request hears why
            for handle in list(self._active):
                self._end_stream(handle, "failed", error)
            return
        for handle, piece in pieces.items():
            job = self._active[handle]
            try:
                if piece.text or piece.logprobs:
                    job.emit(job.request.item(piece))
                    if job.emitted == 1:
                        self.metrics.first_token(time.perf_counter() - job.created)
            except Cancelled as error:
                self._end_stream(handle, "cancelled", error)
                continue
            if piece.finish_reason:
                self.metrics.reply(piece.generation.tokens if piece.generation else 0)
                self._end_stream(handle, "served", job.request.done(piece))

    def _end_stream(self, handle: int, outcome: str, value: Any) -> None:
        job = self._active.pop(handle)
        self.streams.close(handle)  # no-op for a stream that ended by itself
        self._finish(job, outcome, value)

    def _finish(self, job: Job, outcome: str, value: Any) -> None:
        with self._lock:  # book-keeping first, so /health and the next request's admission agree with the answer
            job.state = "done"
            if self._running is job:
                self._running = None
            self.counts[outcome] += 1
            if outcome == "served":
                self._durations.append(time.perf_counter() - job.started)
                if job.kind == "batch":
                    self.metrics.classified(time.perf_counter() - job.created)
        job._post("result" if outcome == "served" else "error", value)

    def _cancel_all_locked(self) -> None:
        for job in [*self._queue, *self._resumed, *(job for group in self._deferred for job in group)]:
            if job.state in ("waiting", "running"):
                job.cancelled.set()
                job.state = "done"
                job._post("error", Cancelled())
