"""The API key check: with a key set, every request but OPEN_PATHS needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError

# No API key needed: liveness, metrics (which have their own --metrics-key), and the page that asks for the key.
OPEN_PATHS = ("/health", "/metrics", "/", "/static/")


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
        return any(path == open_path
                   or (open_path.endswith("/") and open_path != "/" and path.startswith(open_path))
                   for open_path in OPEN_PATHS)
