"""`edgeqwen serve`: an OpenAI-compatible HTTP API and a one-page UI over one loaded model (Starlette + uvicorn).

Endpoints (all JSON; errors are {"error": {"message", "type", "code", "param"}}):
  GET  /health                     liveness and queue state (never needs the API key)
  GET  /v1/models                  the model file and every role, usable as `model`
  POST /v1/chat/completions        OpenAI chat completions, `stream: true` over SSE
  POST /v1/sentiment               {"text": ...} or {"texts": [...]} → label, confidence, timings
  POST /v1/classify/{role}         the same for any classify role by name
  POST /v1/run                     routed like `edgeqwen run` (task auto|sentiment|chat|both), SSE with stream
  GET  /                           the page (static/index.html); /static/* its script and style

Every model call goes through one InferenceWorker (worker.py): serialized on one thread, a bounded
wait queue, 503 + Retry-After when it is full, and cancellation when a client disconnects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import sys
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api import EdgeQwen
from ..engine import DEFAULT_N_CTX
from ..errors import ContextOverflowError, EdgeQwenError, InputError, RoleError
from ..roles import Role
from . import service
from .schemas import (
    ChatCompletionRequest,
    ClassifyRequest,
    RequestError,
    RunRequest,
    check_text,
    parse,
)
from .worker import DEFAULT_QUEUE_SIZE, Cancelled, InferenceWorker, Job, QueueFull

log = logging.getLogger("edgeqwen.server")

STATIC_DIR = Path(str(resources.files("edgeqwen.server") / "static"))
OPEN_PATHS = ("/health", "/", "/static/")  # no API key needed: liveness, and the page that asks for the key
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PAGE_HEADERS = {
    # The page loads nothing from elsewhere: it must work on a device that is offline.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    model: str | None = None
    api_key: str | None = None
    prompts: str | None = None
    threads: int | None = None
    ctx: int = DEFAULT_N_CTX
    router: str = "llm"
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_body_bytes: int = 256 * 1024
    max_text_chars: int = 16_000
    log_level: str = "info"
    verbose: bool = False


class ApiError(Exception):
    """An HTTP error with a one-line message, returned as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _api_error(error: Exception) -> ApiError:
    """The HTTP form of anything a request can fail with."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, RequestError):
        return ApiError(422, str(error), code=error.code, param=error.param)
    if isinstance(error, QueueFull):
        return ApiError(503, str(error), type="server_busy", code="queue_full", headers={"Retry-After": str(error.retry_after)})
    if isinstance(error, ClientDisconnect):
        return ApiError(400, "the client disconnected before the request body arrived", code="client_disconnected")
    if isinstance(error, Cancelled):
        return ApiError(503, "the request was cancelled (client gone or server stopping)", type="server_busy", code="cancelled")
    if isinstance(error, (InputError, ContextOverflowError)):
        return ApiError(422, str(error), code="invalid_input")
    if isinstance(error, RoleError):
        return ApiError(404, str(error), code="role_not_found")
    if isinstance(error, EdgeQwenError):
        return ApiError(500, str(error), type="server_error", code="model_error")
    log.error("internal error", exc_info=error)
    return ApiError(500, f"internal error: {type(error).__name__}: {error}", type="server_error", code="internal_error")


class JobStream(StreamingResponse):
    """An SSE response tied to its job: however the response ends (done, client gone), the job is cancelled."""

    def __init__(self, content: Any, job: Job) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()  # no-op for a finished job; frees the engine if the client went away


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


class BearerAuth:
    """With an API key set, every request but OPEN_PATHS needs `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.api_key is None or self._open(scope["path"]):
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), self.api_key):
            return await self.app(scope, receive, send)
        error = ApiError(
            401,
            "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await error.response()(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return any(path == open_path or (open_path.endswith("/") and open_path != "/" and path.startswith(open_path)) for open_path in OPEN_PATHS)


class Server:
    """The routes, over one EdgeQwen and one InferenceWorker."""

    def __init__(self, eq: EdgeQwen, config: ServerConfig, worker: InferenceWorker | None = None) -> None:
        self.eq = eq
        self.config = config
        self.worker = worker or InferenceWorker(config.queue_size)
        self.model_path = Path(eq.engine.info.path)
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
        role = self.eq.roles.get(name)
        if role is None or (kind and role.kind != kind):
            names = sorted(n for n, r in self.eq.roles.items() if not kind or r.kind == kind)
            what = f"{kind} role" if kind else "role"
            raise ApiError(404, f"no {what} named {name!r}; available: {', '.join(names)}", code="role_not_found", param="role")
        return role

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

    async def models(self, request: Request) -> Response:
        data = [{"id": self.model_id, "object": "model", "created": self.started, "owned_by": "edgeqwen", "kind": "generate", "role": "chat"}]
        for name, role in sorted(self.eq.roles.items()):
            entry = {"id": name, "object": "model", "created": self.started, "owned_by": "edgeqwen", "kind": role.kind, "description": role.description}
            if role.kind == "classify":
                entry["labels"] = role.label_names
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
        job = self.worker.submit(lambda job: service.classify_texts(self.eq, role.name, texts, job))
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
                yield _sse({"type": kind, "text": value} if kind == "delta" else {"type": kind, **value})
            yield _sse({"type": "done", "result": job.value.to_dict()})
        except Exception as error:  # noqa: BLE001 - reported in the stream: the 200 header is already sent
            yield _sse({"type": "error", **_api_error(error).body()})

    async def chat_completions(self, request: Request) -> Response:
        body = parse(ChatCompletionRequest, await self.read_json(request))
        if body.stop:
            raise RequestError("stop sequences are not supported by this server", "stop")
        target = self._chat_target(body.model)
        text, spec = self._chat_spec(body, target)
        if target.kind == "classify":
            job = self.worker.submit(lambda job: service.classify_as_chat(self.eq, target.name, text, job))
        else:
            job = self.worker.submit(lambda job: service.generate(self.eq, spec, job))
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return JobStream(self._chat_chunks(job, meta, include_usage), job)
        result: service.Generated = await self.wait(job, request)
        response = {
            **meta,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.reply}, "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": self._usage(result),
        }
        if result.classification:
            response["classification"] = result.classification
        return JSONResponse(response)

    def _chat_target(self, model: str) -> Role:
        if model == self.model_id:
            return self.role("chat", "generate")
        if model in self.eq.roles:
            return self.eq.roles[model]
        names = ", ".join([self.model_id, *sorted(self.eq.roles)])
        raise ApiError(404, f"the model {model!r} does not exist; available: {names} (GET /v1/models)", code="model_not_found", param="model")

    def _chat_spec(self, body: ChatCompletionRequest, role: Role) -> tuple[str, service.ChatSpec | None]:
        system: list[str] = []
        turns: list[dict[str, str]] = []
        for index, message in enumerate(body.messages):
            where = f"messages.{index}"
            content = message.text(where)
            if message.role == "user" or len(content) > self.config.max_text_chars:
                content = self.text(content, f"{where}.content")  # refuses empty user turns and any overlong text
            if message.role in ("system", "developer"):
                system.append(content)
            else:
                turns.append({"role": message.role, "content": content})
        if not turns or turns[-1]["role"] != "user":
            raise RequestError("messages: the last message must be a user message", "messages")
        text = turns[-1]["content"]
        if role.kind == "classify":
            return text, None
        updates: dict[str, Any] = {}
        if system:
            updates["system"] = "\n\n".join(system)
        sampling = {
            key: value
            for key, value in {
                "max_tokens": body.max_completion_tokens or body.max_tokens,
                "temperature": body.temperature,
                "top_p": body.top_p,
                "seed": body.seed,
            }.items()
            if value is not None
        }
        if sampling:
            updates["sampling"] = role.sampling.model_copy(update=sampling)
        role = role.model_copy(update=updates) if updates else role
        return text, service.ChatSpec(role=role, history=turns[:-1], text=text)

    @staticmethod
    def _usage(result: service.Generated) -> dict:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }

    async def _chat_chunks(self, job: Job, meta: dict, include_usage: bool):
        def chunk(delta: dict, finish: str | None = None) -> bytes:
            return _sse({**meta, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

        yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in job.items():
                yield chunk({"content": piece})
            result: service.Generated = job.value
            yield chunk({}, result.finish_reason)
            if include_usage:
                yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": self._usage(result)})
        except Exception as error:  # noqa: BLE001 - reported in the stream: the 200 header is already sent
            yield _sse(_api_error(error).body())
        yield b"data: [DONE]\n\n"


async def _handle_error(request: Request, error: Exception) -> Response:
    if isinstance(error, HTTPException):
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such endpoint: {where}", 405: f"method not allowed: {where}"}.get(error.status_code, error.detail)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        error = ApiError(error.status_code, message, code=code, headers=error.headers)
    return _api_error(error).response()


def _endpoint(method):
    """Route handler that turns any exception into a JSON error."""

    async def handle(request: Request) -> Response:
        try:
            return await method(request)
        except Exception as error:  # noqa: BLE001
            return _api_error(error).response()

    handle.__name__ = method.__name__
    return handle


def create_app(eq: EdgeQwen, config: ServerConfig = ServerConfig(), worker: InferenceWorker | None = None) -> Starlette:
    """The ASGI app over an already loaded EdgeQwen."""
    server = Server(eq, config, worker)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        server.worker.close()

    routes = [
        Route("/", _endpoint(server.page), methods=["GET"]),
        Route("/health", _endpoint(server.health), methods=["GET"]),
        Route("/v1/models", _endpoint(server.models), methods=["GET"]),
        Route("/v1/chat/completions", _endpoint(server.chat_completions), methods=["POST"]),
        Route("/v1/sentiment", _endpoint(server.classify), methods=["POST"]),
        Route("/v1/classify/{role}", _endpoint(server.classify), methods=["POST"]),
        Route("/v1/run", _endpoint(server.run), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuth, api_key=config.api_key)],
        exception_handlers={HTTPException: _handle_error, Exception: _handle_error},
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
        f"queue {config.queue_size}; page at http://{shown}:{config.port}/",
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
