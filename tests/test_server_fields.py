"""The chat-completions request's fields, no model: what is supported, refused with a 400 naming the field,
or accepted and ignored (docs/server.md has the table); and /metrics' text format."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from starlette.applications import Starlette  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from edgeqwen.roles import load_roles  # noqa: E402
from edgeqwen.server import openai as openai_map  # noqa: E402
from edgeqwen.server.errors import api_error  # noqa: E402
from edgeqwen.server.metrics import Metrics, RequestCounter, endpoint_label  # noqa: E402
from edgeqwen.server.schemas import IGNORED_FIELDS, RequestError  # noqa: E402

USER = [{"role": "user", "content": "hi"}]
N_VOCAB = 1000  # the vocabulary size logit_bias is checked against here


def request(**fields):
    return openai_map.parse_request({"model": "chat", "messages": USER, **fields})


def refused(status: int, **fields) -> RequestError:
    with pytest.raises(RequestError) as error:
        body = request(**fields)
        openai_map.chat_spec(body, load_roles()["chat"], 1000, N_VOCAB)
    assert error.value.status == status
    assert api_error(error.value).status == status and "\n" not in str(error.value)
    return error.value


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "a"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"top_k": 5}, "top_k"),
        ({"grammar": 'root ::= "x"'}, "grammar"),
        ({"messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": "1"}]}]}, "messages.0.tool_calls"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0",
        ),
    ],
)
def test_fields_that_would_change_the_answer_are_refused_with_400(fields, param):
    error = refused(400, **fields)
    assert error.param == param and param.split(".")[0] in str(error)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
    ],
)
def test_bad_values_are_422(fields, param):
    assert refused(422, **fields).param == param


@pytest.mark.parametrize(
    ("bias", "says"),
    [
        ({"abc": 5}, "'abc' is not a token id"),
        ({"1.5": 5}, "'1.5' is not a token id"),
        ({" 12": 5}, "' 12' is not a token id"),
        ({"12\n": 5}, r"'12\n' is not a token id"),
        ({"-1": 5}, "token id -1 is not in this model's vocabulary (0 to 999)"),
        ({str(N_VOCAB): 5}, f"token id {N_VOCAB} is not in this model's vocabulary"),
        ({"9" * 5000: -100}, "token id 9999999999999999999999999999999999999999 is not in this model's vocabulary"),
        ({"12": 100.5}, "the bias of token 12 must be a number from -100 to 100, not 100.5"),
        ({"12": -101}, "must be a number from -100 to 100, not -101"),
        ({"12": "5"}, "must be a number from -100 to 100, not '5'"),
        ({"12": False}, "must be a number from -100 to 100, not False"),
        ({"12": None}, "must be a number from -100 to 100, not None"),
        ({str(token): 1 for token in range(301)}, "at most 300 tokens, not 301"),
        ([["12", 5]], "logit_bias: Input should be a valid dictionary"),
    ],
)
def test_a_bad_logit_bias_is_a_one_line_422_naming_it(bias, says):
    error = refused(422, logit_bias=bias)
    assert error.param == "logit_bias" and str(error).startswith("logit_bias: ") and says in str(error)


def test_logit_bias_reaches_the_chat_spec_as_token_ids():
    bias = {"0": -100, "17": 2.5, str(N_VOCAB - 1): 100, **{str(token): -1 for token in range(100, 397)}}
    _, spec = openai_map.chat_spec(request(logit_bias=bias), load_roles()["chat"], 1000, N_VOCAB)
    assert len(spec.logit_bias) == 300 and spec.logit_bias[0] == -100.0 and spec.logit_bias[17] == 2.5
    assert spec.logit_bias[N_VOCAB - 1] == 100.0 and all(isinstance(token, int) for token in spec.logit_bias)
    _, spec = openai_map.chat_spec(request(logit_bias={}), load_roles()["chat"], 1000, N_VOCAB)
    assert spec.logit_bias == {}


def test_fields_that_change_nothing_are_accepted():
    body = request(
        user="u1",
        metadata={"k": "v"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        tool_choice="none",
        logit_bias={},
        tools=[],
        modalities=["text"],
        n=1,
        messages=[{"role": "user", "content": "hi", "name": "ann", "tool_calls": None, "refusal": None}],
    )
    text, spec = openai_map.chat_spec(body, load_roles()["chat"], 1000, N_VOCAB)
    assert text == "hi" and spec.schema is None and spec.stop == () and spec.logprobs is None
    assert set(IGNORED_FIELDS) >= {"user", "metadata", "store", "service_tier"}


def test_supported_fields_reach_the_chat_spec():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = request(
        response_format={"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}},
        stop="END",
        logprobs=True,
        top_logprobs=4,
        frequency_penalty=0.5,
        presence_penalty=0.2,
        temperature=0.1,
    )
    _, spec = openai_map.chat_spec(body, load_roles()["chat"], 1000, N_VOCAB)
    assert spec.schema == schema and spec.stop == ("END",) and spec.logprobs == 4
    assert (spec.role.sampling.frequency_penalty, spec.role.sampling.presence_penalty) == (0.5, 0.2)
    _, spec = openai_map.chat_spec(
        request(response_format={"type": "json_object"}, logprobs=True), load_roles()["chat"], 1000, N_VOCAB
    )
    assert spec.schema == {"type": "object"} and spec.logprobs == 0


def test_classify_role_refuses_what_a_label_cannot_follow_and_takes_logprobs():
    sentiment = load_roles()["sentiment"]
    with pytest.raises(RequestError, match="not with the classify role") as error:
        openai_map.chat_spec(request(stop=["x"]), sentiment, 1000, N_VOCAB)
    assert error.value.status == 400
    with pytest.raises(RequestError, match="not with the classify role") as error:
        openai_map.chat_spec(request(logit_bias={"12": -100}), sentiment, 1000, N_VOCAB)
    assert error.value.status == 400 and error.value.param == "logit_bias"
    text, spec = openai_map.chat_spec(request(logprobs=True, top_logprobs=2), sentiment, 1000, N_VOCAB)
    assert spec is None and openai_map.top_logprobs(request(logprobs=True, top_logprobs=2)) == 2


# -- /metrics ------------------------------------------------------------------------------------


def test_metrics_text_format():
    metrics = Metrics()
    metrics.request("/v1/sentiment", 200)
    metrics.request("/v1/sentiment", 200)
    metrics.request("/v1/chat/completions", 400)
    metrics.reply(12)
    for size in (1, 3, 16):
        metrics.classify_batch(size)
    metrics.classified(0.07)
    metrics.first_token(1.5)
    text = metrics.render({"waiting": 2, "queue_size": 8, "slots": 4, "streams": 1, "served": 5, "rejected": 1})
    assert 'edgeqwen_http_requests_total{endpoint="/v1/sentiment",status="200"} 2' in text
    assert 'edgeqwen_http_requests_total{endpoint="/v1/chat/completions",status="400"} 1' in text
    assert "edgeqwen_replies_total 1" in text and "edgeqwen_reply_tokens_total 12" in text
    assert "edgeqwen_queue_waiting 2" in text and "edgeqwen_slots_busy 1" in text
    assert (
        'edgeqwen_classify_batch_size_bucket{le="2"} 1' in text
        and 'edgeqwen_classify_batch_size_bucket{le="4"} 2' in text
    )
    assert 'edgeqwen_classify_batch_size_bucket{le="+Inf"} 3' in text and "edgeqwen_classify_batch_size_sum 20" in text
    assert (
        'edgeqwen_first_token_seconds_bucket{le="1"} 0' in text
        and 'edgeqwen_first_token_seconds_bucket{le="2.5"} 1' in text
    )
    assert 'edgeqwen_jobs_total{outcome="rejected"} 1' in text
    rss = int(re.search(r"^process_resident_memory_bytes (\d+)$", text, re.M)[1])
    assert rss > 10 * 2**20
    for line in text.splitlines():  # every line is a comment or `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(
            r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [0-9.e+-]+', line
        ), line
    names = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(names) == len(set(names))


def test_request_counter_counts_by_fixed_endpoint_labels():
    metrics = Metrics()

    async def ok(request):
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/v1/classify/{role}", ok, methods=["POST"])],
        middleware=[Middleware(RequestCounter, metrics=metrics)],
    )
    with TestClient(app) as client:
        client.post("/v1/classify/topic")
        client.post("/v1/classify/other")
        client.get("/no/such/path")
    assert metrics.requests == {("/v1/classify/{role}", 200): 2, ("other", 404): 1}
    assert endpoint_label("/static/app.js") == "/static" and endpoint_label("/metrics") == "/metrics"
