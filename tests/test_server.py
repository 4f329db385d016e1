"""`edgeqwen serve` as a real subprocess on a free port, driven over HTTP and by the official openai client.

One server for the whole module (one model load): API key set, one chat slot and a wait queue of 1
(so a test can fill both), small limits, and a test prompts dir whose chat role answers in at most 32 tokens at
temperature 0.
One llama.cpp thread: on a shared 2-core machine that is faster than two, and leaves a core to the rest.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the test extra installs openai: pip install -e '.[test]'")
pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.server.launch import ServerProcess  # noqa: E402

from conftest import read_line_until, standin_path  # noqa: E402

KEY = "test-key-123"
MAX_BODY = 64 * 1024
MAX_TEXT = 2000

CHAT_ROLE = """\
kind: generate
description: Test chat role with short, deterministic replies.
system: You are a helpful assistant. Answer briefly.
template: "{text}"
sampling: {temperature: 0.0, max_tokens: 32}
"""

TOPIC_ROLE = """\
kind: classify
description: Sports or politics?
system: Classify the topic of the text. Answer with one word.
template: "Text: {text}"
labels:
  - {name: sports, display: 体育}
  - {name: politics, display: 政治}
examples:
  - {text: "The striker scored twice in the final.", label: sports}
  - {text: "Parliament passed the budget after a long debate.", label: politics}
"""


def write_test_prompts(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chat.yaml").write_text(CHAT_ROLE, encoding="utf-8")
    (directory / "topic.yaml").write_text(TOPIC_ROLE, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    prompts = write_test_prompts(tmp_path_factory.mktemp("prompts"))
    args = [
        "--model", str(model_path), "--prompts", str(prompts), "--api-key", KEY, "--queue-size", "1", "--slots", "1",
        "--threads", "1",
        "--max-body-bytes", str(MAX_BODY), "--max-text-chars", str(MAX_TEXT), "--log-level", "warning",
    ]
    with ServerProcess(*args) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def call(server, method: str, path: str, body=None, *, key: str | None = KEY, raw: bytes | None = None,
         timeout: float = 300):
    """One HTTP request; returns (status, headers, parsed JSON body)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    try:
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        return response.status, dict(response.getheaders()), json.loads(payload) if payload else None
    finally:
        conn.close()


