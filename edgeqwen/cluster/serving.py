"""`edgeqwen serve` on a Ray cluster: the same Starlette app (server.app.create_app), one per Ray Serve replica, each
over its own model copy.

Each replica loads its node's model once and builds the very app `edgeqwen serve` runs, so the
routes, the page, the API key, the limits, the queue (503 + Retry-After) and the error bodies are
the same; Ray Serve's proxy spreads requests over the replicas. Two ways in:
  edgeqwen serve --ray [--ray-address ADDR] --replicas N --threads T
  serve run edgeqwen.cluster.serving:build_app model=PATH replicas=N threads=T   (Ray Serve's own CLI)
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import suppress

from ray import serve
from ray.serve import Application
from starlette.applications import Starlette

from .. import settings
from ..api import EdgeQwen
from ..errors import EdgeQwenError
from ..server.app import create_app, is_loopback
from ..server.config import ServerConfig
from .nodes import (
    ClusterError,
    ModelSpec,
    RayOptions,
    actor_options,
    check_every_node,
    check_node_model,
    connect,
    copies,
    model_spec,
    one_line,
)

APP_NAME = "edgeqwen"
# `serve run ... build_app KEY=VALUE`: the ServerConfig fields it may set, beside the RayOptions ones.
BUILD_ARGS = ("api_key", "router", "queue_size", "slots", "max_body_bytes", "max_text_chars", "log_level")


class Replica:
    """One Serve replica: its node's model copy, loaded once, behind the app `edgeqwen serve` runs."""

    def __init__(self, config: ServerConfig, model: ModelSpec) -> None:
        path = check_node_model(model)
        self.eq = EdgeQwen(path, n_ctx=config.ctx, threads=config.threads, prompts_dir=model.prompts,
                           router=config.router, verbose=config.verbose)
        self.config = config

    def __serve_build_asgi_app__(self) -> Starlette:
        return create_app(self.eq, self.config)


# Late-bound ingress: Serve asks each replica for its app once __init__ has loaded that replica's
# model, so the app is built where the model is and never pickled.
EdgeQwenDeployment = serve.deployment(name=APP_NAME)(serve.ingress()(Replica))


def application(config: ServerConfig, model: ModelSpec, options: RayOptions, replicas: int) -> Application:
    """The deployment: `replicas` copies, each reserving its threads and a model slot."""
    config = dataclasses.replace(config, model=model.path, threads=options.threads, prompts=model.prompts,
                                 ctx=options.ctx)
    return EdgeQwenDeployment.options(
        num_replicas=replicas,
        ray_actor_options=actor_options(options),
        # A replica takes every request its slots, its thread and its queue can hold and a few more
        # (health, models, the page), so a full queue answers 503 + Retry-After from the app, as
        # `edgeqwen serve` does, instead of the request waiting in Serve's proxy.
        max_ongoing_requests=config.queue_size + config.slots + 1 + settings.RAY_SERVE_EXTRA_REQUESTS,
    ).bind(config, model)


def serve_on_ray(config: ServerConfig, options: RayOptions) -> None:
    """Deploy on the cluster, serve until interrupted, then remove the app (`edgeqwen serve --ray`)."""
    if not is_loopback(config.host) and not config.api_key:
        print(f"warning: listening on {config.host} without --api-key: anyone who can reach this machine can use the "
              "model", file=sys.stderr)
    disconnect = connect(options)
    try:
        replicas = copies(options)
        model = model_spec(options)
        check_every_node(model)
        print(f"edgeqwen: starting {replicas} replica(s) of {options.threads} thread(s) on the Ray cluster…",
              file=sys.stderr, flush=True)
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(application(config, model, options, replicas), name=APP_NAME, route_prefix="/",
                  logging_config=_logging(config))
        shown = f"[{config.host}]" if ":" in config.host else config.host
        print(f"edgeqwen: {replicas} replica(s) ready; queue {config.queue_size} each; page at "
              f"http://{shown}:{config.port}/", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except EdgeQwenError:
        raise
    except Exception as error:  # noqa: BLE001 - Ray Serve's failures, as one line
        raise ClusterError(f"Ray Serve failed: {one_line(error)}") from None
    finally:
        with suppress(Exception):  # the app goes; the cluster and other Serve apps stay
            serve.delete(APP_NAME)
        disconnect()


def _logging(config: ServerConfig) -> dict:
    return {"log_level": config.log_level.upper(), "enable_access_log": config.log_level in ("info", "debug")}


def build_app(args: dict[str, str]) -> Application:
    """For Ray Serve's own CLI: `serve run edgeqwen.cluster.serving:build_app model=PATH replicas=2 threads=1`.

    Keys: model, model_sha256, replicas (default 1), threads, ctx, prompts, and the server's
    api_key (default $EDGEQWEN_API_KEY), router, queue_size, max_body_bytes, max_text_chars,
    log_level. The HTTP address is Serve's (`serve start --http-host ... --http-port ...`).
    """
    ray_keys = ("model", "model_sha256", "threads", "ctx", "prompts")
    unknown = set(args) - {*ray_keys, *BUILD_ARGS, "replicas"}
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(sorted(unknown))}; known: replicas, "
                         f"{', '.join((*ray_keys, *BUILD_ARGS))}")
    options = _typed(RayOptions, {key: args[key] for key in ray_keys if key in args})
    config = _typed(ServerConfig,
                    {"api_key": settings.api_key(), **{key: args[key] for key in BUILD_ARGS if key in args}})
    return application(config, model_spec(options), options, int(args.get("replicas", 1)))


def _typed(cls: type, values: dict[str, str | None]):
    """A dataclass from text values, each turned into its field's type (int fields from their digits)."""
    kinds = {field.name: field.type for field in dataclasses.fields(cls)}
    return cls(**{key: int(value) if value is not None and kinds[key].startswith("int") else value
                  for key, value in values.items()})
