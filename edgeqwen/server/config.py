"""The settings of one `edgeqwen serve` process; every default comes from edgeqwen.settings."""

from __future__ import annotations

from dataclasses import dataclass

from .. import settings


@dataclass(frozen=True)
class ServerConfig:
    host: str = settings.HOST
    port: int = settings.PORT
    model: str | None = None
    api_key: str | None = None
    metrics_key: str | None = None  # None: /metrics is open, like /health
    prompts: str | None = None
    threads: int | None = None
    ctx: int | None = None  # None: the memory plan's (memory_plan.py)
    router: str = settings.ROUTER
    queue_size: int = settings.QUEUE_SIZE
    slots: int = settings.CHAT_SLOTS
    max_body_bytes: int = settings.MAX_BODY_BYTES
    max_text_chars: int = settings.MAX_TEXT_CHARS
    log_level: str = settings.LOG_LEVEL
    verbose: bool = False
    request_timeout: float = settings.REQUEST_TIMEOUT
    allowed_hosts: tuple[str, ...] = ()  # host names served beside the server's own (guard.py); "*": any
    allowed_origins: tuple[str, ...] = ()  # web page origins allowed beside the server's own page; "*": any
    max_connections: int = settings.MAX_CONNECTIONS
    keep_alive_timeout: int = settings.KEEP_ALIVE_TIMEOUT
    head_timeout: float = settings.HEAD_TIMEOUT
    body_timeout: float = settings.BODY_TIMEOUT