def sse_events(server, path: str, body: dict) -> list:
    """POST with stream: true and return the parsed `data:` events."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    conn.request("POST", path, body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("content-type").startswith("text/event-stream")
    events = []
    for line in response.read().decode().splitlines():
        if line.startswith("data: "):
            events.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    conn.close()
    return events


# -- health, auth, models --------------------------------------------------------------------------


def test_health_needs_no_key_and_reports_the_queue(server):
    status, _, body = call(server, "GET", "/health", key=None)
    assert status == 200
    assert body["status"] == "ok"
    assert body["model"] == standin_path().stem
    assert body["queue"]["queue_size"] == 1 and body["queue"]["busy"] is False


def test_every_other_endpoint_needs_the_key(server):
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/sentiment", {"text": "good"}),
                               ("POST", "/v1/run", {"text": "good"}), ("POST", "/v1/chat/completions", {})]:
        for key in (None, "wrong-key"):
            status, headers, error = call(server, method, path, body, key=key)
            assert status == 401, (path, key)
            assert headers.get("www-authenticate") == "Bearer"
            assert error["error"]["code"] == "invalid_api_key"
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # The page itself carries no data and asks for the key; it loads without one.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("GET", "/")
    page = conn.getresponse()
    assert page.status == 200 and b"edgeqwen" in page.read()
    assert "default-src 'self'" in page.getheader("content-security-policy")
    conn.close()


def test_models_lists_the_model_file_and_every_role(client):
    models = {m.id: m for m in client.models.list().data}
    assert {standin_path().stem, "chat", "sentiment", "route", "topic"} <= set(models)
    assert models["sentiment"].model_extra["labels"] == ["positive", "negative"]


# -- OpenAI chat completions -----------------------------------------------------------------------


def test_openai_client_plain_completion(client):
    completion = client.chat.completions.create(
        model=standin_path().stem,
        messages=[{"role": "system", "content": "Answer in one short sentence."},
                  {"role": "user", "content": "What is the capital of France?"}],
    )
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 5 and 0 < completion.usage.completion_tokens <= 32


def test_openai_client_streamed_completion(client):
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Count from 1 to 20, separated by commas."}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 4, "a streamed reply comes in several pieces"
    assert "1" in "".join(pieces)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"], "12 tokens cannot finish counting to 20"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 10


def test_a_classify_role_as_the_model_answers_with_its_label(client):
    completion = client.chat.completions.create(
        model="sentiment", messages=[{"role": "user", "content": "这家餐厅的服务太差了，我再也不会来了。"}]
    )
    assert completion.choices[0].message.content == "negative"
    extra = completion.model_extra["classification"]
    assert extra["label"] == "negative" and extra["confidence"] > 0.5 and extra["display"] == "负面 negative"


def test_openai_client_sees_clear_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="last message must be a user message"):
        client.chat.completions.create(model="chat",
                                       messages=[{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}])
    with pytest.raises(openai.BadRequestError, match="n: only one choice"):  # a field that would change the answer: 400
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], n=2)


# -- sentiment, classify, run ----------------------------------------------------------------------


def test_sentiment_of_one_text_and_of_a_list(server):
    status, _, one = call(server, "POST", "/v1/sentiment",
                          {"text": "The battery lasts all day and the screen is gorgeous."})
    assert status == 200
    assert one["label"] == "positive" and one["display"] == "正面 positive"
    assert 0.5 < one["confidence"] <= 1 and set(one["scores"]) == {"positive", "negative"}
    assert one["timings"]["total_ms"] > 0
    texts = ["房间很小，空调还坏了。", "Great phone, I love it!", "物流很快，质量超出预期。"]
    status, _, many = call(server, "POST", "/v1/sentiment", {"texts": texts})
    assert status == 200
    assert [r["label"] for r in many["results"]] == ["negative", "positive", "positive"]
    assert many["timings"]["total_ms"] > 0


def test_any_classify_role_by_name(server):
    status, _, result = call(server, "POST", "/v1/classify/topic",
                             {"text": "The goalkeeper saved a penalty in extra time."})
    assert status == 200 and result["role"] == "topic" and result["label"] == "sports" and result["display"] == "体育"
    status, _, error = call(server, "POST", "/v1/classify/nope", {"text": "x"})
    assert status == 404 and "available: route, sentiment, topic" in error["error"]["message"]
    status, _, error = call(server, "POST", "/v1/classify/chat", {"text": "x"})
    assert status == 404 and error["error"]["code"] == "role_not_found"


def test_run_routes_like_the_cli(server, invoke_model):
    text = "这家餐厅的服务太差了，我再也不会来了。"
    status, _, review = call(server, "POST", "/v1/run", {"text": text})
    assert status == 200
    cli = invoke_model("run", "--json", text)
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)
    assert set(review) == set(expected)
    for key in ("text", "task", "label", "display", "reply", "truncated"):
        assert review[key] == expected[key], key
    assert review["route"]["task"] == expected["route"]["task"] == "sentiment"
    assert review["confidence"] == pytest.approx(expected["confidence"], abs=0.02)
    assert review["label"] == "negative" and review["reply"] is None
    status, _, question = call(server, "POST", "/v1/run", {"text": "How do I make a cup of green tea?"})
    assert status == 200 and question["task"] == "chat" and question["label"] is None and question["reply"]


def test_run_streams_the_label_then_the_reply_and_keeps_a_conversation(server):
    events = sse_events(server, "/v1/run",
                        {"text": "房间干净，早餐丰富，下次还会再来。", "task": "both", "stream": True})
    kinds = [e["type"] for e in events]
    assert kinds[0] == "sentiment" and kinds[-1] == "done" and kinds.count("delta") >= 2
    assert events[0]["label"] == "positive"
    done = events[-1]["result"]
    assert done["reply"] == "".join(e["text"] for e in events if e["type"] == "delta")
    history = [{"role": "user", "content": "My name is Mei."},
               {"role": "assistant", "content": "Nice to meet you, Mei!"}]
    status, _, result = call(server, "POST", "/v1/run",
                             {"text": "What is my name?", "task": "chat", "history": history})
    assert status == 200 and "Mei" in result["reply"]


# -- limits and errors -----------------------------------------------------------------------------


def test_limits_and_bad_requests_get_clear_json_errors(server):
    cases = [
        ({"raw": json.dumps({"text": "x" * (MAX_BODY + 10)}).encode()}, 413, "body_too_large"),
        ({"body": {"text": "y" * (MAX_TEXT + 1)}}, 422, "text_too_long"),
        ({"body": {"texts": ["fine", "z" * (MAX_TEXT + 1)]}}, 422, "text_too_long"),
        ({"body": {"text": "   "}}, 422, "empty_text"),
        ({"body": {"texts": []}}, 422, "invalid_request"),
        ({"body": {"text": 42}}, 422, "invalid_request"),
        ({"body": ["not", "an", "object"]}, 422, "invalid_request"),
        ({"raw": b"{not json"}, 400, "invalid_json"),
    ]
    for kwargs, expected, code in cases:
        status, headers, error = call(server, "POST", "/v1/sentiment", **kwargs)
        assert status == expected, (kwargs, error)
        assert headers["content-type"] == "application/json"
        assert error["error"]["code"] == code and error["error"]["message"], error
        assert "\n" not in error["error"]["message"]
    status, _, error = call(server, "POST", "/v1/run", {"text": "hi", "task": "poem"})
    assert status == 422 and error["error"]["param"] == "task"
    status, _, error = call(server, "POST", "/v1/chat/completions",
                            {"model": "chat", "messages": [{"role": "user", "content": "q" * (MAX_TEXT + 1)}]})
    assert status == 422 and error["error"]["param"] == "messages.0.content"
    status, _, error = call(server, "GET", "/v1/nothing-here")
    assert status == 404 and error["error"]["message"] == "no such endpoint: GET /v1/nothing-here"
    status, _, error = call(server, "GET", "/v1/sentiment")
    assert status == 405 and error["error"]["code"] == "method_not_allowed"


# -- one engine: queue, 503, disconnect ------------------------------------------------------------


def _open_stream(server, body: dict):
    """Start a streamed completion on a raw socket; returns (connection, response) after the first content chunk."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    read_line_until(response, lambda line: line.startswith(b"data: ") and b'"content":"' in line
                    and b'"content":""' not in line)
    return conn, response


