"""The HTTP routes of `edgeqwen serve` over one loaded model, the app that holds them, and `serve()` (Starlette + uvicorn).

Endpoints (all JSON; errors are {"error": {"message", "type", "code", "param"}}):
  GET  /health                     liveness and queue state (never needs the API key)
  GET  /metrics                    Prometheus text format (open unless --metrics-key is set)
  GET  /v1/models                  the model file and every role, usable as `model`
  POST /v1/chat/completions        OpenAI chat completions, `stream: true` over SSE (openai.py)
  POST /v1/sentiment               {"text": ...} or {"texts": [...]} → label, confidence, timings
  POST /v1/classify/{role}         the same for any classify role by name
  POST /v1/run                     routed like `edgeqwen run` (task auto|sentiment|chat|both), SSE with stream
  GET  /                           the page (static/index.html); /static/* its script and style

Every model call goes through one InferenceWorker (worker.py): one thread that advances chat replies
in slots, one token of each per decode step, and runs classifications between steps (those of one
role that wait together as one batch); a bounded wait queue, 503 + Retry-After when it is full, and
cancellation when a client disconnects.
Settings: config.py; error bodies: errors.py; the API key: auth.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..api import EdgeQwen
from ..roles import Role
from . import openai, service
from .auth import BearerAuth
from .config import ServerConfig
from .errors import ApiError, api_error, endpoint, handle_error, role_or_404
from .metrics import CONTENT_TYPE as METRICS_TYPE, RequestCounter, authorized
from .schemas import ClassifyRequest, RequestError, RunRequest, check_text, parse
from .sse import JobStream, sse
from .worker import InferenceWorker, Job

STATIC_DIR = Path(str(resources.files("edgeqwen.server") / "static"))
PAGE_HEADERS = {
    # The page loads nothing from elsewhere: it must work on a device that is offline.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class Server:
    """The routes, over one EdgeQwen and one InferenceWorker."""

    def __init__(self, eq: EdgeQwen, config: ServerConfig, worker: InferenceWorker | None = None) -> None:
        self.eq = eq
        self.config = config
        self.worker = worker or InferenceWorker(config.queue_size, eq.chat_streams(config.slots))
        self.model_path = Path(eq.model_info.path)
        self.model_id = self.model_path.stem
        self.started = int(time.time())

    # -- plumbing ---------------------------------------------------------------------------------

    async def read_json(self, request: Request) -> Any:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(int(declared))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise self._too_large(len(body))
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None

    def _too_large(self, size: int) -> ApiError:
        return ApiError(
            413,
            f"request body of {size} bytes is over this server's limit of {self.config.max_body_bytes} bytes (--max-body-bytes)",
            code="body_too_large",
        )

    def text(self, value: str, where: str) -> str:
        return check_text(value, where, self.config.max_text_chars)

    def role(self, name: str, kind: str | None = None) -> Role:
        return role_or_404(self.eq.roles, name, kind)

    async def wait(self, job: Job, request: Request) -> Any:
        """The job's result; if the client disconnects first, the job is cancelled (engine freed)."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            job.cancel()

        watcher = asyncio.create_task(watch())
        try:
            return await job.result()
        finally:
            watcher.cancel()
            job.cancel()  # no-op for a finished job

    # -- routes -----------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id, "queue": self.worker.status()})

    async def metrics(self, request: Request) -> Response:
        if not authorized(request.headers, self.config.metrics_key):
            raise ApiError(
                401, "missing or wrong metrics key: send 'Authorization: Bearer <metrics key>'",
                type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(self.worker.metrics.render(self.worker.status()), media_type=METRICS_TYPE)

    async def models(self, request: Request) -> Response:
        data = [{"id": self.model_id, "object": "model", "created": self.started, "owned_by": "edgeqwen", "kind": "generate", "role": "chat"}]
        for name, role in sorted(self.eq.roles.items()):
            entry = {"id": name, "object": "model", "created": self.started, "owned_by": "edgeqwen", "kind": role.kind, "description": role.description}
            if role.kind == "classify":
                entry["labels"] = role.label_names
            if role.output_schema is not None:
                entry["schema"] = role.output_schema
            data.append(entry)
        return JSONResponse({"object": "list", "data": data})

    async def classify(self, request: Request) -> Response:
        role = self.role(request.path_params.get("role", "sentiment"), "classify")
        body = parse(ClassifyRequest, await self.read_json(request))
        if (body.text is None) == (body.texts is None):
            raise RequestError("give either 'text' (one string) or 'texts' (a list of strings)", "text")
        texts = [body.text] if body.text is not None else body.texts
        where = ["text"] if body.text is not None else [f"texts.{i}" for i in range(len(texts))]
        texts = [self.text(t, w) for t, w in zip(texts, where)]
        started = time.perf_counter()
        job = self.worker.submit_batch(role.name, texts, service.classify_texts(self.eq, role.name), service.labels)
        results = await self.wait(job, request)
        if body.text is not None:
            return JSONResponse(results[0])
        return JSONResponse({"results": results, "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 2)}})

    async def run(self, request: Request) -> Response:
        body = parse(RunRequest, await self.read_json(request))
        text = self.text(body.text, "text")
        history = [
            {"role": m.role, "content": self.text(m.content, f"history.{i}.content") if m.role == "user" or m.content else ""}
            for i, m in enumerate(body.history)
        ]
        job = self.worker.submit(lambda job: service.run(self.eq, text, body.task, history, job))
        if not body.stream:
            return JSONResponse((await self.wait(job, request)).to_dict())
        return JobStream(self._run_events(job), job)

    async def _run_events(self, job: Job):
        try:
            async for kind, value in job.items():
                yield sse({"type": kind, "text": value} if kind == "delta" else {"type": kind, **value})
            yield sse({"type": "done", "result": job.value.to_dict()})
        except Exception as error:  # noqa: BLE001 - reported in the stream: the 200 header is already sent
            yield sse({"type": "error", **api_error(error).body()})

    async def chat_completions(self, request: Request) -> Response:
        body = openai.parse_request(await self.read_json(request))
        target = openai.resolve_model(body.model, self.model_id, self.eq.roles)
        text, spec = openai.chat_spec(body, target, self.config.max_text_chars)
        if target.kind == "classify":
            top = openai.top_logprobs(body)
            job = self.worker.submit_batch(target.name, [text], service.classify_texts(self.eq, target.name),
                                           lambda job, results: service.label_reply(job, results, top))
        else:
            job = self.worker.submit(lambda job: service.generate(self.eq, spec, job), chat=True)
        meta = openai.new_meta(body.model)
        if body.stream:
            return JobStream(openai.chunks(job, meta, openai.wants_usage(body)), job)
        result: service.Generated = await self.wait(job, request)
        return JSONResponse(openai.completion(meta, result))


def create_app(eq: EdgeQwen, config: ServerConfig = ServerConfig(), worker: InferenceWorker | None = None) -> Starlette:
    """The ASGI app over an already loaded EdgeQwen."""
    server = Server(eq, config, worker)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        server.worker.close()

    routes = [
        Route("/", endpoint(server.page), methods=["GET"]),
        Route("/health", endpoint(server.health), methods=["GET"]),
        Route("/metrics", endpoint(server.metrics), methods=["GET"]),
        Route("/v1/models", endpoint(server.models), methods=["GET"]),
        Route("/v1/chat/completions", endpoint(server.chat_completions), methods=["POST"]),
        Route("/v1/sentiment", endpoint(server.classify), methods=["POST"]),
        Route("/v1/classify/{role}", endpoint(server.classify), methods=["POST"]),
        Route("/v1/run", endpoint(server.run), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestCounter, metrics=server.worker.metrics),  # outermost: counts the key check's refusals too
            Middleware(BearerAuth, api_key=config.api_key),
        ],
        exception_handlers={HTTPException: handle_error, Exception: handle_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: ServerConfig) -> None:
    """Load the model, then serve until interrupted (the `edgeqwen serve` command)."""
    import uvicorn

    if not is_loopback(config.host) and not config.api_key:
        print(f"warning: listening on {config.host} without --api-key: anyone who can reach this machine can use the model", file=sys.stderr)
    print("edgeqwen: loading model…", file=sys.stderr, flush=True)
    eq = EdgeQwen(config.model, n_ctx=config.ctx, threads=config.threads, prompts_dir=config.prompts, router=config.router, verbose=config.verbose)
    app = create_app(eq, config)
    server = app.state.server
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(
        f"edgeqwen: {server.model_id} with roles {', '.join(sorted(eq.roles))}; "
        f"{config.slots} chat slots, queue {config.queue_size}; page at http://{shown}:{config.port}/",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=3,
        server_header=False,
    )


__all__ = ["ApiError", "ServerConfig", "create_app", "serve"]
