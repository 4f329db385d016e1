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