def wait_for_queue(server, condition, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition(call(server, "GET", "/health")[2]["queue"]):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def test_full_queue_gets_503_and_a_disconnect_frees_the_slot(server, client):
    before = call(server, "GET", "/health")[2]["queue"]
    assert before["slots"] == 1
    # A: a long generation holds the only chat slot (max_tokens overrides the role's 32, up to half the context).
    conn, response = _open_stream(server, {
        "model": "chat", "stream": True, "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas. Do not stop early."}],
    })
    assert call(server, "GET", "/health")[2]["queue"]["busy"] is True
    # W: a chat waits for the slot, then its client gives up: its place is free again at once.
    quitter = http.client.HTTPConnection(server.host, server.port, timeout=30)
    quitter.request("POST", "/v1/chat/completions",
                    body=json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode(),
                    headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    wait_for_queue(server, lambda q: q["waiting"] == 1, "request W never queued")
    quitter.sock.shutdown(socket.SHUT_RDWR)
    quitter.close()
    wait_for_queue(server, lambda q: q["waiting"] == 0, "the abandoned request kept its place in the queue")
    # B: a chat waits in the queue (size 1).
    waiting: dict = {}
    body = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}
    thread = threading.Thread(target=lambda: waiting.update(result=call(server, "POST", "/v1/chat/completions", body)))
    thread.start()
    wait_for_queue(server, lambda q: q["waiting"] == 1, "request B never queued")
    # C: the queue is full for another chat...
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 503 and int(raised.value.response.headers["retry-after"]) >= 1
    status, headers, error = call(server, "POST", "/v1/chat/completions", body)
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert error["error"]["code"] == "queue_full" and "retry in" in error["error"]["message"]
    # ...but a classification runs between A's decode steps, without waiting for the slot.
    status, _, label = call(server, "POST", "/v1/sentiment", {"text": "Great value, works perfectly."})
    assert status == 200 and label["label"] == "positive"
    # A's client goes away mid-stream: its slot is freed at the next step and B gets it.
    closed_at = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    response.close()
    conn.close()
    thread.join(timeout=120)
    assert not thread.is_alive()
    status, _, result = waiting["result"]
    assert status == 200 and result["choices"][0]["message"]["content"]
    assert time.monotonic() - closed_at < 60
    after = call(server, "GET", "/health")[2]["queue"]
    assert after["cancelled"] == before["cancelled"] + 2, "W was dropped and A stopped, not run to 1000 tokens"
    assert after["served"] == before["served"] + 2
    assert after["rejected"] == before["rejected"] + 2
    assert after["busy"] is False and after["waiting"] == 0 and after["streams"] == 0
