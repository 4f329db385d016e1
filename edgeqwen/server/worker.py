"""One inference thread that schedules every model call of the server, and a bounded wait queue in front of it.

llama.cpp's context is not thread-safe, so every model call runs on a single thread; the event loop
only waits for results. That thread is a scheduler: chat replies run in a fixed number of slots and
advance together, one token of each per decode step (ChatStreams), and between two steps it admits
waiting chats into free slots and runs the next other job. Classification jobs of one role that wait
together are run as one batch of texts. A job that cannot be admitted (the queue is full) is refused
at once with a `QueueFull` that says when to retry; a job in a slot counts as running, not waiting,
and a job waiting anywhere else (for the thread, for a slot after its first step, for the slots'
cells) counts as waiting. A job whose client went away is cancelled: it leaves at once if waiting,
its slot is freed at the next step. With a time limit, a job still waiting at its deadline gets
`TimedOut` at once, and a reply still going ends at its next step as if its budget ran out.
The jobs themselves (Job, SlotRequest, the errors) are in job.py.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .. import settings
from ..errors import CacheBusyError
from .job import Cancelled, Job, QueueFull, SlotRequest, TimedOut
from .metrics import Metrics

__all__ = ["Cancelled", "InferenceWorker", "Job", "QueueFull", "SlotRequest", "TimedOut"]


class InferenceWorker:
    """The scheduler on one thread: `streams` (a ChatStreams, or None for no chat slots) runs chat
    jobs; at most `queue_size` jobs wait to start, wherever they wait (the queue, a slot, the
    slots' cells); with `request_timeout`, every job is answered within that many seconds of its
    arrival (a reply is cut, finish_reason "length"; a job still waiting gets TimedOut)."""

    def __init__(
        self, queue_size: int = settings.QUEUE_SIZE, streams: Any = None, batch_size: int = settings.BATCH_SIZE,
        metrics: Metrics | None = None, request_timeout: float | None = None,
    ) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        self.metrics = metrics or Metrics()
        self.queue_size = queue_size
        self.streams = streams
        self.batch_size = batch_size
        self.request_timeout = request_timeout
        self._wake = threading.Condition(threading.Lock())
        self._lock = self._wake  # one lock for the book-keeping and the thread's sleep
        self._queue: deque[Job] = deque()  # waiting to start, in order
        self._waiting = 0
        self._running: Job | None = None  # the job on the thread now, other than chat slots
        self._resumed: deque[Job] = deque()  # past a first step (a /v1/run route), waiting for a slot
        self._starting: Job | None = None  # the chat the thread is putting into a slot now
        self._active: dict[int, Job] = {}  # stream handle -> its job
        self._deferred: deque[list[Job]] = deque()  # groups too big beside the slots' cells: run once they are empty
        self._closed = False
        self._durations: deque[float] = deque(maxlen=32)
        self.counts = {"served": 0, "cancelled": 0, "failed": 0, "rejected": 0, "timed_out": 0,
                       "classify_calls": 0, "classify_jobs": 0}
        self._thread = threading.Thread(target=self._loop, name="edgeqwen-inference", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Job], Any], *, chat: bool = False, then_chat: bool = False) -> Job:
        """Queue `fn(job)` for the inference thread (with chat=True, run when a slot is free: it returns
        a SlotRequest), or raise QueueFull at once. then_chat: `fn` runs at once but may return a
        SlotRequest (a routed /v1/run), so it starts at once only if a slot is free too."""
        job = Job(fn, asyncio.get_running_loop(), self._abandon, kind="chat" if chat and self.streams else "call")
        job.wants_slot = chat or then_chat
        return self._submit(job)

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
                "busy": self._running is not None or bool(self._active or self._resumed or self._starting),
                "waiting": self._pending_locked(),
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
            deferred = [job for group in self._deferred for job in group]
            running = [self._running, self._starting, *self._active.values(), *self._resumed, *deferred]
            self._wake.notify()
        for job in running:
            if job is not None:
                job.cancel()

    # -- admission (event loop) ---------------------------------------------------------------------

    def _submit(self, job: Job) -> Job:
        with self._lock:
            if self._closed:
                raise QueueFull(self._retry_after_locked(), self._pending_locked())
            if not self._starts_now_locked(job) and self._pending_locked() >= self.queue_size:
                self.counts["rejected"] += 1
                raise QueueFull(self._retry_after_locked(), self._pending_locked())
            self._waiting += 1
            self._queue.append(job)
            self._wake.notify()
        if self.request_timeout is not None:
            job.deadline = job.arrived + self.request_timeout
            job.timer = job.loop.call_later(self.request_timeout, self._expire, job)
        return job

    def _pending_locked(self) -> int:
        """Jobs admitted but not running: in the queue, waiting for a slot or for the slots' cells."""
        deferred = sum(len(group) for group in self._deferred)
        return self._waiting + len(self._resumed) + deferred + (self._starting is not None)

    def _starts_now_locked(self, job: Job) -> bool:
        """Whether the thread takes `job` at once: a free slot for a chat, else a free thread."""
        waiting = [j for j in self._queue if j.state == "waiting"]
        if job.wants_slot and self.streams:
            routing = self._running is not None and self._running.wants_slot
            ahead = len(self._resumed) + (self._starting is not None) + routing + sum(j.wants_slot for j in waiting)
            if self.streams.free - ahead <= 0 or self._deferred:
                return False
        if job.kind == "chat":
            return True
        return self._running is None and not any(j.kind != "chat" for j in waiting)

    def _abandon(self, job: Job) -> None:
        """A job was cancelled: if it waits anywhere, its place is free now, not when the thread reaches it."""
        if self._withdraw(job, "cancelled"):
            job._post("error", Cancelled())

    def _expire(self, job: Job) -> None:
        """A job reached its deadline (event loop): one still waiting gets TimedOut at once; a running
        one is ended by the thread (a reply cut at its next step)."""
        retry_after = self._retry_after()
        if self._withdraw(job, "timed_out"):
            job._post("error", TimedOut(self.request_timeout or 0, started=False, retry_after=retry_after))

    def _withdraw(self, job: Job, outcome: str) -> bool:
        """Take a job that waits (the queue, a slot, the cells) out of the worker; False if it is not waiting."""
        with self._lock:
            if job.state == "waiting":
                self._waiting -= 1
                self._queue.remove(job)
            elif job in self._resumed:
                self._resumed.remove(job)
            elif any(job in group for group in self._deferred):
                for group in self._deferred:
                    if job in group:
                        group.remove(job)
                self._deferred = deque(group for group in self._deferred if group)
            else:
                return False
            job.state = "abandoned"
            job.cancelled.set()
            self.counts[outcome] += 1
            return True

    def _mean_duration(self) -> float:
        return sum(self._durations) / len(self._durations) if self._durations else 2.0

    def _retry_after(self) -> int:
        with self._lock:
            return self._retry_after_locked()

    def _retry_after_locked(self) -> int:
        """Seconds until a place is likely free: the jobs ahead times the mean job time."""
        ahead = self._pending_locked() + (self._running is not None)
        return max(1, min(120, math.ceil(self._mean_duration() * max(1, ahead))))

    # -- the scheduler (inference thread) ----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not (self._active or self._resumed or self._deferred
                                                or self._runnable_locked()):
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
                    if (job is not first and job.state == "waiting" and job.kind == "batch" and job.key == first.key
                            and total + len(job.inputs) <= self.batch_size):
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
            with self._lock:
                self._resumed.append(job)  # it waits for a slot, and counts against the queue meanwhile
        else:
            self._finish(job, "served", value)

    def _run_batch(self, jobs: list[Job]) -> None:
        """One run_many call for the group (a job of more than batch_size items: one per batch, and it
        ends with TimedOut between two of them once past its deadline); a job cancelled meanwhile just
        drops its results."""
        run_many = jobs[0].fn(jobs[0])
        items = [item for job in jobs for item in job.inputs]
        try:
            results = []
            for first in range(0, len(items), self.batch_size):
                if len(jobs) == 1:
                    jobs[0].check()
                    if first and jobs[0].overdue():
                        raise TimedOut(self.request_timeout or 0, started=True)
                results += run_many(items[first : first + self.batch_size])
                self.counts["classify_calls"] += 1
                self.metrics.classify_batch(len(items[first : first + self.batch_size]))
        except CacheBusyError as error:
            return self._defer(jobs) if self._active else [self._finish(job, "failed", error) for job in jobs]
        except Cancelled as error:
            return self._finish(jobs[0], "cancelled", error)
        except TimedOut as error:
            return self._finish(jobs[0], "timed_out", error)
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
                if self._resumed:
                    job = self._resumed.popleft()
                else:
                    job = next((j for j in self._queue if j.state == "waiting" and j.kind == "chat"), None)
                    if job is None:
                        return
                    self._start_locked(job)
                self._starting = job
            if job.overdue():  # its deadline passed while it waited (the event loop had not withdrawn it yet)
                self._starting = None
                late = TimedOut(self.request_timeout or 0, started=False, retry_after=self._retry_after())
                self._finish(job, "timed_out", late)
                continue
            try:
                job.check()
                job.request = job.request or job.fn(job)
                handle = job.request.start(self.streams)
            except BaseException as error:  # noqa: BLE001
                self._starting = None
                self._finish(job, "cancelled" if isinstance(error, Cancelled) else "failed", error)
                continue
            with self._lock:
                self._starting = None
                if handle is None and self._active:
                    self._resumed.appendleft(job)  # too few free cells: it waits for a stream to end
                    return
            if handle is None:
                self._finish(job, "failed", CacheBusyError("the prompt does not fit the KV cache"))
                continue
            self._active[handle] = job

    def _step(self) -> None:
        """One decode step of every active chat; cancelled ones are freed first, and those past their
        deadline end as if their token budget ran out."""
        for handle, job in list(self._active.items()):
            if job.cancelled.is_set():
                self._end_stream(handle, "cancelled", Cancelled())
            elif job.overdue():
                self.counts["timed_out"] += 1
                self._active.pop(handle)
                piece = self.streams.end(handle)
                self.metrics.reply(piece.generation.tokens if piece.generation else 0)
                self._finish(job, "served", job.request.done(piece))
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
