"""Cross-site protection of `edgeqwen serve`, with requests as a web page, a DNS-rebinding page, curl, the
openai client and `llm` send them, to a real HTTP server (uvicorn, configured as `edgeqwen serve`
runs it) over a fake model: no model file needed, and the fake shows whether any model work was done.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the serve extra: pip install -e '.[serve]'")

from edgeqwen.server.app import ServerConfig  # noqa: E402

from fake_model import fake_edgeqwen, serve_in_thread  # noqa: E402

LISTED = "http://listed.example"
PROXY = "proxy.example"


@pytest.fixture(scope="module")
def served():
    eq = fake_edgeqwen()
    config = ServerConfig(allowed_origins=(LISTED, "http://localhost:*"), allowed_hosts=(PROXY, "*.lan.example"))
    with serve_in_thread(config, eq) as (port, _):
        yield port, eq


def send(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


JSON = {"Content-Type": "application/json"}
REVIEW = json.dumps({"text": "I love it"}).encode()
CHAT = json.dumps({"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}).encode()


def error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error["message"] and "\n" not in error["message"]
    return error["code"]


def test_a_web_pages_simple_requests_never_reach_the_model(served):
    """What any page can POST cross-site without a CORS preflight: text/plain, a form, a Blob with no type."""
    port, eq = served
    before = len(eq.classified)
    for content_type in (
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        for path, body in (("/v1/sentiment", REVIEW), ("/v1/chat/completions", CHAT), ("/v1/run", REVIEW)):
            headers = {"Content-Type": content_type} if content_type else {}
            status, _, answer = send(port, "POST", path, body, headers)
            assert (status, error_code(answer)) == (415, "unsupported_media_type"), (content_type, path)
    assert len(eq.classified) == before


def test_a_foreign_origin_is_refused_even_with_a_json_body(served):
    port, eq = served
    before = len(eq.classified)
    for origin in (
        "http://evil.example",
        "null",
        f"http://127.0.0.1:{port + 1}",
        "https://listed.example",
        "http://localhost.evil.example:3000",
    ):
        status, _, answer = send(port, "POST", "/v1/sentiment", REVIEW, {**JSON, "Origin": origin})
        assert (status, error_code(answer)) == (403, "origin_not_allowed"), origin
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        status, headers, _ = send(port, "OPTIONS", "/v1/sentiment", None, preflight)
        assert status == 403 and "access-control-allow-origin" not in headers, origin
    status, _, answer = send(port, "POST", "/v1/sentiment", REVIEW, {**JSON, "Sec-Fetch-Site": "cross-site"})
    assert (status, error_code(answer)) == (403, "origin_not_allowed")
    assert len(eq.classified) == before


def test_dns_rebinding_requests_for_another_host_name_are_refused(served):
    port, eq = served
    before = len(eq.classified)
    for host in (
        f"evil.example:{port}",
        "evil.example",
        "127.0.0.1.evil.example",
        f"localhost.evil.example:{port}",
        "lan.example",
    ):
        for method, path, body in (
            ("GET", "/v1/models", None),
            ("GET", "/health", None),
            ("POST", "/v1/sentiment", REVIEW),
        ):
            # After rebinding, the page's own origin is http://evil.example:PORT: same-origin to the browser.
            status, _, answer = send(port, method, path, body, {**JSON, "Host": host, "Origin": f"http://{host}"})
            assert (status, error_code(answer)) == (403, "host_not_allowed"), (host, path)
    assert len(eq.classified) == before


def test_the_servers_own_names_and_listed_hosts_are_served(served):
    port, _ = served
    machine = socket.gethostname().lower()
    hosts = [
        f"127.0.0.1:{port}",
        f"[::1]:{port}",
        f"192.168.1.20:{port}",
        f"localhost:{port}",
        f"app.localhost:{port}",
        f"{machine}:{port}",
        f"{machine.split('.')[0]}.local:{port}",
        f"{PROXY}",
        f"pi.lan.example:{port}",
        f"LOCALHOST.:{port}",
    ]
    for host in hosts:
        status, _, answer = send(port, "POST", "/v1/sentiment", REVIEW, {**JSON, "Host": host})
        assert status == 200 and json.loads(answer)["label"], host


def test_the_servers_own_page_is_served_as_the_browser_sends_it(served):
    """The page's fetch() to /v1/run: same origin as the page, JSON, streamed (static/app.js)."""
    port, _ = served
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        body = json.dumps({"text": "Hello there", "task": "chat", "stream": True}).encode()
        headers = {**JSON, "Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        status, headers, answer = send(port, "POST", "/v1/run", body, headers)
        events = [json.loads(line[6:]) for line in answer.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and events[-1]["type"] == "done" and events[-1]["result"]["reply"]
    status, _, page = send(
        port,
        "GET",
        "/",
        None,
        {"Host": f"127.0.0.1:{port}", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
    )
    assert status == 200 and b"edgeqwen" in page  # a link to the page from elsewhere still opens it


def test_listed_origins_get_cors_headers_and_others_none(served):
    port, _ = served
    for origin in (LISTED, "http://localhost:3000"):
        preflight = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        }
        status, headers, _ = send(port, "OPTIONS", "/v1/chat/completions", None, preflight)
        assert status == 200 and headers["access-control-allow-origin"] == origin
        assert "authorization" in headers["access-control-allow-headers"].lower()
        status, headers, answer = send(port, "POST", "/v1/sentiment", REVIEW, {**JSON, "Origin": origin})
        assert (
            status == 200
            and headers["access-control-allow-origin"] == origin
            and "retry-after" in headers["access-control-expose-headers"].lower()
        )
    status, headers, _ = send(port, "POST", "/v1/sentiment", REVIEW, JSON)
    assert status == 200 and "access-control-allow-origin" not in headers


def test_curl_with_a_json_body_works_and_a_form_body_gets_a_one_line_hint(served):
    port, _ = served
    url = f"http://127.0.0.1:{port}/v1/sentiment"
    for args in (
        ["--json", '{"text": "I love it"}'],
        ["-H", "Content-Type: application/json", "-d", '{"text": "I love it"}'],
    ):
        done = subprocess.run(
            ["curl", "-sS", "--max-time", "30", url, *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and json.loads(done.stdout)["label"], done.stderr
    done = subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", url, "-d", '{"text": "I love it"}'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "415" and "--json" in json.loads(body)["error"]["message"]


def test_the_openai_client_works(served):
    openai = pytest.importorskip("openai", reason="the test extra installs openai")
    port, _ = served
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=30)
    assert "sentiment" in {model.id for model in client.models.list().data}
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert reply.choices[0].message.content.startswith("Reply")  # the fake engine's reply
    chunks = list(
        client.chat.completions.create(
            model="sentiment", messages=[{"role": "user", "content": "I love it"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) in ("positive", "negative")
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=1_000_000_000
        )


def test_simonws_llm_works(served, tmp_path):
    """`llm` (github.com/simonw/llm) against the server as an OpenAI-compatible model (extra-openai-models.yaml)."""
    port, _ = served
    llm = shutil.which("llm", path=str(Path(sys.executable).parent))
    if llm is None:
        pytest.fail("the test extra installs llm: pip install -e '.[test]'")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: edgeqwen-sentiment\n  model_name: sentiment\n  api_base: http://127.0.0.1:{port}/v1\n"
        f"- model_id: edgeqwen-chat\n  model_name: chat\n  api_base: http://127.0.0.1:{port}/v1\n",
        encoding="utf-8",
    )
    env = {**os.environ, "LLM_USER_PATH": str(tmp_path), "OPENAI_API_KEY": "unused"}
    for model, expected in (("edgeqwen-sentiment", "positive"), ("edgeqwen-chat", "Reply")):
        done = subprocess.run(
            [llm, "-m", model, "--no-log", "I love it"], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0 and done.stdout.strip().startswith(expected), done.stderr
