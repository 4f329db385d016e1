"""The HTTP routes of `edgeqwen serve` over one loaded model, the app that holds them, and `serve()`
(Starlette + uvicorn).

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
role that wait together as one batch); a bounded wait queue, 503 + Retry-After when it is full, a
time limit per request, and cancellation when a client disconnects.
Settings: config.py; error bodies: errors.py; the API key: auth.py; Host and Origin checks: guard.py;
request bodies: body.py; the HTTP protocol's deadline for request heads: protocol.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..api import EdgeQwen
from ..roles import Role, Sampling
from . import openai, service
from .auth import BearerAuth
from .body import read_json
from .config import ServerConfig
from .errors import ApiError, api_error, endpoint, handle_error, role_or_404
from .guard import SiteGuard, origin_pattern
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import RequestCounter, authorized
from .schemas import ClassifyRequest, RequestError, RunRequest, check_text, parse
from .sse import JobStream, sse
from .worker import InferenceWorker, Job

STATIC_DIR = Path(str(resources.files("edgeqwen.server") / "static"))
PAGE_HEADERS = {
    # The page loads nothing from elsewhere: it must work on a device that is offline.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
MAX_TOKENS_CEILING = next(rule.le for rule in Sampling.model_fields["max_tokens"].metadata if getattr(rule, "le", None))


class Server:
    """The routes, over one EdgeQwen and one InferenceWorker."""

    def __init__(self, eq: EdgeQwen, config: ServerConfig, worker: InferenceWorker | None = None) -> None:
        self.eq = eq
        self.config = config
        streams = None if worker else eq.chat_streams(config.slots)
        self.worker = worker or InferenceWorker(config.queue_size, streams, request_timeout=config.request_timeout)
        self.model_path = Path(eq.model_info.path)
        self.model_id = self.model_path.stem
        self.started = int(time.time())

    # -- plumbing ---------------------------------------------------------------------------------

    async def read_json(self, request: Request) -> Any:
        return await read_json(request, self.config.max_body_bytes, self.config.body_timeout)

    def reply_limit(self, role: Role) -> int:
        """The most tokens a request may ask one reply of `role` for: a chat slot's share of the
        context (n_ctx / slots, at most half of it, so the conversation keeps the rest), or the
        role's own max_tokens when that is more; never more than a role file may set."""
        share = self.eq.n_ctx // max(2, self.config.slots)
        return min(MAX_TOKENS_CEILING, max(role.sampling.max_tokens, share))

    def check_max_tokens(self, asked: int | None, param: str, role: Role) -> None:
        limit = self.reply_limit(role)
        if asked is not None and role.kind == "generate" and asked > limit:
            share = f"its {self.eq.n_ctx}-token context over {self.config.slots} chat slots"
            message = f"{param} is {asked}; this server allows at most {limit} for role '{role.name}' ({share})"
            raise ApiError(400, message, code="max_tokens_too_large", param=param)

    def text(self, value: str, where: str) -> str:
        return check_text(value, where, self.config.max_text_chars)

    def role(self, name: str, kind: str | None = None) -> Role:
        return role_or_404(self.eq.roles, name, kind)

    async def wait(self, job: Job, request: Request, *, first: bool = False) -> Any:
        """The job's result (with first=True: until its first item, see Job.first); if the client
        disconnects first, the job is cancelled (engine freed)."""

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            job.cancel()

        watcher = asyncio.create_task(watch())
        try:
            return await (job.first() if first else job.result())
        finally:
            watcher.cancel()
            if not first:
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
        data = [{"id": self.model_id, "object": "model", "created": self.started, "owned_by": "edgeqwen",
                 "kind": "generate", "role": "chat"}]
        for name, role in sorted(self.eq.roles.items()):
            entry = {"id": name, "object": "model", "created": self.started, "owned_by": "edgeqwen", "kind": role.kind,
                     "description": role.description}
            if role.kind == "classify":
                entry["labels"] = role.label_names
            else:
                entry["max_tokens"] = self.reply_limit(role)
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
        return JSONResponse({"results": results,
                             "timings": {"total_ms": round((time.perf_counter() - started) * 1000, 2)}})

    async def run(self, request: Request) -> Response:
        body = parse(RunRequest, await self.read_json(request))
        text = self.text(body.text, "text")
        history = [
            {"role": m.role,
             "content": self.text(m.content, f"history.{i}.content") if m.role == "user" or m.content else ""}
            for i, m in enumerate(body.history)
        ]
        job = self.worker.submit(lambda job: service.run(self.eq, text, body.task, history, job),
                                 then_chat=body.task != "sentiment")
        if not body.stream:
            return JSONResponse((await self.wait(job, request)).to_dict())
        await self.wait(job, request, first=True)
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
        asked = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        self.check_max_tokens(getattr(body, asked), asked, target)
        text, spec = openai.chat_spec(body, target, self.config.max_text_chars, self.eq.n_vocab)
        if target.kind == "classify":
            top = openai.top_logprobs(body)
            job = self.worker.submit_batch(target.name, [text], service.classify_texts(self.eq, target.name),
                                           lambda job, results: service.label_reply(job, results, top))
        else:
            job = self.worker.submit(lambda job: service.generate(self.eq, spec, job), chat=True)
        meta = openai.new_meta(body.model)
        if body.stream:
            await self.wait(job, request, first=True)
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
    origins = config.allowed_origins
    hosts = config.allowed_hosts
    middleware = [Middleware(SiteGuard, listen_host=config.host, allowed_hosts=hosts, allowed_origins=origins)]
    if origins:  # CORS headers for the listed web pages (SiteGuard refuses the others)
        exact = [origin for origin in origins if "*" not in origin or origin == "*"]
        middleware.append(Middleware(CORSMiddleware, allow_origins=exact, allow_origin_regex=origin_pattern(origins),
                                     allow_methods=["GET", "POST"], allow_headers=["*"],
                                     expose_headers=["Retry-After"]))
    app = Starlette(
        routes=routes,
        middleware=[
            # outermost: counts the refusals of the checks too
            Middleware(RequestCounter, metrics=server.worker.metrics),
            *middleware,
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
        print(f"warning: listening on {config.host} without --api-key: anyone who can reach this machine can use the "
              "model", file=sys.stderr)
    print("edgeqwen: loading model…", file=sys.stderr, flush=True)
    eq = EdgeQwen(config.model, n_ctx=config.ctx, threads=config.threads, prompts_dir=config.prompts,
                  router=config.router, verbose=config.verbose)
    app = create_app(eq, config)
    server = app.state.server
    shown = f"[{config.host}]" if ":" in config.host else config.host
    print(
        f"edgeqwen: {server.model_id} with roles {', '.join(sorted(eq.roles))}; "
        f"{config.slots} chat slots, queue {config.queue_size}; page at http://{shown}:{config.port}/",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, **uvicorn_options(config))


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """How uvicorn serves the app (uvicorn.run's or uvicorn.Config's keywords): its address, and the
    connection limit and timeouts of the settings."""
    from .protocol import with_head_deadline  # imports uvicorn: only when serving

    return {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "timeout_graceful_shutdown": 3,
        "server_header": False,
        "limit_concurrency": config.max_connections,
        "timeout_keep_alive": config.keep_alive_timeout,
        "http": with_head_deadline(config.head_timeout),
    }


__all__ = ["ApiError", "ServerConfig", "create_app", "serve"]
