"""Hostile request bodies and connections against `edgeqwen serve`, and what its error bodies tell the
client: a real HTTP server (uvicorn, configured as `edgeqwen serve` runs it) over a fake model, no
model file. Every refusal is a one-line 4xx; what went wrong inside the server is in its log only.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time

import pytest

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.errors import RoleError  # noqa: E402
from edgeqwen.server.app import ServerConfig  # noqa: E402
from edgeqwen.server.body import parse_json  # noqa: E402
from edgeqwen.server.errors import ApiError  # noqa: E402

from fake_model import fake_edgeqwen, serve_in_thread  # noqa: E402

CHAT = b'"model":"chat","messages":[{"role":"user","content":"hi"}]'
HOSTILE = {  # name: (path, body, what the message must say)
    "nested 50,000 deep": ("/v1/sentiment", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    "nested inside a field": (
        "/v1/chat/completions",
        b'{"model":"chat","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        "nested too deeply",
    ),
    "a 5,000-digit integer": (
        "/v1/chat/completions",
        b'{"max_tokens":' + b"9" * 5000 + b"," + CHAT + b"}",
        "out of range",
    ),
    "a seed over 64 bits": ("/v1/chat/completions", b'{"seed":' + b"9" * 40 + b"," + CHAT + b"}", "out of range"),
    "NaN": ("/v1/chat/completions", b'{"temperature":NaN,' + CHAT + b"}", "NaN is not a JSON number"),
    "Infinity": ("/v1/chat/completions", b'{"temperature":-Infinity,' + CHAT + b"}", "Infinity is not a JSON number"),
    "1e999": ("/v1/chat/completions", b'{"top_p":1e999,' + CHAT + b"}", "out of range"),
    "a duplicate key": ("/v1/sentiment", b'{"text":"I love it","text":"I hate it"}', 'key "text" appears twice'),
    "invalid UTF-8": ("/v1/sentiment", b'{"text":"\xff\xfe bad"}', "not UTF-8 (byte 9)"),
    "UTF-16": ("/v1/sentiment", '{"text":"good"}'.encode("utf-16"), "not UTF-8"),
    "a byte-order mark": ("/v1/sentiment", '\ufeff{"text":"good"}'.encode(), "not valid JSON"),
    "a lone surrogate": ("/v1/run", b'{"text":"\\ud800 broken","task":"sentiment"}', "lone UTF-16 surrogate"),
    "a lone low surrogate": ("/v1/sentiment", b'{"texts":["ok","\\udc00"]}', "lone UTF-16 surrogate"),
    "truncated": ("/v1/sentiment", b'{"text": "half', "Unterminated string starting at (line 1, column 10)"),
    "empty": ("/v1/sentiment", b"", "Expecting value"),
}


@pytest.fixture(scope="module")
def served():
    eq = fake_edgeqwen()
    config = ServerConfig(
        body_timeout=1.0, head_timeout=1.0, max_connections=8, keep_alive_timeout=1, max_body_bytes=256 * 1024
    )
    with serve_in_thread(config, eq) as (port, server):
        yield port, eq


def send(port: int, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_json_is_a_one_line_400_and_no_model_work(served, name, caplog):
    port, eq = served
    path, body, says = HOSTILE[name]
    before = len(eq.classified)
    with caplog.at_level(logging.ERROR):
        status, answer = send(port, path, body)
    assert status == 400 and answer["error"]["code"] == "invalid_json", answer
    assert says in answer["error"]["message"] and "\n" not in answer["error"]["message"]
    assert "Error:" not in answer["error"]["message"] and "sys.set_int_max_str_digits" not in answer["error"]["message"]
    assert len(eq.classified) == before
    assert not [r for r in caplog.records if r.exc_info], "a refused body is no internal error"


def test_fine_json_still_parses():
    body = json.dumps(
        {"text": "😀 \u2028 \ud83d\ude00", "n": [2**63 - 1, -(2**63) + 1, 1.5e300, 0], "nested": [[[[{}]]]]},
        ensure_ascii=True,
    )
    assert parse_json(body.encode())["text"] == "😀 \u2028 😀"
    assert parse_json(b'{"a": {"a": 1}}') == {"a": {"a": 1}}  # the same key in two objects is fine


def test_a_body_over_the_limit_is_413_before_it_is_read(served):
    port, _ = served
    status, answer = send(port, "/v1/sentiment", b"{" + b" " * (300 * 1024) + b"}")
    assert status == 413 and answer["error"]["code"] == "body_too_large"


def test_a_slow_body_gets_408_and_its_connection_is_freed(served):
    port, eq = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/sentiment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        answer = b""
        while b"}}" not in answer:  # one byte a while, as a slow-body client does, until the server answers
            sock.sendall(b" ")
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                answer += sock.recv(4096)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            assert time.monotonic() - started < 10, "no answer to a slow body"
    assert answer.startswith(b"HTTP/1.1 408") and b"body_timeout" in answer


def test_a_slow_request_head_is_cut_off(served):
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/sentiment HTTP/1.1\r\nHost: 1")
        started = time.monotonic()
        with pytest.raises((ConnectionError, AssertionError)):
            while time.monotonic() - started < 8:
                sock.sendall(b"2")  # one header byte a while, never the end of the head
                time.sleep(0.2)
        assert time.monotonic() - started < 4, "the head deadline is 1 s"
        assert sock.recv(100) == b""  # closed, with no answer


def test_connections_beyond_the_limit_get_503_and_the_server_answers_after(served):
    port, _ = served
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 503  # uvicorn's limit_concurrency (max_connections 8)
        conn.close()
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    status, answer = send(port, "/v1/sentiment", b'{"text": "fine"}')
    assert status == 200 and answer["label"]


def test_error_bodies_name_no_path_and_no_exception_but_the_log_does(caplog):
    """A broken head file of a role at the first classification (before: a 404 whose body held the
    file's path and numpy's exception text), and an unexpected exception (before: its repr)."""
    eq = fake_edgeqwen()
    failures = iter(
        [
            RoleError("/srv/edgeqwen/prompts/topic.npz: not a valid head file (ValueError: pickled data)"),
            KeyError("/home/user/secret/thing"),
        ]
    )

    def broken(texts, role="sentiment"):
        raise next(failures)

    eq.classify_many = broken
    with serve_in_thread(ServerConfig(), eq) as (port, _), caplog.at_level(logging.ERROR, logger="edgeqwen.server"):
        for _ in range(2):
            status, answer = send(port, "/v1/sentiment", b'{"text": "fine"}')
            message = answer["error"]["message"]
            assert status == 500 and "/" not in message and "Error" not in message and "error id" in message, message
            error_id = message.split("error id ")[1].split(";")[0]
            assert any(
                error_id in r.getMessage() and ("topic.npz" in r.getMessage() or r.exc_info) for r in caplog.records
            )


def test_api_error_messages_are_one_line():
    assert ApiError(400, "first\nsecond\r\n  third").message == "first second third"
    assert len(ApiError(400, "x" * 5000).message) <= 400


def test_a_streamed_request_that_waits_out_the_time_limit_gets_a_503_not_a_broken_stream():
    """A stream's 200 waits for its first item, so a request still queued at its deadline gets a real
    503 + Retry-After (the openai client retries it) instead of a 200 whose stream holds an error."""
    eq = fake_edgeqwen(classify_seconds=1.5)  # one classification holds the inference thread past the deadline
    with serve_in_thread(ServerConfig(request_timeout=0.5), eq) as (port, _):
        blocker = threading.Thread(target=send, args=(port, "/v1/sentiment", b'{"text": "holds the thread"}'))
        blocker.start()
        time.sleep(0.2)
        body = json.dumps({"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        blocker.join(timeout=30)
    assert response.status == 503 and int(response.getheader("Retry-After")) >= 1
    assert answer["error"]["code"] == "request_timeout" and "--request-timeout" in answer["error"]["message"]
