"""The inference thread's scheduler: first on its own (no model, no HTTP: one thread, bounded wait,
cancellation; well under a second), then over the real model behind a real HTTP server in this
process (the session's model, no second load): chat replies in slots that share decode steps, and
classification requests that arrive together evaluated in one classify_many.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import threading
import time

import pytest

from edgeqwen.engine import Piece
from edgeqwen.server.worker import Cancelled, InferenceWorker, QueueFull, SlotRequest, TimedOut

from conftest import read_line_until
from fake_model import queue_state, serve_in_thread
from near_tie import assert_same_or_near_tie


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

        for _ in range(30):  # the next request is admitted the moment the answer arrives (queue size 0: no waiting)
            with pytest.raises(ValueError, match="bad input"):
                await worker.submit(broken).result()
            assert await worker.submit(lambda job: 42).result() == 42
        assert worker.status()["failed"] == 30
        worker.close()

    asyncio.run(scenario())


class Slots:
    """Chat slots for the scheduler alone: each reply is `length` pieces of "x", one per step()."""

    def __init__(self, slots: int = 1, length: int = 10_000) -> None:
        self.slots, self.length, self._said, self._next = slots, length, {}, 0

    @property
    def free(self) -> int:
        return self.slots - len(self._said)

    def open(self) -> int | None:
        if not self.free:
            return None
        self._next += 1
        self._said[self._next] = 0
        return self._next

    def step(self) -> dict:
        time.sleep(0.002)
        pieces = {}
        for handle in list(self._said):
            self._said[handle] += 1
            done = self._said[handle] >= self.length
            pieces[handle] = Piece("x", "stop" if done else None)
            if done:
                del self._said[handle]
        return pieces

    def close(self, handle: int) -> None:
        self._said.pop(handle, None)

    def end(self, handle: int) -> Piece:
        del self._said[handle]
        return Piece("", "length")


def routed_chat(job):
    """Like /v1/run: a call on the thread (the route), then a reply that waits for a slot."""
    job.check()
    return SlotRequest(start=lambda slots: slots.open(), done=lambda piece: piece.finish_reason)


def test_routed_chats_waiting_for_a_slot_count_against_the_queue():
    """A /v1/run flood (before: every request's route ran and then it waited for a slot outside the
    queue, so none was ever refused: 40 of 40 admitted with queue 2)."""

    async def scenario():
        worker = InferenceWorker(queue_size=2, streams=Slots(slots=1))
        admitted, refused, most_waiting = [], 0, 0
        for _ in range(40):
            try:
                admitted.append(worker.submit(routed_chat, then_chat=True))
            except QueueFull as full:
                refused += 1
                assert full.retry_after >= 1
            await asyncio.sleep(0.005)  # the thread routes what it can meanwhile
            most_waiting = max(most_waiting, worker.status()["waiting"])
        assert most_waiting <= 2 + 1 and len(admitted) <= 1 + 1 + 2 and refused >= 36  # + 1: admitted to start at once
        waiting = [job for job in admitted if job.request is not None][1:]
        assert waiting, "a routed chat waits for the slot"
        before = worker.status()["waiting"]
        waiting[0].cancel()  # its client goes away while it waits for the slot: its place is free at once
        assert worker.status()["waiting"] == before - 1 and worker.status()["cancelled"] == 1
        worker.close()

    asyncio.run(scenario())


def test_a_request_still_waiting_at_its_deadline_gets_timed_out_at_once():
    async def scenario():
        worker = InferenceWorker(queue_size=4, request_timeout=0.3)
        release, started_event = threading.Event(), threading.Event()
        worker.submit(blocking_job(release, started_event))  # holds the thread past every deadline
        await asyncio.get_running_loop().run_in_executor(None, started_event.wait, 5)
        started = time.monotonic()
        waiter = worker.submit(lambda job: "never")
        with pytest.raises(TimedOut) as timed_out:
            await waiter.result()
        assert not timed_out.value.started and timed_out.value.retry_after >= 1
        assert "--request-timeout" in str(timed_out.value)
        assert 0.25 < time.monotonic() - started < 2 and worker.status()["waiting"] == 0
        release.set()
        status = worker.status()
        assert status["timed_out"] == 1
        worker.close()

    asyncio.run(scenario())


def test_a_reply_running_at_its_deadline_ends_with_finish_reason_length():
    async def scenario():
        worker = InferenceWorker(queue_size=4, streams=Slots(slots=2, length=1_000_000), request_timeout=0.3)
        started = time.monotonic()
        request = SlotRequest(start=lambda slots: slots.open(), done=lambda piece: piece.finish_reason)
        job = worker.submit(lambda job: request, chat=True)
        items = [item async for item in job.items()]
        assert job.value == "length" and len(items) > 10  # it said what it could, then stopped
        assert 0.25 < time.monotonic() - started < 2
        status = worker.status()
        assert (status["served"], status["timed_out"], status["streams"]) == (1, 1, 0)
        worker.close()

    asyncio.run(scenario())


def test_a_classification_over_its_deadline_stops_between_batches():
    async def scenario():
        worker = InferenceWorker(queue_size=4, batch_size=2, request_timeout=0.2)
        calls = []

        def slow(texts):
            calls.append(texts)
            time.sleep(0.15)
            return texts

        job = worker.submit_batch("sentiment", [f"t{i}" for i in range(20)], slow)
        with pytest.raises(TimedOut) as timed_out:
            await job.result()
        assert timed_out.value.started and 2 <= len(calls) < 10
        assert await worker.submit_batch("sentiment", ["next"], lambda texts: texts).result() == ["next"]
        worker.close()

    asyncio.run(scenario())


# -- over the real model and a real HTTP server ------------------------------------------------------

SENTIMENT_TEXTS = ["这家餐厅的服务太差了，我再也不会来了。", "The battery lasts all day and the screen is gorgeous.",
                   "物流很快，包装完好，质量超出预期。", "I wanted to like this film, but the plot drags.",
                   "Works exactly as described."]
QUESTIONS = ["Name one famous Chinese dish.", "用一句话介绍一下长城。", "What is 2 + 2?", "Give me one tip for "
                                                                               "sleeping well."]


@pytest.fixture(scope="module")
def live(eq):
    """`create_app` over the session's model, served by uvicorn on a free loopback port in this process."""
    pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")
    from edgeqwen.server.app import ServerConfig

    with serve_in_thread(ServerConfig(queue_size=8, slots=4), eq) as (port, _):
        yield port


