"""The server in this process, for fast tests where the model is not the point: create_app over
EdgeQwen on the fake engine (tests/fake_engine.py), or over a real EdgeQwen, served by uvicorn on a
free loopback port as `edgeqwen serve` configures it (uvicorn_options: connection limit, timeouts,
the deadline for request heads).

`fake_edgeqwen` records the texts it classifies (so a test sees whether a refused request did any
model work) and can take `classify_seconds` a text (so a classification holds the inference thread).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
from contextlib import contextmanager

from edgeqwen import EdgeQwen

from fake_engine import FakeEngine


def fake_edgeqwen(classify_seconds: float = 0.0, n_ctx: int = 2048) -> EdgeQwen:
    """EdgeQwen on the fake engine; `eq.classified` lists every text classified."""
    eq = EdgeQwen(engine=FakeEngine(n_ctx), prefix_cache=False)
    eq.classified = []
    classify_many = eq.classify_many

    def recording(texts, role="sentiment"):
        time.sleep(classify_seconds * len(texts))
        eq.classified += list(texts)
        return classify_many(texts, role)

    eq.classify_many = recording
    return eq


@contextmanager
def serve_in_thread(config=None, eq=None):
    """create_app over `eq` (fake_edgeqwen() by default) served by uvicorn as `edgeqwen serve` runs it,
    in this process; yields (port, the app's Server)."""
    import uvicorn

    from edgeqwen.server.app import ServerConfig, create_app, uvicorn_options
    from edgeqwen.server.launch import free_port

    config = dataclasses.replace(config or ServerConfig(), port=free_port())
    app = create_app(eq or fake_edgeqwen(), config)
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(dataclasses.replace(config, log_level="warning"))))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)
    try:
        yield config.port, app.state.server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def queue_state(port: int) -> dict:
    """The server's queue as /health reports it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/health")
    state = json.loads(conn.getresponse().read())["queue"]
    conn.close()
    return state
