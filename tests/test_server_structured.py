"""Structured output, stop, logprobs and /metrics of a real `edgeqwen serve`, driven by the clients people use:
the official openai client (chat.completions.parse with a pydantic model, streamed structured output,
logprobs) and simonw's `llm` with --schema, configured for a local OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the test extra installs openai: pip install -e '.[test]'")
pydantic = pytest.importorskip("pydantic")
pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.server.launch import ServerProcess  # noqa: E402

from conftest import standin_path  # noqa: E402

pytestmark = pytest.mark.model

METRICS_KEY = "metrics-key-1"
CHAT_ROLE = """\
kind: generate
description: Test chat role, deterministic.
system: You are a helpful assistant. Answer briefly.
template: "{text}"
sampling: {temperature: 0.0, max_tokens: 96}
"""
TOPIC_ROLE = """\
kind: classify
description: Sports or politics?
system: Classify the topic of the text. Answer with one word.
template: "Text: {text}"
labels: [{name: sports}, {name: politics}]
"""


class Person(pydantic.BaseModel):
    name: str
    age: int
    languages: list[str]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    prompts = tmp_path_factory.mktemp("prompts")
    (prompts / "chat.yaml").write_text(CHAT_ROLE, encoding="utf-8")
    (prompts / "topic.yaml").write_text(TOPIC_ROLE, encoding="utf-8")
    args = [
        "--model",
        str(standin_path()),
        "--prompts",
        str(prompts),
        "--slots",
        "2",
        "--threads",
        "2",
        "--metrics-key",
        METRICS_KEY,
        "--log-level",
        "warning",
    ]
    with ServerProcess(*args) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


PERSON_TEXT = "Lin is a 29-year-old translator who speaks Chinese and French."


def test_openai_parse_with_a_pydantic_model(client):
    completion = client.chat.completions.parse(
        model="chat", messages=[{"role": "user", "content": PERSON_TEXT}], response_format=Person
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and person.age == 29 and "Lin" in person.name
    assert completion.choices[0].finish_reason == "stop"


def test_openai_streamed_structured_output(client):
    with client.chat.completions.stream(
        model="chat", messages=[{"role": "user", "content": PERSON_TEXT}], response_format=Person
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 3  # it came in pieces
    person = final.choices[0].message.parsed
    assert isinstance(person, Person) and person.age == 29
    json_object = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(json_object.choices[0].message.content), dict)


def test_openai_logprobs_plain_streamed_and_from_a_classify_role(client):
    messages = [{"role": "user", "content": "Say hello."}]
    completion = client.chat.completions.create(
        model="chat", messages=messages, logprobs=True, top_logprobs=3, max_tokens=8
    )
    entries = completion.choices[0].logprobs.content
    assert "".join(entry.token for entry in entries) == completion.choices[0].message.content
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 3 for entry in entries)
    streamed = client.chat.completions.create(model="chat", messages=messages, logprobs=True, max_tokens=8, stream=True)
    tokens = [
        entry.token
        for chunk in streamed
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    assert "".join(tokens) == completion.choices[0].message.content  # greedy: the same reply
    label = client.chat.completions.create(
        model="topic",
        messages=[{"role": "user", "content": "The striker scored twice."}],
        logprobs=True,
        top_logprobs=2,
    )
    (entry,) = label.choices[0].logprobs.content
    assert entry.token == label.choices[0].message.content == "sports"
    assert {alt.token for alt in entry.top_logprobs} == {"sports", "politics"}
    assert abs(sum(2.718281828**alt.logprob for alt in entry.top_logprobs) - 1) < 1e-3


def test_openai_stop_and_refused_fields(client):
    completion = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        stop=[", 4"],
        max_tokens=40,
    )
    assert (
        completion.choices[0].message.content.replace(" ", "") == "1,2,3"
        and completion.choices[0].finish_reason == "stop"
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        )
    assert refused.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError, match="pattern"):
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a+$"}},
            },
        )


def test_llm_cli_with_a_schema(server, tmp_path):
    llm = shutil.which("llm", path=str(Path(sys.executable).parent))
    if llm is None:
        pytest.skip("the test extra installs llm: pip install -e '.[test]'")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: edgeqwen\n  model_name: chat\n  api_base: {server.url}/v1\n  supports_schema: true\n",
        encoding="utf-8",
    )
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path)}
    done = subprocess.run(
        [llm, "-m", "edgeqwen", "--schema", "name, age int, languages", PERSON_TEXT],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    person = json.loads(done.stdout)
    assert person["age"] == 29 and "Lin" in person["name"] and isinstance(person["languages"], str)


def test_metrics_count_what_happened(server, client):
    client.chat.completions.create(
        model="topic", messages=[{"role": "user", "content": "The election results are in."}]
    )
    with pytest.raises(urllib.error.HTTPError) as no_key:
        urllib.request.urlopen(server.url + "/metrics", timeout=30)
    assert no_key.value.code == 401
    request = urllib.request.Request(server.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    assert 'edgeqwen_http_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'edgeqwen_http_requests_total{endpoint="/metrics",status="401"} 1' in text
    assert "edgeqwen_slots 2" in text and "edgeqwen_classify_seconds_count" in text
    replies = int(next(line.split()[1] for line in text.splitlines() if line.startswith("edgeqwen_replies_total ")))
    tokens = int(next(line.split()[1] for line in text.splitlines() if line.startswith("edgeqwen_reply_tokens_total ")))
    assert replies >= 1 and tokens >= replies