def post(port: int, path: str, body: dict, results: list | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.status, json.loads(response.read())
    conn.close()
    if results is not None:
        results.append(answer)
    return answer


def wait_until(port: int, condition, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(state := queue_state(port)):
        assert time.monotonic() < deadline, state
        time.sleep(0.02)
    return state


def in_threads(calls) -> list[threading.Thread]:
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    return threads


def chat_body(question: str, stream: bool = False, max_tokens: int = 24) -> dict:
    return {"model": "chat", "temperature": 0, "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": question}]}


def test_sentiment_requests_that_arrive_together_are_evaluated_in_one_call(eq, live):
    alone = [eq.sentiment(text).label for text in SENTIMENT_TEXTS]
    before = queue_state(live)
    blocker: list = []
    # 20 texts: 2 calls
    threads = in_threads([lambda: post(live, "/v1/sentiment", {"texts": SENTIMENT_TEXTS * 4}, blocker)])
    wait_until(live, lambda q: q["busy"])
    answers: dict[int, tuple] = {}
    threads += in_threads([lambda i=i: answers.update({i: post(live, "/v1/sentiment",
                                                               {"text": SENTIMENT_TEXTS[i]})}) for i in range(5)])
    for thread in threads:
        thread.join(timeout=300)
    after = queue_state(live)
    assert blocker[0][0] == 200 and [r["label"] for r in blocker[0][1]["results"]] == alone * 4
    assert [answers[i][1]["label"] for i in range(5)] == alone and {answers[i][0] for i in range(5)} == {200}
    # The five waited behind the blocker and then went through one classify_many together.
    assert after["classify_calls"] - before["classify_calls"] == 2 + 1
    assert after["classify_jobs"] - before["classify_jobs"] == 1 + 5


def test_a_cancelled_job_in_a_batch_does_not_fail_the_others(eq):
    async def scenario():
        worker = InferenceWorker(queue_size=8)
        release = threading.Event()
        worker.submit(blocking_job(release))
        victim: list = []

        def classify_many(texts):
            victim[0].cancel()  # its client goes away while the batch runs
            return eq.classify_many(texts)

        jobs = [worker.submit_batch("sentiment", [text], classify_many) for text in SENTIMENT_TEXTS[:3]]
        victim.append(jobs[1])
        release.set()
        first, third = await jobs[0].result(), await jobs[2].result()
        with pytest.raises(Cancelled):
            await jobs[1].result()
        assert [first[0].label, third[0].label] == [eq.sentiment(SENTIMENT_TEXTS[0]).label,
                                                    eq.sentiment(SENTIMENT_TEXTS[2]).label]
        assert worker.status()["classify_calls"] == 1 and worker.status()["cancelled"] == 1
        worker.close()

    asyncio.run(scenario())


