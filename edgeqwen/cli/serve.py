"""`edgeqwen serve`: the OpenAI-compatible API and the web page, with the options that bound them; on one machine or a
Ray cluster."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import settings
from ..errors import EdgeQwenError
from .options import (
    ActorsPerNodeOption,
    CtxOption,
    ModelOption,
    ModelSha256Option,
    PromptsOption,
    RayAddressOption,
    RayFlag,
    ThreadsOption,
    ray_module,
    ray_options,
)

MetricsKeyOption = Annotated[Optional[str], typer.Option(
    "--metrics-key", envvar=settings.ENV_METRICS_KEY,
    help=f"Require 'Authorization: Bearer KEY' on /metrics (open by default, like /health; "
    f"or set ${settings.ENV_METRICS_KEY}).",
)]
ReplicasOption = Annotated[Optional[int], typer.Option(
    "--replicas", min=1, help="With --ray: Ray Serve replicas, each a model copy with its own queue. Default: as many "
                              "as the cluster holds.")]

RequestTimeoutOption = Annotated[float, typer.Option(
    "--request-timeout", min=1,
    help="Seconds from a request's arrival to its answer: a reply still going then ends with finish_reason 'length', "
    "a request still waiting gets 503 + Retry-After.")]
AllowedHostsOption = Annotated[Optional[str], typer.Option(
    "--allowed-hosts",
    help="Comma-separated host names to answer for beside this machine's own (IP addresses, localhost, its name), "
    "e.g. a reverse proxy's; '*.example.com' for subdomains, '*' for any.")]
AllowedOriginsOption = Annotated[Optional[str], typer.Option(
    "--allowed-origins",
    help="Comma-separated web page origins that may call the API from a browser (CORS) beside the server's own page, "
    "e.g. 'http://localhost:3000' or 'http://localhost:*'.")]


def serve(
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Default: this machine only; 0.0.0.0 opens it to the network (set "
                       "--api-key).")] = settings.HOST,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = settings.PORT,
    model: ModelOption = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar=settings.ENV_API_KEY, help="Require 'Authorization: Bearer KEY' on every endpoint but "
                                                       f"/health (or set ${settings.ENV_API_KEY}).")] = None,
    metrics_key: MetricsKeyOption = None,
    prompts: PromptsOption = None,
    threads: ThreadsOption = None,
    ctx: CtxOption = None,
    router: Annotated[str, typer.Option("--router", help="How task auto decides: llm or rules.")] = settings.ROUTER,
    queue_size: Annotated[int, typer.Option(
        "--queue-size", min=0,
        help="Requests that may wait to start; more get 503 + Retry-After.")] = settings.QUEUE_SIZE,
    slots: Annotated[int, typer.Option(
        "--slots", min=1, max=settings.MAX_CHAT_SLOTS, help="Chat replies generated together, one token of each per "
                                                            "decode step.")] = settings.CHAT_SLOTS,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024,
                                                help="Largest request body (413 above).")] = settings.MAX_BODY_BYTES,
    max_text_chars: Annotated[int, typer.Option("--max-text-chars", min=1,
                                                help="Longest text or message (422 above).")] = settings.MAX_TEXT_CHARS,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="uvicorn log level: critical, error, warning, info, debug.")] = settings.LOG_LEVEL,
    request_timeout: RequestTimeoutOption = settings.REQUEST_TIMEOUT,
    allowed_hosts: AllowedHostsOption = None,
    allowed_origins: AllowedOriginsOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log.")] = False,
    ray: RayFlag = False,
    ray_address: RayAddressOption = None,
    replicas: ReplicasOption = None,
    actors_per_node: ActorsPerNodeOption = None,
    model_sha256: ModelSha256Option = None,
) -> None:
    """Serve an OpenAI-compatible API and a web page (needs the extra: pip install 'edgeqwen\\[serve]').

    \b
    Examples:
      edgeqwen serve                         # http://127.0.0.1:8080/ (page), /v1/chat/completions, ...
      edgeqwen serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
      edgeqwen serve --ray --replicas 2 --threads 2      # Ray Serve on a Ray cluster (docs/ray.md)
    """
    on_ray = ray_options(
        ray or ray_address is not None, address=ray_address, copies=replicas, copies_flag="--replicas",
        actors_per_node=actors_per_node,
        model_sha256=model_sha256, model=model, threads=threads, ctx=ctx, prompts=prompts,
    )
    try:
        from ..server.app import ServerConfig  # the optional extra: imported only here
        from ..server.app import serve as run_server
    except ImportError as error:
        missing = error.name or error
        raise EdgeQwenError(f"edgeqwen serve needs the server extra ({missing} is missing): pip install "
                            "'edgeqwen[serve]'") from None
    config = ServerConfig(
        host=host, port=port, model=str(model) if model else None, api_key=api_key or None,
        metrics_key=metrics_key or None,
        prompts=str(prompts) if prompts else None, threads=threads, ctx=ctx, router=router, queue_size=queue_size,
        slots=slots,
        max_body_bytes=max_body_bytes, max_text_chars=max_text_chars, log_level=log_level, verbose=verbose,
        request_timeout=request_timeout, allowed_hosts=split_list(allowed_hosts),
        allowed_origins=split_list(allowed_origins),
    )
    serving = ray_module("serving") if on_ray is not None else None
    if serving is not None:
        serving.serve_on_ray(config, on_ray)  # the same config: same app, auth, limits and errors
    else:
        run_server(config)


def split_list(value: str | None) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c')."""
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())
