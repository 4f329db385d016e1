"""The inference queue on its own (no model, no HTTP): one thread, bounded wait, cancellation. Runs in well under a second."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from edgeqwen.server.worker import Cancelled, InferenceWorker, QueueFull


def blocking_job(release: threading.Event, started: threading.Event | None = None, threads: list | None = None):
    def fn(job):
        if threads is not None:
            threads.append(threading.current_thread().name)
        if started:
            started.set()
        release.wait(5)
        return "done"

    return fn


def streaming_job(count: int, produced: list, gate: threading.Event | None = None):
    def fn(job):
        for i in range(count):
            if gate is not None:
                gate.wait(5)
            time.sleep(0.01)  # like a token: the whole stream would take count/100 seconds
            produced.append(i)
            job.emit(i)
        return count

    return fn


async def until(condition, timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_jobs_run_one_at_a_time_on_one_thread_and_a_full_queue_refuses_at_once():
    async def scenario():
        worker = InferenceWorker(queue_size=2)
        release, started, threads = threading.Event(), threading.Event(), []
        running = worker.submit(blocking_job(release, started, threads))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        waiting = [worker.submit(blocking_job(release, threads=threads)) for _ in range(2)]
        assert worker.status()["busy"] and worker.status()["waiting"] == 2
        with pytest.raises(QueueFull) as full:
            worker.submit(blocking_job(release))
        assert full.value.retry_after >= 1 and "retry in" in str(full.value)
        release.set()
        results = await asyncio.gather(running.result(), *(job.result() for job in waiting))
        assert results == ["done"] * 3
        assert set(threads) == {"edgeqwen-inference"}
        status = worker.status()
        assert (status["served"], status["rejected"], status["waiting"], status["busy"]) == (3, 1, 0, False)
        worker.close()

    asyncio.run(scenario())


def test_a_cancelled_stream_stops_at_the_next_item_and_a_cancelled_waiter_leaves_the_queue():
    async def scenario():
        worker = InferenceWorker(queue_size=1)
        produced, gate = [], threading.Event()
        stream = worker.submit(streaming_job(1000, produced, gate))
        await until(lambda: worker.status()["busy"])
        waiter = worker.submit(blocking_job(threading.Event()))
        waiter.cancel()  # its client went away while it waited
        assert worker.status()["waiting"] == 0
        worker.submit(lambda job: "next").cancel()  # the freed place can be taken again
        items = stream.items()
        gate.set()
        assert [await items.__anext__() for _ in range(3)] == [0, 1, 2]
        await items.aclose()  # the consumer disconnects mid-stream
        await until(lambda: not worker.status()["busy"])
        assert len(produced) < 1000
        with pytest.raises(Cancelled):
            await waiter.result()
        assert worker.status()["cancelled"] == 3
        worker.close()

    asyncio.run(scenario())


def test_errors_reach_the_request_and_the_thread_survives():
    async def scenario():
        worker = InferenceWorker(queue_size=0)

        def broken(job):
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            await worker.submit(broken).result()
        assert await worker.submit(lambda job: 42).result() == 42
        assert worker.status()["failed"] == 1
        worker.close()

    asyncio.run(scenario())
