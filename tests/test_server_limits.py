"""Limits of `edgeqwen serve` on the real model: max_tokens capped by the context and the slots, a time
limit that cuts a real reply, a /v1/run flood refused beyond the queue, and history fitting that
tokenizes each message once. A real HTTP server (uvicorn as `edgeqwen serve` runs it) in this process
over the session's model.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.prompt_fit import fit_prompt  # noqa: E402
from edgeqwen.server.app import ServerConfig  # noqa: E402

from fake_model import queue_state, serve_in_thread  # noqa: E402

TIME_LIMIT = 4.0
COUNT = "Count from 1 to 1000, separated by commas. Do not stop early."


@pytest.fixture(scope="module")
def counting(model_path, tmp_path_factory):
    """The model with test_server's roles: a chat role at temperature 0 without DRY, which counts on and on."""
    from edgeqwen import EdgeQwen

    from test_server import write_test_prompts

    return EdgeQwen(model_path, prompts_dir=write_test_prompts(tmp_path_factory.mktemp("prompts")), prefix_cache=False)


@pytest.fixture(scope="module")
def limited(counting):
    with serve_in_thread(ServerConfig(queue_size=2, slots=2, request_timeout=TIME_LIMIT), counting) as (port, server):
        yield port, server


def post(port: int, path: str, body: dict, timeout: float = 120) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def chat(content: str, max_tokens: int | None = None, history=(), stream: bool = False) -> dict:
    body = {
        "model": "chat",
        "temperature": 0,
        "stream": stream,
        "messages": [*history, {"role": "user", "content": content}],
    }
    return body if max_tokens is None else {**body, "max_tokens": max_tokens}


def test_max_tokens_over_the_limit_is_a_400_that_names_it(limited, counting):
    port, server, eq = *limited, counting
    limit = server.reply_limit(eq.roles["chat"])
    assert limit == max(eq.roles["chat"].sampling.max_tokens, eq.n_ctx // 2)  # 2 slots: half the context each
    for field, value in (("max_tokens", 1_000_000_000), ("max_tokens", limit + 1), ("max_completion_tokens", 10**6)):
        status, _, answer = post(port, "/v1/chat/completions", {**chat("hi"), field: value})
        error = json.loads(answer)["error"]
        assert status == 400 and error["param"] == field and f"at most {limit}" in error["message"], error


def test_a_reply_at_the_limit_keeps_half_the_context_for_the_conversation(limited, counting):
    """Before: max_tokens 1500 on a 2048 context dropped all but 508 tokens of a 1,506-token prompt."""
    port, server, eq = *limited, counting
    limit = server.reply_limit(eq.roles["chat"])
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Message number {i}: " + "tea and history " * 20}
        for i in range(20)
    ]
    status, _, answer = post(port, "/v1/chat/completions", chat("What was message number 0 about?", limit, history))
    usage = json.loads(answer)["usage"]
    expected = eq.conversation(history=history, sampling={"max_tokens": limit}).prepare(
        "What was message number 0 about?"
    )
    assert status == 200 and usage["prompt_tokens"] == len(expected.prompt.tokens)
    assert (
        eq.n_ctx - limit - 200 < usage["prompt_tokens"] <= eq.n_ctx - limit
    )  # at most one turn pair short of its share


def test_the_time_limit_cuts_a_real_reply_with_finish_reason_length(limited):
    port, _ = limited
    before = queue_state(port)["timed_out"]
    started = time.monotonic()
    status, _, answer = post(port, "/v1/chat/completions", chat(COUNT, 1000))
    took = time.monotonic() - started
    choice, usage = json.loads(answer)["choices"][0], json.loads(answer)["usage"]
    assert status == 200 and choice["finish_reason"] == "length"
    assert re.match(r"1,\s*2,\s*3", choice["message"]["content"]), choice["message"]["content"]
    assert 0 < usage["completion_tokens"] < 1000 and TIME_LIMIT - 0.5 < took < TIME_LIMIT + 5
    status, _, answer = post(port, "/v1/chat/completions", chat(COUNT, 1000, stream=True))
    events = [line[6:] for line in answer.decode().splitlines() if line.startswith("data: ")]
    finishes = [
        json.loads(e)["choices"][0]["finish_reason"]
        for e in events[:-1]
        if json.loads(e)["choices"][0]["finish_reason"]
    ]
    assert status == 200 and events[-1] == "[DONE]" and finishes == ["length"]
    status, _, answer = post(
        port,
        "/v1/run",
        {"text": "Tell me a very long story about a dragon, with many chapters.", "task": "chat", "stream": True},
    )
    events = [json.loads(line[6:]) for line in answer.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1]["type"] == "done" and events[-1]["result"]["reply"]
    assert queue_state(port)["timed_out"] >= before + 2


def test_a_run_flood_is_refused_beyond_the_queue(limited):
    """Before: a routed chat of /v1/run waited for a slot outside the queue, so a flood was never refused."""
    port, _ = limited
    answers: list = []
    body = {"text": "Tell me a long story about a dragon who learns to cook.", "task": "chat"}
    threads = [threading.Thread(target=lambda: answers.append(post(port, "/v1/run", body))) for _ in range(12)]
    most_waiting = 0
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        most_waiting = max(most_waiting, queue_state(port)["waiting"])
        time.sleep(0.05)
    statuses = sorted(status for status, _, _ in answers)
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 12 - (2 + 2 + 1), statuses
    assert all(int(headers["retry-after"]) >= 1 for status, headers, _ in answers if status == 503)
    assert most_waiting <= 2 + 1  # the queue, and one that starts at once, for the moment before the thread takes it


def test_history_fitting_tokenizes_each_message_once(eq):
    """Before: the whole conversation was re-rendered and re-tokenized once per dropped turn pair."""
    engine, role = eq.engine, eq.roles["chat"]
    history = [
        {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"{i}: " + "Tell me more about tea in China and Japan. " * 20,
        }
        for i in range(80)
    ]
    tokenized: list[int] = []
    tokenize = engine.tokenize

    def counting(text, *, special=False):
        tokenized.append(0 if special else len(text))
        return tokenize(text, special=special)

    engine.tokenize = counting
    try:
        fitted = fit_prompt(engine, role, "And now?", history, reserve=256)
    finally:
        del engine.tokenize
    fixed = sum(len(m["content"]) for m in role.messages("And now?"))  # the system prompt and the new message
    assert sum(tokenized) <= sum(len(m["content"]) for m in history) + fixed  # each message once
    # The same cut as dropping one pair at a time, as before.
    kept = list(history)
    while len(engine.chat_tokens(role.messages("And now?", kept))) + 256 > engine.n_ctx and kept:
        kept = kept[2:]
    assert fitted.history == kept and fitted.tokens == engine.chat_tokens(role.messages("And now?", kept))
