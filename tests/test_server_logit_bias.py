"""OpenAI's logit_bias through /v1/chat/completions: it reaches the SamplingParams the engine is given
(fake engine, no model), and on the real model a bias of -100 bans a token and +100 forces one."""

from __future__ import annotations

import http.client
import json

import pytest

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.server.app import ServerConfig  # noqa: E402

from fake_model import fake_edgeqwen, serve_in_thread  # noqa: E402


def post(port: int, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.status, json.loads(response.read())
    conn.close()
    return answer


def chat(**fields) -> dict:
    return {"model": "chat", "messages": [{"role": "user", "content": "Say hello."}], **fields}


def test_a_request_logit_bias_reaches_the_engine_for_that_request_only():
    eq = fake_edgeqwen()
    with serve_in_thread(ServerConfig(slots=2), eq) as (port, _):
        status, answer = post(port, chat(logit_bias={"12": -100, "7": 2.5}, stream=False))
        assert status == 200 and answer["choices"][0]["message"]["content"]
        assert post(port, chat())[0] == 200
        status, refused = post(port, chat(logit_bias={"12": -100, str(eq.n_vocab): 1}))
    assert [sampling.logit_bias for sampling in eq.engine.samplings] == [((7, 2.5), (12, -100.0)), ()]
    error = refused["error"]
    assert status == 422 and error["param"] == "logit_bias" and "vocabulary" in error["message"]
    assert "\n" not in error["message"]


@pytest.mark.model
def test_a_bias_of_minus_100_bans_the_greedy_first_token_and_100_forces_one(eq):
    with serve_in_thread(ServerConfig(slots=1), eq) as (port, _):

        def first_token(**fields) -> str:
            status, answer = post(port, chat(temperature=0, max_tokens=3, logprobs=True, **fields))
            assert status == 200, answer
            return answer["choices"][0]["logprobs"]["content"][0]

        greedy = first_token()
        (banned,) = eq.engine.tokenize(greedy["token"])  # a test may ask the engine for a token's id
        assert first_token(logit_bias={str(banned): -100})["token"] != greedy["token"]
        (forced,) = eq.engine.tokenize(" banana")
        assert first_token(logit_bias={str(forced): 100})["token"] == " banana"