def test_chats_share_decode_steps_and_each_gets_its_reply_alone(eq, live):
    alone = [post(live, "/v1/chat/completions", chat_body(q))[1]["choices"][0]["message"]["content"] for q in QUESTIONS]
    answers: dict[int, tuple] = {}
    threads = in_threads([lambda i=i, q=q: answers.update({i: post(live, "/v1/chat/completions", chat_body(q))})
                          for i, q in enumerate(QUESTIONS)])
    peak = 0
    while any(thread.is_alive() for thread in threads):
        peak = max(peak, queue_state(live)["streams"])
        time.sleep(0.01)
    assert peak >= 2, "the chats never ran together"
    assert wait_until(live, lambda q: q["streams"] == 0 and not q["busy"])
    # Greedy: the same text as alone. Which replies share a step depends on when each request arrives,
    # and another batch's rounding can flip a near-tie token ("some tips" / "a few tips", "被誉为“世界七大
    # 奇迹" / "万国之盾" seen): then the reply still starts as its own reply alone, and as no other, and
    # parts from it only where the model was torn between two tokens (the server is idle: the engine is free).
    for i, question in enumerate(QUESTIONS):
        together = answers[i][1]["choices"][0]["message"]["content"]
        shared = [len(os.path.commonprefix([together, reply])) for reply in alone]
        assert together == alone[i] or (shared[i] == max(shared) and shared.count(shared[i]) == 1), (together, alone[i])
        prompt = eq.conversation().prepare(question).prompt.tokens
        assert_same_or_near_tie(eq.engine, prompt, alone[i], together)


def test_a_cancelled_stream_frees_its_slot_and_the_others_finish(live):
    alone = post(live, "/v1/chat/completions", chat_body(QUESTIONS[0]))[1]["choices"][0]["message"]["content"]
    before = queue_state(live)
    conn = http.client.HTTPConnection("127.0.0.1", live, timeout=300)
    body = json.dumps(chat_body("Count from 1 to 500, separated by commas.", True, 500)).encode()
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    read_line_until(response, lambda line: b'"content":"' in line and b'"content":""' not in line)
    answers: list = []
    (thread,) = in_threads([lambda: post(live, "/v1/chat/completions", chat_body(QUESTIONS[0]), answers)])
    wait_until(live, lambda q: q["streams"] == 2)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the long stream's client goes away
    conn.close()
    wait_until(live, lambda q: q["cancelled"] == before["cancelled"] + 1)
    thread.join(timeout=120)
    assert answers[0][0] == 200 and answers[0][1]["choices"][0]["message"]["content"] == alone
    after = wait_until(live, lambda q: q["streams"] == 0)
    assert after["served"] == before["served"] + 1


def test_a_classification_too_big_beside_a_running_chat_waits_for_it_and_is_answered(model_path):
    from edgeqwen import EdgeQwen
    from edgeqwen.server.worker import SlotRequest

    small = EdgeQwen(model_path, n_ctx=512, prefix_cache=False)
    review = "The room was dirty, the shower was cold and the staff were rude to us every single day. " * 12
    expected = small.sentiment(review).label
    order: list[str] = []

    async def scenario():
        worker = InferenceWorker(queue_size=8, streams=small.chat_streams(2))
        chat = small.conversation(sampling={"temperature": 0, "max_tokens": 330})
        turn = chat.prepare("Count from 1 to 500, separated by commas.")

        def chat_done(piece):
            order.append("chat")
            return chat.history[-1]["content"]

        chat_job = worker.submit(lambda job: SlotRequest(start=lambda streams: streams.start(chat, turn),
                                                         done=chat_done), chat=True)
        await until(lambda: worker.status()["streams"] == 1)  # its prompt and 330 tokens: most of the 512 cells

        def classify(texts):
            results = small.classify_many(texts)
            order.append("sentiment")
            return results

        sentiment_job = worker.submit_batch("sentiment", [review], classify)
        reply, labels = await asyncio.wait_for(asyncio.gather(chat_job.result(), sentiment_job.result()), timeout=240)
        status = worker.status()
        worker.close()
        return reply, labels, status

    reply, labels, status = asyncio.run(scenario())
    assert order == ["chat", "sentiment"]  # deferred until the slot's cells were free, not refused
    assert labels[0].label == expected and reply.startswith("1, 2, 3")
    assert status["failed"] == 0 and status["served"] == 2
